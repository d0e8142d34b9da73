"""Benchmark of LatentIndex: build time, query latency, recall of approximate indexes, bytes per item vs raw text.

    python benchmarks/index_search.py --n 50000 --dims 256 512 --queries 1000 --k 10 --out index_search.json

Keys are L2-normalised float32 (clustered by default: random unit centres plus Gaussian noise, re-normalised), queries
are fresh points around the same centres. Every index is built, saved and searched through ``LatentIndex``, so the
numbers include its checks, its id mapping and its sha256 manifest. Recall@k is measured against exact inner-product
search (``faiss.knn``) on the same keys. Bytes per item are read from the saved files (index, keys, latents and the
latent codec's file), then divided by ``--text-bytes``, the mean raw-text size of the evidence each latent replaces
in the generator's prompt.

The latent stores (float32, float16, int8 and each ``--latent-pq MxNBITS``) are measured once, apart from the key
indexes: a memory of ``min(--n, --latent-sample)`` latents at ``--latent-dim`` per store, saved; bytes per item are
its latents file over its count plus the codec file (codebooks, whatever the count) over ``--n``. Their
reconstruction error against the float32 latents (relative MSE = sum |z - z'|^2 / sum |z|^2, and the mean cosine of
z with z') is measured on those synthetic latents (``make_latents``: a shared mean, low-rank structure, per-dimension
scales with a few outlier dimensions, noise) and, with ``--latents-from DIR``, on the real latents of a saved memory.

Build and save are timed once per index. Searching is timed over ``--repeats`` rounds with the indexes as arms:
every index of a dimension is built and saved first, then reopened from disk (keys and latents memory-mapped) and,
after one untimed warm-up search each, searched once per round in a seeded shuffled order (see timing.py). The
table shows medians over rounds; the spread lines give median (IQR, min-max, n) of batched queries/s, of the
single-query p50 and of the p50 speed-up over the first index (Flat by default), taken per round.
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from timing import Spread, ratios, round_orders, spread, spread_summary, write_report

from latentlab.data.schema import Evidence
from latentlab.errors import LatentLabError
from latentlab.memory.index import IndexConfig, LatentIndex
from latentlab.memory.latent_store import reconstruction_error


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
    latent_bytes_per_item: dict[str, float]
    """By latent store (``LatentStoreRow.store``): its latents file plus its codec file, per item."""
    ratio_to_text: dict[str, float]
    """By latent store: (index + keys + latent store) bytes per item / ``--text-bytes``."""
    repeats: int = 1
    spreads: dict[str, dict[str, float]] = field(default_factory=dict)
    """``timing.Spread`` fields over the search rounds by measurement, e.g. ``{"batch_qps": {"median": .., ...}}``."""


@dataclass
class LatentStoreRow:
    """One latent store (``IndexConfig.latent_dtype`` and its parameters): what it costs and what it loses."""

    store: str
    latent_dtype: str
    latent_pq_m: int | None
    latent_pq_nbits: int
    latents_bytes_per_item: float
    codec_bytes_per_item: float
    bytes_per_item: float
    float32_over_this: float
    add_s: float
    """Seconds of ``add``: training the codec (int8, pq) and encoding ``count`` latents."""
    count: int
    relative_mse: float
    mean_cosine: float
    real: dict[str, float] | None = None
    """Reconstruction error on ``--latents-from``'s latents (None: not given, or too few to train this codec)."""


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


