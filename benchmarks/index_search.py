"""Benchmark of LatentIndex: build time, query latency, recall of approximate indexes, bytes per item vs raw text.

    python benchmarks/index_search.py --n 50000 --dims 256 512 --queries 1000 --k 10 --out index_search.json

Keys are L2-normalised float32 (clustered by default: random unit centres plus Gaussian noise, re-normalised), queries
are fresh points around the same centres. Every index is built, saved and searched through ``LatentIndex``, so the
numbers include its checks, its id mapping and its sha256 manifest. Recall@k is measured against exact inner-product
search (``faiss.knn``) on the same keys. Bytes per item are read from the saved files (index, keys) and computed for
the latent store at ``--latent-dim`` in float32 and float16 (the .npy header is amortised), then divided by
``--text-bytes``, the mean raw-text size of the evidence each latent replaces in the generator's prompt.

Build and save are timed once per index. Searching is timed over ``--repeats`` rounds with the indexes as arms:
every index of a dimension is built and saved first, then reopened from disk (keys and latents memory-mapped) and,
after one untimed warm-up search each, searched once per round in a seeded shuffled order (see timing.py). The
table shows medians over rounds; the spread lines give median (IQR, min-max, n) of batched queries/s, of the
single-query p50 and of the p50 speed-up over the first index (Flat by default), taken per round.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from timing import Spread, ratios, round_orders, spread

from latentlab.data.schema import Evidence
from latentlab.memory.index import IndexConfig, LatentIndex


@dataclass
class Row:
    """One (key dimension, index type) measurement."""

    key_dim: int
    factory: str
    build_s: float
    save_s: float
    single_p50_ms: float
    single_p99_ms: float
    batch_qps: float
    recall_at_k: float
    index_bytes_per_item: float
    keys_bytes_per_item: float
    latent_f32_bytes_per_item: float
    latent_f16_bytes_per_item: float
    ratio_to_text_f32: float
    ratio_to_text_f16: float
    repeats: int = 1
    spreads: dict[str, dict[str, float]] = field(default_factory=dict)
    """``timing.Spread`` fields over the search rounds by measurement, e.g. ``{"batch_qps": {"median": .., ...}}``."""


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_keys(
    count: int, centres: np.ndarray, noise: float, rng: np.random.Generator, kind: str, chunk: int = 100_000
) -> np.ndarray:
    """Unit-norm float32 keys [count, dim] around ``centres`` (or uniform on the sphere), built in chunks."""
    dim = centres.shape[1]
    keys = np.empty((count, dim), np.float32)
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        gaussian = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if kind == "clustered":
            # per-coordinate scale chosen so that the noise vector has norm ~ `noise` whatever the dimension
            gaussian = centres[rng.integers(0, len(centres), stop - start)] + noise / math.sqrt(dim) * gaussian
        keys[start:stop] = unit_rows(gaussian)
    return keys


def default_factories(n: int) -> list[str]:
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))  # the usual 4*sqrt(n) lists, as a power of two
    return ["Flat", f"IVF{nlist},Flat", "HNSW32,Flat"]


def npy_bytes_per_item(n: int, dim: int, dtype: str) -> float:
    header = 128  # numpy's .npy v1 header for a 2-D array is padded to 128 bytes
    return (header + n * dim * np.dtype(dtype).itemsize) / n


@dataclass
class Built:
    """One index built, saved and measured on disk, waiting for its search rounds."""

    path: Path
    build_s: float
    save_s: float
    index_bytes_per_item: float
    keys_bytes_per_item: float


def build(workdir: Path, keys: np.ndarray, factory: str, args: argparse.Namespace) -> Built:
    n, dim = keys.shape
    spec = IndexConfig(
        factory, nprobe=args.nprobe, ef_search=args.ef_search, latent_dtype="float16", max_train_keys=args.train_keys
    )
    items = [Evidence(id=str(i)) for i in range(n)]  # ids only: the raw text is what the latents replace
    latents = np.zeros((n, args.latent_dim), np.float16)  # content does not change sizes or search speed
    path = workdir / f"{dim}-{factory.replace(',', '_')}"
    start = time.perf_counter()
    memory = LatentIndex.create(path, dim, args.latent_dim, "benchmark", spec)
    memory.add(items, keys, latents)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    memory.save()
    save_s = time.perf_counter() - start
    files = memory.info()["files"]
    assert files["latents"]["bytes"] / n == npy_bytes_per_item(n, args.latent_dim, "float16")
    return Built(path, build_s, save_s, files["index"]["bytes"] / n, files["keys"]["bytes"] / n)


def search_round(memory: LatentIndex, queries: np.ndarray, args: argparse.Namespace) -> tuple[list[float], float]:
    """Seconds of each of ``--single-queries`` one-query searches, and of one batched search of all queries."""
    single = []
    for row in range(min(args.single_queries, len(queries))):
        start = time.perf_counter()
        memory.search(queries[row : row + 1], args.k)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    memory.search_positions(queries, args.k)
    return single, time.perf_counter() - start


def measure(built: dict[str, Built], queries: np.ndarray, exact: np.ndarray, args: argparse.Namespace) -> list[Row]:
    """Search rounds over the built indexes (reopened from disk), interleaved; one row per index."""
    memories = {factory: LatentIndex.open(b.path, verify=False) for factory, b in built.items()}
    recall = {}
    for factory, memory in memories.items():  # warm-up, untimed; also the recall (the same in every round)
        _, positions = memory.search_positions(queries, args.k)
        recall[factory] = float(np.mean([len(set(p) & set(e)) / args.k for p, e in zip(positions, exact)]))
    p50_ms: dict[str, list[float]] = {factory: [] for factory in memories}
    p99_ms: dict[str, list[float]] = {factory: [] for factory in memories}
    batch_qps: dict[str, list[float]] = {factory: [] for factory in memories}
    for order in round_orders(list(memories), args.repeats, args.seed):
        for factory in order:
            single, batch_s = search_round(memories[factory], queries, args)
            p50_ms[factory].append(1e3 * float(np.percentile(single, 50)))
            p99_ms[factory].append(1e3 * float(np.percentile(single, 99)))
            batch_qps[factory].append(len(queries) / batch_s)
    del memories
    first, dim = next(iter(built)), queries.shape[1]
    lat32, lat16 = (npy_bytes_per_item(args.n, args.latent_dim, t) for t in ("float32", "float16"))
    rows = []
    for factory, b in built.items():
        spreads: dict[str, Spread] = {
            "batch_qps": spread(batch_qps[factory]),
            "single_p50_ms": spread(p50_ms[factory]),
            "single_p99_ms": spread(p99_ms[factory]),
            f"p50_speedup_vs_{first}": spread(ratios(p50_ms[first], p50_ms[factory])),
        }
        rows.append(
            Row(
                key_dim=dim,
                factory=factory,
                build_s=b.build_s,
                save_s=b.save_s,
                single_p50_ms=spreads["single_p50_ms"].median,
                single_p99_ms=spreads["single_p99_ms"].median,
                batch_qps=spreads["batch_qps"].median,
                recall_at_k=recall[factory],
                index_bytes_per_item=b.index_bytes_per_item,
                keys_bytes_per_item=b.keys_bytes_per_item,
                latent_f32_bytes_per_item=lat32,
                latent_f16_bytes_per_item=lat16,
                ratio_to_text_f32=(b.index_bytes_per_item + b.keys_bytes_per_item + lat32) / args.text_bytes,
                ratio_to_text_f16=(b.index_bytes_per_item + b.keys_bytes_per_item + lat16) / args.text_bytes,
                repeats=args.repeats,
                spreads={name: asdict(value) for name, value in spreads.items()},
            )
        )
    return rows


def format_spreads(rows: list[Row]) -> str:
    """One line per index: median (IQR, min-max, n) over the search rounds."""
    lines = []
    for r in rows:
        parts = []
        for name, values in r.spreads.items():
            value = Spread(**values)
            spec = ".0f" if name == "batch_qps" else ".3f" if name.startswith("single") else ".2f"
            parts.append(f"{name} {value.format(spec)}")
        lines.append(f"{r.key_dim:>4} {r.factory:<14} " + "; ".join(parts))
    return "\n".join(lines)


def format_table(rows: list[Row], k: int) -> str:
    header = (
        f"{'d':>4} {'index':<14} {'build s':>8} {'save s':>7} {'p50 ms':>7} {'p99 ms':>7} {'batch q/s':>10} "
        f"{'R@' + str(k):>6} {'idx B':>7} {'keys B':>7} {'lat32 B':>8} {'lat16 B':>8} {'/text32':>8} {'/text16':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.key_dim:>4} {r.factory:<14} {r.build_s:>8.2f} {r.save_s:>7.2f} {r.single_p50_ms:>7.3f} "
            f"{r.single_p99_ms:>7.3f} {r.batch_qps:>10.0f} {r.recall_at_k:>6.3f} {r.index_bytes_per_item:>7.0f} "
            f"{r.keys_bytes_per_item:>7.0f} {r.latent_f32_bytes_per_item:>8.0f} {r.latent_f16_bytes_per_item:>8.0f} "
            f"{r.ratio_to_text_f32:>8.1f} {r.ratio_to_text_f16:>8.1f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="stored items")
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 512], help="key dimensions to measure")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and batched throughput")
    parser.add_argument("--single-queries", type=int, default=300, help="one-at-a-time queries for p50/p99")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    parser.add_argument("--factories", nargs="+", default=None, help="FAISS factory strings (default: Flat, IVF, HNSW)")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists visited per query")
    parser.add_argument("--ef-search", type=int, default=64, help="HNSW candidate list per query")
    parser.add_argument(
        "--train-keys", type=int, default=None, help="IVF trains on a sample of this many keys (default: FAISS's cap)"
    )
    parser.add_argument("--latent-dim", type=int, default=576, help="latent size H (576: SmolLM2-135M)")
    parser.add_argument("--text-bytes", type=float, default=150.0, help="mean bytes of raw text one item replaces")
    parser.add_argument("--data", choices=["clustered", "random"], default="clustered", help="key distribution")
    parser.add_argument("--clusters", type=int, default=1000, help="cluster centres for --data clustered")
    parser.add_argument(
        "--noise",
        type=float,
        default=2.0,
        help="norm of the noise around a centre (2: clusters overlap, so ANN misses)",
    )
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: FAISS's own)")
    parser.add_argument("--repeats", type=int, default=3, help="search rounds, each searching every index once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keys and of the indexes' order per round")
    parser.add_argument("--workdir", type=Path, default=None, help="where memories are built (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    factories = args.factories or default_factories(args.n)
    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
    print(
        f"n={args.n} dims={args.dims} queries={args.queries} (single: {args.single_queries}) k={args.k} "
        f"data={args.data} latent_dim={args.latent_dim} text_bytes={args.text_bytes} nprobe={args.nprobe} "
        f"ef_search={args.ef_search} repeats={args.repeats} faiss={faiss.__version__} "
        f"threads={faiss.omp_get_max_threads()}",
        flush=True,
    )
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for dim in args.dims:
            rng = np.random.default_rng([args.seed, dim])
            centres = unit_rows(rng.standard_normal((args.clusters, dim), dtype=np.float32))
            keys = make_keys(args.n, centres, args.noise, rng, args.data)
            queries = make_keys(args.queries, centres, args.noise, rng, args.data)  # fresh points, same centres
            _, exact = faiss.knn(queries, keys, args.k, metric=faiss.METRIC_INNER_PRODUCT)
            built = {}
            for factory in factories:
                built[factory] = build(Path(tmp), keys, factory, args)
                print(f"  d={dim} {factory}: built at {time.perf_counter() - started:.0f} s", flush=True)
            del keys
            rows += measure(built, queries, exact, args)
            print(f"  d={dim}: {args.repeats} search rounds done at {time.perf_counter() - started:.0f} s", flush=True)
            for b in built.values():
                shutil.rmtree(b.path)
    print(format_table(rows, args.k))
    print(f"search over {args.repeats} interleaved rounds (seed {args.seed}): median (IQR, min-max, n)")
    print(format_spreads(rows))
    print(
        f"bytes per item: idx = FAISS index file, keys = stored float32 keys (the source for training and rebuilds), "
        f"lat = latent store at H={args.latent_dim}; /text = (idx + keys + lat) / {args.text_bytes:g} bytes of text. "
        f"Total wall time {time.perf_counter() - started:.0f} s."
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "args": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
            "machine": {
                "platform": platform.platform(),
                "faiss": faiss.__version__,
                "threads": faiss.omp_get_max_threads(),
            },
            "wall_s": time.perf_counter() - started,
            "results": [asdict(row) for row in rows],
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
