"""HNSW recall@k against exact search and single-query latency over a sweep of ef_search, with a recall-latency plot.

    python benchmarks/hnsw_sweep.py --n 50000 --dim 256 --threads 1 --plot hnsw_sweep.png

The keys, queries and exact neighbours are ``index_search``'s (same arguments, same data). One HNSW memory and one
Flat memory are built, saved and reopened through ``LatentIndex``; each ef_search value is an arm (the HNSW memory
with ``set_search_params(ef_search=...)``), and Flat is the exact reference arm. After an untimed warm-up search per
arm, the arms are searched once per round in a seeded shuffled order (see timing.py); the table shows the medians over
rounds of the single-query p50 / p99 and of batched queries/s, and the p50 speed-up over Flat taken per round.
Recall does not depend on the round. The smallest ef_search reaching ``--target-recall`` is printed.
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from index_search import add_data_arguments, benchmark_data, build, search_round
from timing import ratios, round_orders, spread, write_report

from latentlab.memory.index import LatentIndex


@dataclass
class SweepRow:
    """One arm: an ef_search value of the HNSW memory, or the exact Flat reference (ef_search None)."""

    factory: str
    ef_search: int | None
    recall_at_k: float
    single_p50_ms: float
    single_p99_ms: float
    batch_qps: float
    p50_speedup_vs_flat: float


def recall(positions: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / k; positions, exact: [queries, k]."""
    return float(np.mean([len(set(p) & set(e)) / exact.shape[1] for p, e in zip(positions, exact)]))


def sweep(hnsw: LatentIndex, flat: LatentIndex, queries: np.ndarray, exact: np.ndarray, args) -> list[SweepRow]:
    arms = {f"ef{ef}": ef for ef in args.ef} | {"Flat": None}

    def memory_for(arm: str) -> LatentIndex:
        if arms[arm] is None:
            return flat
        hnsw.set_search_params(ef_search=arms[arm])
        return hnsw

    found = {}
    for arm in arms:  # warm-up, untimed; also the recall
        found[arm] = recall(memory_for(arm).search_positions(queries, args.k)[1], exact)
    p50: dict[str, list[float]] = {arm: [] for arm in arms}
    p99: dict[str, list[float]] = {arm: [] for arm in arms}
    qps: dict[str, list[float]] = {arm: [] for arm in arms}
    for order in round_orders(list(arms), args.repeats, args.seed):
        for arm in order:
            single, batch_s = search_round(memory_for(arm), queries, args)
            p50[arm].append(1e3 * float(np.percentile(single, 50)))
            p99[arm].append(1e3 * float(np.percentile(single, 99)))
            qps[arm].append(len(queries) / batch_s)
    return [
        SweepRow(
            factory=args.factory if ef is not None else "Flat",
            ef_search=ef,
            recall_at_k=found[arm],
            single_p50_ms=spread(p50[arm]).median,
            single_p99_ms=spread(p99[arm]).median,
            batch_qps=spread(qps[arm]).median,
            p50_speedup_vs_flat=spread(ratios(p50["Flat"], p50[arm])).median,
        )
        for arm, ef in arms.items()
    ]


def format_table(rows: list[SweepRow], k: int) -> str:
    header = f"{'index':<14} {'ef_search':>9} {'R@' + str(k):>6}  {'p50 ms':>7} {'p99 ms':>7} {'batch q/s':>10} {'p50 x Flat':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        ef = "-" if r.ef_search is None else str(r.ef_search)
        lines.append(
            f"{r.factory:<14} {ef:>9} {r.recall_at_k:>6.4f} {r.single_p50_ms:>7.3f} {r.single_p99_ms:>7.3f} "
            f"{r.batch_qps:>10.0f} {r.p50_speedup_vs_flat:>10.1f}"
        )
    return "\n".join(lines)


