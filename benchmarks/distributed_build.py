"""Benchmark of a memory built by many workers (``index_merge``): build time with 1 vs 2 worker processes, then search
latency, recall and resident memory of the merged memory opened memory-mapped.

    python benchmarks/distributed_build.py --n 1000000 --dim 256 --nlist 4096 --threads 2 \\
        --out results/benchmarks/distributed_build_1m_d256.json

The keys and queries are ``index_search``'s (clustered unit vectors, same arguments, same data); the latents are
zeros of ``--latent-dim`` (small, so that they do not dominate the files; their content changes no timing). The
corpus is ``n`` items with ids "0".."n-1", encoded by looking the precomputed keys up by row, so what is timed is the
build itself, not a compressor (``compressor_throughput.py`` measures that).

Build. ``prepare_build`` trains one IVF quantizer (``IVF{--nlist},Flat``) and plans ``--shards`` shards; it runs
once, timed apart. Then every arm of ``--workers`` (1 and 2) builds the memory from that same plan over ``--repeats``
rounds in a seeded shuffled order (see timing.py): its shards are deleted, W worker processes start as torchrun's
would (``RANK``/``WORLD_SIZE``; this file's ``worker`` role: rank r builds shards r, r + W, ...), and once all have
exited ``merge_shards`` joins their inverted lists on disk. Timed: from the first worker's start to the merged memory
returned, so process start-up (imports, opening the key table), each ``build_shard`` (its corpus check hashes the
whole corpus, once per shard), the merge (it re-verifies every shard's sha256) and the opening are all in it. Each
worker runs ``--threads`` FAISS/OpenMP threads, so W workers use W times as many. The ratio 1-worker / W-worker time
is taken per round. Every build's merged files (keys, latents, items, inverted lists) are compared by sha256 with the
first build's: the number of workers must not change the memory.

Search. The last merged memory is reopened (inverted lists memory-mapped from ``invlists.1.ivfdata``); each
``--nprobe`` value is an arm (``set_search_params``), searched after one untimed warm-up per arm (which also gives
recall@k against exact inner-product search, ``faiss.knn`` over the same keys) once per round in a seeded shuffled
order, as ``index_search.py`` does: single-query p50/p99 over ``--single-queries`` queries and batched queries/s.
Each nprobe is also searched with ``--prefetch-threads`` (default 32, FAISS's own default) in place of the
``prefetch_nthread`` the memory opens with (0, set by ``LatentIndex.open``): FAISS then starts that many threads per
search to read the probed lists ahead, which pays for itself only where the lists are not in the page cache.

Resident memory. Per nprobe, a fresh process (this file's ``resident`` role) loads the queries, reads its RSS, opens
the memory (``verify=False``), reads it again, searches the queries (``--resident-queries``, default all) in one
batch and reads it a last time. Reported: the increase at open (items, id map, the index file's centroids and list
metadata: anonymous memory), at search (the inverted-list pages the queries visited, file-backed, plus buffers), the
pages of the inverted lists file in RSS (of that mapping alone, so library code paged in is not counted there), and
the total increase over the size of the index on disk (index file + inverted lists file). RSS from psutil, else
/proc/self/status and /proc/self/smaps.

Disk: ``--workdir`` (default: a temp dir) holds the key table, the build (plan, quantizer, one set of shards) and one
merged memory, about 5x the raw keys (1M x 256 float32: 1 GB of keys, ~5 GB in all). A directory the benchmark
creates is deleted at the end; an existing one is left with what was built in it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
from hnsw_sweep import recall
from index_search import add_data_arguments, benchmark_data, search_round
from timing import Spread, ratios, round_orders, spread, spread_summary, write_report

from latentlab.data.schema import Evidence
from latentlab.memory.index import IndexConfig, LatentIndex
from latentlab.memory.index_build import _corpus_sha256
from latentlab.memory.index_manifest import read_manifest
from latentlab.memory.index_merge import SHARDS_DIR, build_shard, merge_shards, prepare_build, read_plan, worker_shards

FINGERPRINT = "benchmark:precomputed-keys"
COMPARED_FILES = ("keys", "latents", "items", "invlists")
"""Merged files that must not depend on the number of workers (the index file records its staging path)."""


def corpus(count: int) -> list[Evidence]:
    """The benchmark's corpus: ids only, "0".."count-1", so that an item's id is its row in the key table."""
    return [Evidence(id=str(row)) for row in range(count)]


@dataclass
class TableEncoder:
    """The encoder of a build whose keys exist already: an item's keys and latents are the rows its id names."""

    keys: np.ndarray
    latents: np.ndarray

    @classmethod
    def load(cls, table_dir: Path) -> TableEncoder:
        return cls(np.load(table_dir / "keys.npy", mmap_mode="r"), np.load(table_dir / "latents.npy", mmap_mode="r"))

    def __call__(self, batch: list[Evidence]) -> tuple[np.ndarray, np.ndarray]:
        rows = np.fromiter((int(item.id) for item in batch), np.int64, len(batch))
        return self.keys[rows], self.latents[rows]