def make_latents(count: int, dim: int, rng: np.random.Generator, rank: int = 32) -> np.ndarray:
    """Synthetic hidden-state-like latents [count, dim] float32.

    A shared mean, ``rank`` random directions plus isotropic noise, scaled per dimension (log-normal, and 1% of
    dimensions 10x larger: the outlier features of LLM hidden states, which a per-dimension quantiser must span).
    """
    scale = np.exp(0.5 * rng.standard_normal(dim)).astype(np.float32)
    scale[rng.choice(dim, max(1, dim // 100), replace=False)] *= 10
    mean = rng.standard_normal(dim).astype(np.float32)
    basis = rng.standard_normal((rank, dim)).astype(np.float32) / math.sqrt(rank)
    factors = rng.standard_normal((count, rank), dtype=np.float32)
    noise = 0.3 * rng.standard_normal((count, dim), dtype=np.float32)
    return ((mean + factors @ basis + noise) * scale).astype(np.float32)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The key-distribution options ``benchmark_data`` reads (with ``--n``, ``--queries``, ``--k``, ``--seed``)."""
    parser.add_argument("--data", choices=["clustered", "random"], default="clustered", help="key distribution")
    parser.add_argument("--clusters", type=int, default=1000, help="cluster centres for --data clustered")
    parser.add_argument(
        "--noise",
        type=float,
        default=2.0,
        help="norm of the noise around a centre (2: clusters overlap, so ANN misses)",
    )


def benchmark_data(args: argparse.Namespace, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys [n, dim], queries [queries, dim], exact top-k rows [queries, k])``, the same for the same arguments."""
    rng = np.random.default_rng([args.seed, dim])
    centres = unit_rows(rng.standard_normal((args.clusters, dim), dtype=np.float32))
    keys = make_keys(args.n, centres, args.noise, rng, args.data)
    queries = make_keys(args.queries, centres, args.noise, rng, args.data)  # fresh points, same centres
    _, exact = faiss.knn(queries, keys, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    return keys, queries, exact


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


def latent_store_specs(args: argparse.Namespace) -> dict[str, dict]:
    """``IndexConfig`` fields of each latent store to measure, by label (float32, float16, int8, pqMxNBITS)."""
    specs: dict[str, dict] = {name: {"latent_dtype": name} for name in ("float32", "float16", "int8")}
    for setting in args.latent_pq:
        m, _, nbits = setting.partition("x")
        specs[f"pq{m}x{nbits or 8}"] = {"latent_dtype": "pq", "latent_pq_m": int(m), "latent_pq_nbits": int(nbits or 8)}
    return specs


def store_latents(path: Path, latents: np.ndarray, fields: dict, args: argparse.Namespace) -> tuple[LatentIndex, float]:
    """A saved Flat memory holding ``latents`` in the given store (8-dim dummy keys), and the seconds ``add`` took."""
    count = len(latents)
    keys = unit_rows(np.random.default_rng(count).standard_normal((count, 8), dtype=np.float32))
    spec = IndexConfig("Flat", max_train_keys=args.train_keys, **fields)
    memory = LatentIndex.create(path, 8, latents.shape[1], "benchmark", spec)
    start = time.perf_counter()
    memory.add([Evidence(id=str(i)) for i in range(count)], keys, latents)
    add_s = time.perf_counter() - start
    memory.save()
    return memory, add_s


def measure_latent_stores(workdir: Path, args: argparse.Namespace) -> list[LatentStoreRow]:
    """Bytes per item (from the saved files) and reconstruction error of each latent store; see the module doc."""
    count = min(args.n, args.latent_sample)
    latents = make_latents(count, args.latent_dim, np.random.default_rng([args.seed, args.latent_dim]))
    real = None
    if args.latents_from is not None:
        source = LatentIndex.open(args.latents_from, verify=False)
        real = source.latents_at(np.arange(len(source)))
        if real.shape[1] != args.latent_dim:
            raise SystemExit(
                f"{args.latents_from} holds latents of size {real.shape[1]}, not --latent-dim {args.latent_dim}"
            )
    rows = []
    for store, fields in latent_store_specs(args).items():
        path = workdir / f"latents-{store}"
        memory, add_s = store_latents(path, latents, fields, args)
        files = memory.info()["files"]
        latents_bytes = files["latents"]["bytes"] / count
        codec_bytes = files["codec"]["bytes"] / args.n if "codec" in files else 0.0
        error = reconstruction_error(latents, memory.latents_at(np.arange(count)))
        del memory
        shutil.rmtree(path)
        real_error = None
        if real is not None:
            try:
                memory, _ = store_latents(path, real, fields, args)
            except LatentLabError as err:  # e.g. fewer real latents than 2**nbits
                print(f"  {store} on {args.latents_from}: skipped ({err})", flush=True)
            else:
                real_error = {**reconstruction_error(real, memory.latents_at(np.arange(len(real)))), "count": len(real)}
                del memory
                shutil.rmtree(path)
        rows.append(
            LatentStoreRow(
                store=store,
                latent_dtype=fields["latent_dtype"],
                latent_pq_m=fields.get("latent_pq_m"),
                latent_pq_nbits=fields.get("latent_pq_nbits", 8),
                latents_bytes_per_item=latents_bytes,
                codec_bytes_per_item=codec_bytes,
                bytes_per_item=latents_bytes + codec_bytes,
                float32_over_this=0.0,
                add_s=add_s,
                count=count,
                real=real_error,
                **error,
            )
        )
        print(f"  latent store {store}: measured", flush=True)
    float32 = rows[0].bytes_per_item
    for row in rows:
        row.float32_over_this = float32 / row.bytes_per_item
    return rows


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


def measure(
    built: dict[str, Built],
    queries: np.ndarray,
    exact: np.ndarray,
    stores: list[LatentStoreRow],
    args: argparse.Namespace,
) -> list[Row]:
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
    latent_bytes = {store.store: store.bytes_per_item for store in stores}
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
                latent_bytes_per_item=latent_bytes,
                ratio_to_text={
                    store: (b.index_bytes_per_item + b.keys_bytes_per_item + value) / args.text_bytes
                    for store, value in latent_bytes.items()
                },
                repeats=args.repeats,
                spreads={name: asdict(value) for name, value in spreads.items()},
            )
        )
    return rows


def format_spreads(rows: list[Row]) -> str:
    """One line per index: median (IQR, min-max, n) over the search rounds."""
    lines = []
    for r in rows:
        lines.append(f"{r.key_dim:>4} {r.factory:<14} " + spread_summary(r.spreads))
    return "\n".join(lines)


def format_table(rows: list[Row], k: int) -> str:
    header = (
        f"{'d':>4} {'index':<14} {'build s':>8} {'save s':>7} {'p50 ms':>7} {'p99 ms':>7} {'batch q/s':>10} "
        f"{'R@' + str(k):>6} {'idx B':>7} {'keys B':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.key_dim:>4} {r.factory:<14} {r.build_s:>8.2f} {r.save_s:>7.2f} {r.single_p50_ms:>7.3f} "
            f"{r.single_p99_ms:>7.3f} {r.batch_qps:>10.0f} {r.recall_at_k:>6.3f} {r.index_bytes_per_item:>7.0f} "
            f"{r.keys_bytes_per_item:>7.0f}"
        )
    return "\n".join(lines)


def format_bytes_table(rows: list[Row]) -> str:
    """Per index and latent store: total bytes per item (index + keys + latents) and that over the raw text."""
    stores = list(rows[0].latent_bytes_per_item)
    header = f"{'d':>4} {'index':<14} " + " ".join(f"{store:>16}" for store in stores)
    lines = [header, "-" * len(header)]
    for r in rows:
        cells = []
        for store in stores:
            total = r.index_bytes_per_item + r.keys_bytes_per_item + r.latent_bytes_per_item[store]
            cells.append(f"{f'{total:.0f} B {r.ratio_to_text[store]:.1f}x':>16}")
        lines.append(f"{r.key_dim:>4} {r.factory:<14} " + " ".join(cells))
    return "\n".join(lines)


def format_latent_table(stores: list[LatentStoreRow], real_source: Path | None) -> str:
    real = f" {'real MSE':>9} {'real cos':>9}" if real_source is not None else ""
    header = (
        f"{'store':<10} {'latents B':>9} {'codec B':>8} {'total B':>8} {'f32/this':>8} {'add s':>7} "
        f"{'rel MSE':>9} {'mean cos':>9}{real}"
    )
    lines = [header, "-" * len(header)]
    for s in stores:
        line = (
            f"{s.store:<10} {s.latents_bytes_per_item:>9.1f} {s.codec_bytes_per_item:>8.2f} {s.bytes_per_item:>8.1f} "
            f"{s.float32_over_this:>8.1f} {s.add_s:>7.2f} {s.relative_mse:>9.2e} {s.mean_cosine:>9.6f}"
        )
        if real_source is not None:
            line += (
                f" {s.real['relative_mse']:>9.2e} {s.real['mean_cosine']:>9.6f}" if s.real else f" {'-':>9} {'-':>9}"
            )
        lines.append(line)
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
    parser.add_argument("--ef-search", type=int, default=IndexConfig().ef_search, help="HNSW candidate list per query")
    parser.add_argument(
        "--train-keys", type=int, default=None, help="IVF trains on a sample of this many keys (default: FAISS's cap)"
    )
    parser.add_argument("--latent-dim", type=int, default=576, help="latent size H (576: SmolLM2-135M)")
    parser.add_argument(
        "--latent-pq",
        nargs="*",
        default=["72x8", "144x8"],
        help="product-quantised latent stores to measure, as MxNBITS (M sub-quantizers must divide --latent-dim)",
    )
    parser.add_argument(
        "--latent-sample", type=int, default=100_000, help="latents the latent stores are measured on (at most --n)"
    )
    parser.add_argument(
        "--latents-from", type=Path, default=None, help="a saved memory whose real latents also measure the error"
    )
    parser.add_argument("--text-bytes", type=float, default=150.0, help="mean bytes of raw text one item replaces")
    add_data_arguments(parser)
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
        stores = measure_latent_stores(Path(tmp), args)
        for dim in args.dims:
            keys, queries, exact = benchmark_data(args, dim)
            built = {}
            for factory in factories:
                built[factory] = build(Path(tmp), keys, factory, args)
                print(f"  d={dim} {factory}: built at {time.perf_counter() - started:.0f} s", flush=True)
            del keys
            rows += measure(built, queries, exact, stores, args)
            print(f"  d={dim}: {args.repeats} search rounds done at {time.perf_counter() - started:.0f} s", flush=True)
            for b in built.values():
                shutil.rmtree(b.path)
    print(format_table(rows, args.k))
    print(f"search over {args.repeats} interleaved rounds (seed {args.seed}): median (IQR, min-max, n)")
    print(format_spreads(rows))
    print(
        f"bytes per item: idx = FAISS index file, keys = stored float32 keys (the source for training and rebuilds). "
        f"Per latent store at H={args.latent_dim}: idx + keys + latents (+ codec), and that / {args.text_bytes:g} "
        f"bytes of text:"
    )
    print(format_bytes_table(rows))
    print(
        f"latent stores on {stores[0].count} synthetic latents (codec file amortised over n={args.n}); "
        f"f32/this = float32 bytes over this store's; reconstruction error against the float32 latents"
        + (f", also on the real latents of {args.latents_from}" if args.latents_from else "")
        + ":"
    )
    print(format_latent_table(stores, args.latents_from))
    print(f"Total wall time {time.perf_counter() - started:.0f} s.")
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
            latent_stores=[asdict(store) for store in stores],
        )
    return rows


if __name__ == "__main__":
    main()