def plot(rows: list[SweepRow], path: Path, args: argparse.Namespace) -> None:
    """Recall@k against single-query p50 latency (log scale), one labelled point per ef_search, Flat for reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    def label_1_2_3_5(value: float, _position) -> str:  # log-axis ticks as plain numbers at 1, 2, 3, 5 x 10^i
        leading = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
        return f"{value:g}" if leading in (1, 2, 3, 5) else ""

    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    swept = [r for r in rows if r.ef_search is not None]
    ax.plot([r.single_p50_ms for r in swept], [r.recall_at_k for r in swept], "o-", label=args.factory)
    for r in swept:
        ax.annotate(f"ef {r.ef_search}", (r.single_p50_ms, r.recall_at_k), textcoords="offset points", xytext=(5, -11))
    flat = next(r for r in rows if r.ef_search is None)
    ax.plot([flat.single_p50_ms], [flat.recall_at_k], "s", color="black", label="Flat (exact)")
    ax.axhline(args.target_recall, color="grey", linestyle="--", linewidth=0.8, label=f"recall {args.target_recall}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(label_1_2_3_5))
    ax.xaxis.set_minor_formatter(FuncFormatter(label_1_2_3_5))
    ax.set_xlabel("single-query p50 latency (ms, log scale)")
    ax.set_ylabel(f"recall@{args.k} against exact search")
    ax.set_title(f"{args.factory}: n={args.n}, d={args.dim}, {faiss.omp_get_max_threads()} thread(s)", fontsize=10)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="stored items")
    parser.add_argument("--dim", type=int, default=256, help="key dimension")
    parser.add_argument("--factory", default="HNSW32,Flat", help="the HNSW factory string to sweep")
    parser.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512], help="ef_search values")
    parser.add_argument("--target-recall", type=float, default=0.95, help="report the smallest ef reaching this")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and batched throughput")
    parser.add_argument("--single-queries", type=int, default=300, help="one-at-a-time queries for p50/p99")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    add_data_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: FAISS's own)")
    parser.add_argument("--repeats", type=int, default=3, help="search rounds, each searching every arm once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keys and of the arms' order per round")
    parser.add_argument("--workdir", type=Path, default=None, help="where memories are built (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="write the recall-latency plot (PNG) here")
    args = parser.parse_args(argv)
    # what index_search's build() reads: no IVF here, and latents only fill the memory
    args.nprobe, args.ef_search, args.train_keys, args.latent_dim = 1, min(args.ef), None, 8
    return args


def main(argv: list[str] | None = None) -> list[SweepRow]:
    args = parse_args(argv)
    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
    print(
        f"n={args.n} d={args.dim} factory={args.factory} ef={args.ef} queries={args.queries} "
        f"(single: {args.single_queries}) k={args.k} data={args.data} repeats={args.repeats} "
        f"faiss={faiss.__version__} threads={faiss.omp_get_max_threads()}",
        flush=True,
    )
    started = time.perf_counter()
    keys, queries, exact = benchmark_data(args, args.dim)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        built = {factory: build(Path(tmp), keys, factory, args) for factory in (args.factory, "Flat")}
        print(f"  built {args.factory} in {built[args.factory].build_s:.1f} s", flush=True)
        del keys
        hnsw, flat = (LatentIndex.open(built[f].path, verify=False) for f in (args.factory, "Flat"))
        rows = sweep(hnsw, flat, queries, exact, args)
        del hnsw, flat
        for b in built.values():
            shutil.rmtree(b.path)
    print(format_table(rows, args.k))
    reaching = [r.ef_search for r in rows if r.ef_search is not None and r.recall_at_k >= args.target_recall]
    print(
        f"smallest ef_search with recall@{args.k} >= {args.target_recall}: "
        + (str(min(reaching)) if reaching else f"none up to {max(args.ef)}")
        + f". Median over {args.repeats} interleaved rounds; total wall time {time.perf_counter() - started:.0f} s."
    )
    if args.plot is not None:
        plot(rows, args.plot, args)
        print(f"wrote {args.plot}")
    if args.out is not None:
        write_report(
            args.out,
            args,
            {
                "platform": platform.platform(),
                "faiss": faiss.__version__,
                "threads": faiss.omp_get_max_threads(),
            },
            wall_s=time.perf_counter() - started,
            results=[asdict(row) for row in rows],
        )
    return rows


if __name__ == "__main__":
    main()