# ---------------------------------------------------------------------- the two subprocess roles
def worker_main(argv: list[str]) -> None:
    """One worker: build this rank's shards (``RANK``/``WORLD_SIZE``) and print a JSON line of its timings."""
    parser = argparse.ArgumentParser(prog="distributed_build.py worker")
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("table_dir", type=Path)
    parser.add_argument("--launched", type=float, required=True, help="time.time() when the parent started us")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
    plan, _ = read_plan(args.build_dir)
    items, encoder = corpus(plan.count), TableEncoder.load(args.table_dir)
    ready_s = time.time() - args.launched
    shards = []
    for shard in worker_shards(plan.num_shards):
        start = time.perf_counter()
        result = build_shard(
            args.build_dir,
            items,
            encoder,
            shard,
            fingerprint=plan.fingerprint,
            batch_size=args.batch_size,
            progress=False,
        )
        if not result.built:
            raise SystemExit(f"shard {shard} of {args.build_dir} was already built; the benchmark deletes them first")
        shards.append({"shard": shard, "seconds": time.perf_counter() - start})
    print(json.dumps({"rank": os.environ.get("RANK", "0"), "ready_s": ready_s, "shards": shards}))


@dataclass(frozen=True)
class Resident:
    """Resident bytes of this process: all, the part backed by files, and the pages of one mapped file."""

    rss: int
    file: int
    mapped: int
    """Of the file the memory's inverted lists are mapped from: the pages of it in this process's RSS."""


def resident(mapped_file: Path) -> Resident:
    target = str(mapped_file.resolve())
    try:
        import psutil
    except ImportError:  # Linux without psutil: the kernel's own accounting
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            fields[name] = int(value.split()[0]) * 1024 if value.strip().endswith("kB") else 0
        mapped, path = 0, None
        for line in Path("/proc/self/smaps").read_text().splitlines():
            if line.startswith("Rss:") and path == target:
                mapped += int(line.split()[1]) * 1024
            elif not line.split(maxsplit=1)[0].endswith(":"):  # a mapping's header: address perms offset dev inode path
                path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else None
        return Resident(fields["VmRSS"], fields.get("RssFile", 0), mapped)
    process = psutil.Process()
    info = process.memory_info()
    mapped = sum(m.rss for m in process.memory_maps(grouped=True) if m.path == target)
    return Resident(info.rss, getattr(info, "shared", 0), mapped)  # Linux: shared = RssFile + RssShmem


def resident_main(argv: list[str]) -> None:
    """Open a memory and search it at one nprobe in a process that did nothing else; print a JSON line of its RSS."""
    parser = argparse.ArgumentParser(prog="distributed_build.py resident")
    parser.add_argument("memory_dir", type=Path)
    parser.add_argument("queries", type=Path)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--nprobe", type=int, required=True)
    parser.add_argument("--count", type=int, default=None, help="search the first COUNT queries (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
    queries = np.load(args.queries)[: args.count]
    invlists = args.memory_dir / read_manifest(args.memory_dir)["files"]["invlists"]["name"]
    before = resident(invlists)
    memory = LatentIndex.open(args.memory_dir, verify=False)
    opened = resident(invlists)
    memory.set_search_params(nprobe=args.nprobe)
    memory.search_positions(queries, args.k)
    searched = resident(invlists)
    print(json.dumps({"before": asdict(before), "opened": asdict(opened), "searched": asdict(searched)}))


ROLES = {"worker": worker_main, "resident": resident_main}
"""What this file runs as a subprocess of the benchmark: ``distributed_build.py ROLE ...``."""


def run_role(role: str, arguments: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start this file as ``role``; its stdout and stderr go to ``log`` (a pipe could fill and stall it)."""
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), role, *arguments],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )


def role_report(process: subprocess.Popen, log: Path, what: str) -> dict:
    """The JSON line a finished role printed last; SystemExit with its log's tail if it failed."""
    returncode = process.wait()
    text = log.read_text()
    if returncode != 0:
        raise SystemExit(f"{what} failed (exit {returncode}); the end of {log}:\n{text[-3000:]}")
    return json.loads(text.strip().splitlines()[-1])


def thread_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return env


# ---------------------------------------------------------------------- build
@dataclass
class Build:
    """One build of the memory by ``workers`` processes from the prepared plan."""

    workers: int
    round: int
    total_s: float
    """First worker started .. merged memory returned."""
    workers_s: float
    """First worker started .. last worker exited."""
    merge_s: float
    worker_reports: list[dict]
    """Each worker's ``ready_s`` (start-up: imports, plan, key table) and seconds per shard."""
    files_sha256: dict[str, str] = field(repr=False)


def build_once(root: Path, workers: int, round_: int, args: argparse.Namespace) -> tuple[Build, Path]:
    """Delete the shards, build them with ``workers`` processes and merge them into ``root/memory-...``."""
    build_dir, out_dir = root / "build", root / f"memory-{workers}w-r{round_}"
    shutil.rmtree(build_dir / SHARDS_DIR, ignore_errors=True)
    arguments = [str(build_dir), str(root / "table"), "--batch-size", str(args.batch_size)]
    if args.threads is not None:
        arguments += ["--threads", str(args.threads)]
    env = thread_env(args.threads) | {"WORLD_SIZE": str(workers)}
    logs = [root / "logs" / f"build-{workers}w-r{round_}-rank{rank}.log" for rank in range(workers)]
    start, launched = time.perf_counter(), time.time()
    processes = [
        run_role("worker", [*arguments, "--launched", repr(launched)], log, env | {"RANK": str(rank)})
        for rank, log in enumerate(logs)
    ]
    for process in processes:
        process.wait()
    workers_s = time.perf_counter() - start
    reports = [role_report(p, log, f"worker {r} of {workers}") for r, (p, log) in enumerate(zip(processes, logs))]
    merged = merge_shards(build_dir, out_dir)
    total_s = time.perf_counter() - start
    del merged
    files = read_manifest(out_dir)["files"]
    sha = {role: files[role]["sha256"] for role in COMPARED_FILES}
    return Build(workers, round_, total_s, workers_s, total_s - workers_s, reports, sha), out_dir


@dataclass
class BuildRow:
    """Medians over rounds of one arm (a number of workers), and the per-round ratio to the first arm."""

    workers: int
    total_s: float
    workers_s: float
    merge_s: float
    ready_s: float
    """Median over its builds of the slowest worker's start-up."""
    speedup_total: float
    """Median over rounds of first arm's total_s / this arm's."""
    speedup_workers: float
    """The same for workers_s (the part that runs in parallel)."""
    spreads: dict[str, dict[str, float]]


def build_rows(builds: list[Build], arms: list[int]) -> list[BuildRow]:
    by_arm = {w: sorted((b for b in builds if b.workers == w), key=lambda b: b.round) for w in arms}
    first = by_arm[arms[0]]
    rows = []
    for workers, own in by_arm.items():
        spreads: dict[str, Spread] = {
            "total_s": spread([b.total_s for b in own]),
            "workers_s": spread([b.workers_s for b in own]),
            "merge_s": spread([b.merge_s for b in own]),
            f"speedup_total_vs_{arms[0]}w": spread(ratios([b.total_s for b in first], [b.total_s for b in own])),
            f"speedup_workers_vs_{arms[0]}w": spread(ratios([b.workers_s for b in first], [b.workers_s for b in own])),
        }
        ready = spread([max(r["ready_s"] for r in b.worker_reports) for b in own])
        rows.append(
            BuildRow(
                workers=workers,
                total_s=spreads["total_s"].median,
                workers_s=spreads["workers_s"].median,
                merge_s=spreads["merge_s"].median,
                ready_s=ready.median,
                speedup_total=spreads[f"speedup_total_vs_{arms[0]}w"].median,
                speedup_workers=spreads[f"speedup_workers_vs_{arms[0]}w"].median,
                spreads={name: asdict(value) for name, value in spreads.items()},
            )
        )
    return rows


# ---------------------------------------------------------------------- search and resident memory
@dataclass
class SearchRow:
    """One (nprobe, prefetch threads) arm on the merged, memory-mapped memory: medians over the search rounds."""

    nprobe: int
    prefetch_threads: int
    """``OnDiskInvertedLists.prefetch_nthread``: threads FAISS starts per search to read the probed lists ahead."""
    recall_at_k: float
    single_p50_ms: float
    single_p99_ms: float
    batch_qps: float
    p50_speedup_vs_opened: float
    """Median over rounds of (p50 at this nprobe with the prefetch threads the memory opened with) / this arm's."""
    spreads: dict[str, dict[str, float]]


def measure_search(memory: LatentIndex, queries: np.ndarray, exact: np.ndarray, args) -> list[SearchRow]:
    """Interleaved search rounds over the arms ``nprobe x prefetch threads`` (first: as the memory opened)."""
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(memory.faiss_index).invlists)
    opened = invlists.prefetch_nthread
    prefetch = [opened] + [t for t in args.prefetch_threads if t != opened]
    arms = {f"{nprobe}/{threads}": (nprobe, threads) for nprobe in args.nprobe for threads in prefetch}

    def set_arm(arm: str) -> None:
        memory.set_search_params(nprobe=arms[arm][0])
        invlists.prefetch_nthread = arms[arm][1]

    found = {}
    for arm in arms:  # warm-up, untimed; recall is the same in every round
        set_arm(arm)
        found[arm] = recall(memory.search_positions(queries, args.k)[1], exact)
    p50_ms: dict[str, list[float]] = {arm: [] for arm in arms}
    p99_ms: dict[str, list[float]] = {arm: [] for arm in arms}
    batch_qps: dict[str, list[float]] = {arm: [] for arm in arms}
    for order in round_orders(list(arms), args.repeats, args.seed):
        for arm in order:
            set_arm(arm)
            single, batch_s = search_round(memory, queries, args)
            p50_ms[arm].append(1e3 * float(np.percentile(single, 50)))
            p99_ms[arm].append(1e3 * float(np.percentile(single, 99)))
            batch_qps[arm].append(len(queries) / batch_s)
    invlists.prefetch_nthread = opened
    rows = []
    for arm, (nprobe, threads) in arms.items():
        spreads = {
            "single_p50_ms": spread(p50_ms[arm]),
            "single_p99_ms": spread(p99_ms[arm]),
            "batch_qps": spread(batch_qps[arm]),
            "p50_speedup_vs_opened": spread(ratios(p50_ms[f"{nprobe}/{opened}"], p50_ms[arm])),
        }
        rows.append(
            SearchRow(
                nprobe=nprobe,
                prefetch_threads=threads,
                recall_at_k=found[arm],
                single_p50_ms=spreads["single_p50_ms"].median,
                single_p99_ms=spreads["single_p99_ms"].median,
                batch_qps=spreads["batch_qps"].median,
                p50_speedup_vs_opened=spreads["p50_speedup_vs_opened"].median,
                spreads={name: asdict(value) for name, value in spreads.items()},
            )
        )
    return rows


@dataclass
class ResidentRow:
    """RSS increases of a fresh process that opens the merged memory and searches the queries at one nprobe."""

    nprobe: int
    index_bytes: int
    invlists_bytes: int
    open_increase: int
    """RSS after open - RSS before (items, id map, the index file read whole: centroids and list metadata)."""
    search_increase: int
    """RSS after the search - RSS after open."""
    invlists_resident: int
    """Pages of the inverted lists file in RSS after the search: the lists the queries visited."""
    file_backed_increase: int
    """File-backed RSS after the search - before open: those pages plus library code paged in."""
    increase_over_disk: float
    """(open_increase + search_increase) / (index_bytes + invlists_bytes)."""


def measure_resident(memory_dir: Path, root: Path, nprobe: int, args: argparse.Namespace) -> ResidentRow:
    arguments = [str(memory_dir), str(root / "table" / "queries.npy"), "--k", str(args.k), "--nprobe", str(nprobe)]
    arguments += ["--threads", str(args.threads)] if args.threads is not None else []
    arguments += ["--count", str(args.resident_queries)] if args.resident_queries is not None else []
    log = root / "logs" / f"resident-nprobe{nprobe}.log"
    process = run_role("resident", arguments, log, thread_env(args.threads))
    report = role_report(process, log, f"the resident process at nprobe {nprobe}")
    files = read_manifest(memory_dir)["files"]
    before, opened, searched = report["before"], report["opened"], report["searched"]
    disk = files["index"]["bytes"] + files["invlists"]["bytes"]
    return ResidentRow(
        nprobe=nprobe,
        index_bytes=files["index"]["bytes"],
        invlists_bytes=files["invlists"]["bytes"],
        open_increase=opened["rss"] - before["rss"],
        search_increase=searched["rss"] - opened["rss"],
        invlists_resident=searched["mapped"],
        file_backed_increase=searched["file"] - before["file"],
        increase_over_disk=(searched["rss"] - before["rss"]) / disk,
    )


# ---------------------------------------------------------------------- report
def format_builds(rows: list[BuildRow], arms: list[int]) -> str:
    header = (
        f"{'workers':>7} {'total s':>8} {'workers s':>9} {'merge s':>8} {'start-up s':>10} "
        f"{f'{arms[0]}w/this total':>15} {f'{arms[0]}w/this workers':>17}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.workers:>7} {r.total_s:>8.2f} {r.workers_s:>9.2f} {r.merge_s:>8.2f} {r.ready_s:>10.2f} "
            f"{r.speedup_total:>15.2f} {r.speedup_workers:>17.2f}"
        )
    return "\n".join(lines)


def format_spreads(labels: list[str], spreads: list[dict[str, dict[str, float]]]) -> str:
    lines = []
    for label, by_name in zip(labels, spreads):
        lines.append(f"{label:>10}: " + spread_summary(by_name))
    return "\n".join(lines)


def format_search(rows: list[SearchRow], k: int) -> str:
    header = (
        f"{'nprobe':>6} {'prefetch':>8} {'R@' + str(k):>6} {'p50 ms':>7} {'p99 ms':>7} {'batch q/s':>10} "
        f"{'p50 speed-up':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.nprobe:>6} {r.prefetch_threads:>8} {r.recall_at_k:>6.3f} {r.single_p50_ms:>7.3f} "
            f"{r.single_p99_ms:>7.3f} {r.batch_qps:>10.0f} {r.p50_speedup_vs_opened:>12.2f}"
        )
    return "\n".join(lines)


def format_resident(rows: list[ResidentRow]) -> str:
    mb = 1 / 2**20
    first = rows[0]
    header = (
        f"{'nprobe':>6} {'open +MB':>8} {'search +MB':>10} {'lists MB':>9} {'lists/file':>10} {'file +MB':>9} "
        f"{'RSS+/disk':>9}"
    )
    lines = [
        f"on disk: index file {first.index_bytes * mb:.1f} MB + inverted lists {first.invlists_bytes * mb:.1f} MB = "
        f"{(first.index_bytes + first.invlists_bytes) * mb:.1f} MB",
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(
            f"{r.nprobe:>6} {r.open_increase * mb:>8.1f} {r.search_increase * mb:>10.1f} "
            f"{r.invlists_resident * mb:>9.1f} {r.invlists_resident / r.invlists_bytes:>10.3f} "
            f"{r.file_backed_increase * mb:>9.1f} {r.increase_over_disk:>9.3f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="stored items")
    parser.add_argument("--dim", type=int, default=256, help="key dimension (256 or 512 in the paper)")
    parser.add_argument("--nlist", type=int, default=4096, help="IVF lists of the quantizer (IVF{nlist},Flat)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64], help="IVF lists visited, swept")
    parser.add_argument(
        "--prefetch-threads",
        type=int,
        nargs="*",
        default=[32],
        help="OnDiskInvertedLists prefetch threads to compare with the 0 the memory opens with (FAISS default: 32)",
    )
    parser.add_argument("--latent-dim", type=int, default=8, help="latent size (small: latents do not dominate)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes per build, compared")
    parser.add_argument("--shards", type=int, default=4, help="shards of the plan (workers build rank, rank + W, ...)")
    parser.add_argument(
        "--train-keys", type=int, default=None, help="quantizer training sample (default: 256 per list, at most n)"
    )
    parser.add_argument("--batch-size", type=int, default=4096, help="items per encoder call in the workers")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall and batched throughput")
    parser.add_argument("--single-queries", type=int, default=300, help="one-at-a-time queries for p50/p99")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (recall@k)")
    parser.add_argument(
        "--resident-queries", type=int, default=None, help="queries the resident-memory process searches (default: all)"
    )
    add_data_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads per process")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each building (searching) every arm once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the keys and of the arms' order per round")
    parser.add_argument("--workdir", type=Path, default=None, help="where the build runs (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.workers) < 1 or args.shards < max(args.workers):
        parser.error(f"--shards {args.shards} must be at least the largest of --workers {args.workers} (each >= 1)")
    if max(args.nprobe) > args.nlist:
        parser.error(f"--nprobe {max(args.nprobe)} is more than --nlist {args.nlist} lists")
    return args


def work_root(args: argparse.Namespace) -> tuple[Path, bool]:
    """The directory to build in and whether the benchmark created it (then it deletes it at the end)."""
    if args.workdir is None:
        return Path(tempfile.mkdtemp(prefix="distributed_build-")), True
    created = not args.workdir.exists()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not created and any(args.workdir.iterdir()):
        raise SystemExit(f"--workdir {args.workdir} is not empty; give a new or empty directory")
    return args.workdir, created


def benchmark(root: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    (root / "table").mkdir()
    (root / "logs").mkdir()
    keys, queries, exact = benchmark_data(args, args.dim)
    np.save(root / "table" / "keys.npy", keys)
    np.save(root / "table" / "latents.npy", np.zeros((args.n, args.latent_dim), np.float32))
    np.save(root / "table" / "queries.npy", queries)
    del keys
    items = corpus(args.n)
    spec = IndexConfig(f"IVF{args.nlist},Flat", nprobe=args.nprobe[0], max_train_keys=args.train_keys)
    start = time.perf_counter()
    plan = prepare_build(
        root / "build",
        items,
        TableEncoder.load(root / "table"),
        key_dim=args.dim,
        latent_dim=args.latent_dim,
        fingerprint=FINGERPRINT,
        spec=spec,
        num_shards=args.shards,
        batch_size=args.batch_size,
        progress=False,
    )
    prepare_s = time.perf_counter() - start
    start = time.perf_counter()
    _corpus_sha256(items)  # what every build_shard call spends checking its corpus is the prepared one
    corpus_check_s = time.perf_counter() - start
    print(
        f"  prepared at {time.perf_counter() - started:.0f} s: {plan.num_shards} shards, quantizer trained on "
        f"{plan.sample['size']} keys in {prepare_s:.1f} s",
        flush=True,
    )
    builds, kept = [], None
    for round_, order in enumerate(round_orders([str(w) for w in args.workers], args.repeats, args.seed)):
        for workers in map(int, order):
            built, out_dir = build_once(root, workers, round_, args)
            builds.append(built)
            if kept is not None:
                shutil.rmtree(kept)
            kept = out_dir
            print(
                f"  round {round_}: {workers} worker(s) built in {built.total_s:.1f} s "
                f"(merge {built.merge_s:.1f} s) at {time.perf_counter() - started:.0f} s",
                flush=True,
            )
    identical = all(b.files_sha256 == builds[0].files_sha256 for b in builds)
    memory = LatentIndex.open(kept, fingerprint=FINGERPRINT, verify=False)
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(memory.faiss_index).invlists)
    if not isinstance(invlists, faiss.OnDiskInvertedLists):
        raise SystemExit(f"{kept}: the merged memory opened with {type(invlists).__name__}, not on-disk lists")
    search = measure_search(memory, queries, exact, args)
    del memory, invlists
    print(f"  {args.repeats} search rounds done at {time.perf_counter() - started:.0f} s", flush=True)
    return {
        "prepare_s": prepare_s,
        "quantizer_training_keys": plan.sample["size"],
        "corpus_check_s": corpus_check_s,
        "builds": [asdict(b) for b in builds],
        "build_rows": build_rows(builds, args.workers),
        "identical_across_workers": identical,
        "search": search,
        "resident": [measure_resident(kept, root, nprobe, args) for nprobe in args.nprobe],
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ROLES:
        ROLES[argv[0]](argv[1:])
        return {}
    args = parse_args(argv)
    if args.threads is not None:
        faiss.omp_set_num_threads(args.threads)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"n={args.n} dim={args.dim} IVF{args.nlist},Flat shards={args.shards} workers={args.workers} "
        f"latent_dim={args.latent_dim} nprobe={args.nprobe} queries={args.queries} (single: {args.single_queries}) "
        f"k={args.k} repeats={args.repeats} threads/process={args.threads or faiss.omp_get_max_threads()} "
        f"cpus={cpus} faiss={faiss.__version__}",
        flush=True,
    )
    root, created = work_root(args)
    try:
        result = benchmark(root, args)
    finally:
        if created:
            shutil.rmtree(root, ignore_errors=True)
    rows: list[BuildRow] = result["build_rows"]
    print(
        f"build from one plan ({args.shards} shards, quantizer trained once in {result['prepare_s']:.1f} s, not "
        f"counted), medians over {args.repeats} interleaved rounds; each build_shard re-hashes the corpus "
        f"({result['corpus_check_s']:.2f} s a call here):"
    )
    print(format_builds(rows, args.workers))
    print("median (IQR, min-max, n):")
    print(format_spreads([f"{r.workers}w" for r in rows], [r.spreads for r in rows]))
    same = "identical" if result["identical_across_workers"] else "DIFFERENT"
    print(f"merged keys, latents, items and inverted lists across all {len(result['builds'])} builds: {same}")
    print(
        f"search of the merged memory (inverted lists memory-mapped), recall@{args.k} against exact search; prefetch: "
        "the lists' read-ahead threads per search (first: as opened); p50 speed-up over that at the same nprobe:"
    )
    print(format_search(result["search"], args.k))
    labels = [f"{r.nprobe}/{r.prefetch_threads}" for r in result["search"]]
    print("nprobe/prefetch threads: median (IQR, min-max, n):")
    print(format_spreads(labels, [r.spreads for r in result["search"]]))
    print(
        f"resident memory, per nprobe a fresh process that opens the merged memory and searches "
        f"{min(args.queries, args.resident_queries or args.queries)} queries in one batch (lists: pages of the "
        "inverted lists file in its RSS; RSS+/disk: (open + search) / on disk):"
    )
    print(format_resident(result["resident"]))
    print(f"Total wall time {result['wall_s']:.0f} s.")
    if args.out is not None:
        write_report(
            args.out,
            args,
            {
                "platform": platform.platform(),
                "faiss": faiss.__version__,
                "cpus": cpus,
                "threads_per_process": args.threads or faiss.omp_get_max_threads(),
            },
            **{key: value for key, value in result.items() if key not in ("build_rows", "search", "resident")},
            build_rows=[asdict(row) for row in rows],
            search=[asdict(row) for row in result["search"]],
            resident=[asdict(row) for row in result["resident"]],
        )
    return result


if __name__ == "__main__":
    main()
