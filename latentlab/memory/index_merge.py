"""A memory built by many workers: ``prepare_build`` splits the corpus into shards and trains one coarse quantizer,
each worker encodes its shards into IVF shard memories with it (``build_shard``), and ``merge_shards`` joins their
inverted lists on disk (FAISS ``merge_ondisk``) into one memory that opens memory-mapped.

FAISS's recipe for indexes that do not fit in RAM (``benchs/distributed_ondisk``): every shard is an IVF index with
the same trained centroids, so its inverted lists are the lists a single index would hold for those keys, and the
merge only concatenates them, list by list. Layout of a build's work directory::

    plan.json                the plan (written last by prepare, its commit point): corpus sha256 and count, the
                             shards' item ranges, compressor fingerprint, dimensions, index settings, the training
                             sample, and name/sha256/bytes of quantizer.faiss and codec.faiss
    quantizer.faiss          the trained, empty index: IVF centroids (and PQ codebooks where the factory has them)
    codec.faiss              int8 / pq latents only: the latent codec every shard encodes with
    compressor/              (``prepare_from_model``) the compressor export the workers load and the memory keeps
    shards/shard-NNNNN/      shard N: a complete memory (``LatentIndex``) over items [start, stop) of the corpus; its
                             manifest, written last, records in ``built_from`` the plan, quantizer and range it is of

The shard rule is contiguous ranges of the corpus order (shard i holds items i*n//s .. (i+1)*n//s - 1), so the
merged memory's rows (keys, latents, items, FAISS labels) are the corpus order, as a single-process build's are.
A worker is a process of one torchrun (``RANK``/``WORLD_SIZE``: shards rank, rank + world, ...) or a separate job
given its shard; a shard whose output is complete and matches its checksums is skipped, so a failed one is re-run
alone. The merged memory's manifest lists the shards with their checksums; it is read-only (add/remove refuse).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from latentlab import io as atomic_io
from latentlab.configs.memory import IndexConfig, training_keys_needed
from latentlab.data.schema import Evidence
from latentlab.errors import ConfigError, DataError, IndexError_
from latentlab.memory.index import (
    LatentIndex,
    _apply_search_params,
    _as_matrix,
    _check_vectors,
    _duplicate_ids,
    _faiss_message,
    _new_faiss_index,
    _write_faiss,
)
from latentlab.memory.index_build import Encoder, _corpus_sha256
from latentlab.memory.index_manifest import (
    _SUFFIX,
    FORMAT_VERSION,
    MANIFEST_NAME,
    _sha256,
    faiss_notes_silenced,
    file_entry,
    manifest_record,
    read_manifest,
    vision_field,
)
from latentlab.memory.latent_store import new_codec, saved_codec

log = logging.getLogger(__name__)

PLAN_NAME = "plan.json"
QUANTIZER_NAME = "quantizer.faiss"
CODEC_NAME = "codec.faiss"
SHARDS_DIR = "shards"
COMPRESSOR_DIR = "compressor"
"""As ``latentlab.memory.pipeline.COMPRESSOR_DIR``: the export beside a memory that ``LatentMemory.open`` loads."""
SAMPLE_SEED = 0
SAMPLE_PER_LIST = 256
"""Default training sample: 256 keys per IVF list, what FAISS's k-means samples at most anyway."""
_ROWS_PER_WRITE = 1 << 16


def shard_ranges(count: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` item ranges of the corpus order, shard i = ``i*count//n .. (i+1)*count//n``."""
    return [(i * count // num_shards, (i + 1) * count // num_shards) for i in range(num_shards)]


def worker_shards(num_shards: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """The shards a worker builds: ``rank, rank + world_size, ...``; by default from torchrun's ``RANK`` and
    ``WORLD_SIZE`` (a plain process is rank 0 of 1: every shard)."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ConfigError(f"worker rank {rank} is not in [0, world size {world_size})")
    return list(range(rank, num_shards, world_size))


@dataclass(frozen=True)
class BuildPlan:
    """What ``prepare_build`` decided; every shard and the merge are checked against it."""

    fingerprint: str
    key_dim: int
    latent_dim: int
    index: dict[str, Any]
    """The ``IndexConfig`` fields a memory records (factory, nprobe, ef_search, latent codec, max_train_keys)."""
    count: int
    corpus_sha256: str
    corpus: str | None
    """Where the corpus was read from (workers read it there unless told otherwise); None when given in code."""
    shards: list[list[int]]
    """``[start, stop)`` of each shard, in order."""
    sample: dict[str, int]
    """The quantizer's training sample: ``size`` rows drawn with ``seed``."""
    quantizer: dict[str, Any]
    codec: dict[str, Any] | None
    format_version: int = FORMAT_VERSION
    vision: dict[str, Any] | None = None
    """The compressor's vision tower (``checkpoint.vision_spec``), for the manifests; absent from text-only plans."""

    @property
    def spec(self) -> IndexConfig:
        return IndexConfig(**self.index)

    @property
    def num_shards(self) -> int:
        return len(self.shards)


def _index_fields(spec: IndexConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(spec).items() if k != "batch_size"}  # batch_size: how, not what, is built


def read_plan(work_dir: str | os.PathLike) -> tuple[BuildPlan, str]:
    """The plan of the build in ``work_dir`` and its sha256; IndexError_ naming the file if missing or unreadable."""
    path = Path(work_dir) / PLAN_NAME
    if not path.is_file():
        raise IndexError_(
            f"{path}: missing; {work_dir} is not a prepared sharded build (run `latentlab index prepare` first)"
        )
    try:
        plan = BuildPlan(**json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
        raise IndexError_(
            f"{path}: unreadable build plan ({err}); prepare the build again in a new directory"
        ) from None
    if plan.format_version != FORMAT_VERSION:
        raise IndexError_(f"{path}: format_version {plan.format_version} is not supported (expected {FORMAT_VERSION})")
    return plan, _sha256(path)


def _checked_file(work_dir: Path, entry: dict[str, Any], what: str) -> Path:
    """``work_dir / entry['name']`` after checking its size and sha256 against the plan (IndexError_ naming it)."""
    file = work_dir / entry["name"]
    if not file.is_file() or file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
        raise IndexError_(
            f"{file}: the build's {what} is missing or changed since prepare (its size or sha256 differs from "
            f"{work_dir / PLAN_NAME}); prepare the build again in a new directory"
        )
    return file


def _checked_items(items: list[Evidence], where: str) -> list[Evidence]:
    if not items:
        raise DataError(f"the corpus for {where} is empty; nothing to build")
    if repeats := _duplicate_ids(item.id for item in items):
        item_id, (first, second) = next(iter(repeats.items()))
        raise DataError(f"the corpus for {where} has duplicate id '{item_id}' (items {first + 1} and {second + 1})")
    return items


def _encode(
    items: Sequence[Evidence],
    encode: Encoder,
    key_dim: int,
    latent_dim: int,
    spec: IndexConfig,
    batch_size: int,
    where: str,
    desc: str,
    show: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``items`` encoded in batches, checked as ``build_index`` checks them: ``(keys [n, key_dim], latents [n,
    latent_dim])`` float32; ``where`` names the memory in errors, ``desc`` the progress bar (shown if ``show``)."""
    key_parts, latent_parts = [], []
    with tqdm(total=len(items), unit="item", desc=desc, disable=not show) as progress:
        for start in range(0, len(items), batch_size):
            batch = list(items[start : start + batch_size])
            keys, latents = encode(batch)
            keys = _as_matrix(keys, len(batch), key_dim, "encoded keys", f"{where} (items {start}..)")
            latents = _as_matrix(latents, len(batch), latent_dim, "encoded latents", f"{where} (items {start}..)")
            _check_vectors(batch, keys, latents, spec.latent_dtype)
            key_parts.append(keys)
            latent_parts.append(latents)
            progress.update(len(batch))
    return np.concatenate(key_parts), np.concatenate(latent_parts)


# ---------------------------------------------------------------------- prepare
def prepare_build(
    work_dir: str | os.PathLike,
    corpus: Iterable[Evidence],
    encode: Encoder,
    *,
    key_dim: int,
    latent_dim: int,
    fingerprint: str,
    spec: IndexConfig,
    num_shards: int,
    corpus_path: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = True,
    vision: dict[str, Any] | None = None,
) -> BuildPlan:
    """Plan a build of ``corpus`` in ``num_shards`` shards and train its shared quantizer; writes ``work_dir``.

    The quantizer (``spec.factory``, an IVF factory) trains on the keys of a seeded sample of the corpus
    (``spec.max_train_keys`` rows, default 256 per IVF list), which ``encode`` encodes here; an int8 or pq latent
    codec trains on the same sample's latents. Preparing again with the same arguments returns the existing plan;
    other arguments, or files in ``work_dir`` that are not a prepare's, are refused (IndexError_, nothing changed).
    ``vision`` (``checkpoint.vision_spec``; None: text only) goes into the plan and every manifest of the build.
    """
    work_dir = Path(work_dir)
    items = _checked_items(list(corpus), str(work_dir))
    if not isinstance(num_shards, int) or not 1 <= num_shards <= len(items):
        raise ConfigError(f"num_shards must be an integer in [1, {len(items)} items], got {num_shards!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    probe = _new_faiss_index(key_dim, spec)  # a bad factory is a ConfigError naming it
    ivf = faiss.try_extract_index_ivf(probe)
    if ivf is None or isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQR):
        raise ConfigError(
            f"index.factory '{spec.factory}': a memory built by many workers merges inverted lists, so it needs an "
            "IVF factory other than IVFPQR (e.g. 'IVF1024,Flat' or 'IVF1024,PQ32')"
        )
    codec = new_codec(spec, latent_dim)  # pq: latent_pq_m must divide latent_dim
    needed = max(training_keys_needed(spec.factory), spec.latent_training_rows_needed(), 1)
    size = min(len(items), spec.max_train_keys or max(SAMPLE_PER_LIST * ivf.nlist, needed))
    if size < needed:
        raise IndexError_(
            f"{work_dir}: index '{spec.factory}' (latent_dtype '{spec.latent_dtype}') needs at least {needed} items "
            f"to train, but the corpus has {len(items)}; use a smaller nlist or a larger corpus"
        )
    fields = {
        "fingerprint": fingerprint,
        "key_dim": key_dim,
        "latent_dim": latent_dim,
        "index": _index_fields(spec),
        "count": len(items),
        "corpus_sha256": _corpus_sha256(items),
        "corpus": None if corpus_path is None else str(Path(corpus_path).resolve()),
        "shards": [list(r) for r in shard_ranges(len(items), num_shards)],
        "sample": {"size": size, "seed": SAMPLE_SEED},
        "vision": vision,
    }
    if (work_dir / PLAN_NAME).exists():
        plan, _ = read_plan(work_dir)
        recorded = {key: getattr(plan, key) for key in fields}
        if recorded != fields:
            differ = ", ".join(f"{k}: {recorded[k]!r} then, {v!r} now" for k, v in fields.items() if recorded[k] != v)
            raise IndexError_(
                f"{work_dir / PLAN_NAME} plans another build ({differ[:300]}); prepare into a new directory"
            )
        return plan
    if work_dir.exists():
        ours = {QUANTIZER_NAME, CODEC_NAME, COMPRESSOR_DIR}
        for entry in sorted(work_dir.iterdir()):
            if entry.name not in ours and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                raise IndexError_(
                    f"refusing to prepare a build in {work_dir}: {entry} is not part of one; nothing was changed. "
                    "Prepare into an empty or new directory"
                )
    rows = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(items), size, replace=False))
    sample = [items[row] for row in rows]
    keys, latents = _encode(
        sample,
        encode,
        key_dim,
        latent_dim,
        spec,
        batch_size=batch_size,
        where=str(work_dir),
        desc=f"training sample of {work_dir.name}",
        show=progress,
    )
    try:
        probe.train(keys)
    except RuntimeError as err:
        raise IndexError_(f"{work_dir}: training '{spec.factory}' failed: {_faiss_message(err)}") from None
    codec = codec.trained(latents, where=str(work_dir)) if codec.trainable else codec
    work_dir.mkdir(parents=True, exist_ok=True)
    _write_faiss(work_dir / QUANTIZER_NAME, probe)
    codec_entry = None
    if (state := codec.state()) is not None:
        _write_faiss(work_dir / CODEC_NAME, state)
        codec_entry = file_entry(work_dir / CODEC_NAME)
    plan = BuildPlan(**fields, quantizer=file_entry(work_dir / QUANTIZER_NAME), codec=codec_entry)
    record = {key: value for key, value in asdict(plan).items() if key != "vision"} | vision_field(vision)
    atomic_io.write_json(work_dir / PLAN_NAME, record)  # the commit point
    return plan


# ---------------------------------------------------------------------- one shard
@dataclass(frozen=True)
class ShardResult:
    shard: int
    path: Path
    count: int
    built: bool
    """False: an intact output of this shard was already there, and was kept."""


def shard_dir(work_dir: str | os.PathLike, shard: int) -> Path:
    return Path(work_dir) / SHARDS_DIR / f"shard-{shard:05d}"


def _shard_record(plan: BuildPlan, plan_sha256: str, shard: int) -> dict[str, Any]:
    """What a shard's manifest records in ``built_from``: the plan, quantizer and codec it was built with."""
    start, stop = plan.shards[shard]
    return {
        "build": "shard",
        "plan_sha256": plan_sha256,
        "quantizer_sha256": plan.quantizer["sha256"],
        "codec_sha256": plan.codec["sha256"] if plan.codec else None,
        "shard": shard,
        "num_shards": plan.num_shards,
        "start": start,
        "stop": stop,
    }


def _intact(plan: BuildPlan, plan_sha256: str, path: Path, shard: int) -> bool:
    """Whether ``path`` holds this plan's shard, complete and matching every checksum of its manifest."""
    if not (path / MANIFEST_NAME).is_file():
        return False
    try:
        if read_manifest(path).get("built_from") != _shard_record(plan, plan_sha256, shard):
            log.warning("%s was built for another plan: building shard %d again", path, shard)
            return False
        LatentIndex.open(path, fingerprint=plan.fingerprint, verify=True)
    except IndexError_ as err:
        log.warning("shard %d at %s is damaged (%s): building it again", shard, path, err)
        return False
    return True


def build_shard(
    work_dir: str | os.PathLike,
    corpus: Iterable[Evidence],
    encode: Encoder,
    shard: int,
    *,
    fingerprint: str,
    batch_size: int = 256,
    progress: bool = True,
) -> ShardResult:
    """Encode shard ``shard`` of the prepared build in ``work_dir`` into ``shards/shard-NNNNN`` (a memory over its
    items, trained with the plan's quantizer and codec); skipped when an intact output of it is there already.

    ``corpus`` must be the prepared one (same sha256) and ``fingerprint`` the plan's compressor. The shard is
    written into a temp folder renamed onto ``shards/shard-NNNNN`` once complete, so a worker that dies leaves
    either no shard or the previous one, and rerunning it builds exactly that shard.
    """
    work_dir = Path(work_dir)
    plan, plan_sha256 = read_plan(work_dir)
    if fingerprint != plan.fingerprint:
        raise IndexError_(
            f"this compressor's fingerprint is '{fingerprint}', but {work_dir / PLAN_NAME} was prepared with "
            f"'{plan.fingerprint}'; build the shards with the compressor the build was prepared with"
        )
    if not isinstance(shard, int) or not 0 <= shard < plan.num_shards:
        raise ConfigError(f"shard must be in [0, {plan.num_shards}) for the build in {work_dir}, got {shard!r}")
    items = list(corpus)
    if len(items) != plan.count or _corpus_sha256(items) != plan.corpus_sha256:
        raise DataError(
            f"the corpus given ({len(items)} items) is not the one {work_dir / PLAN_NAME} was prepared with "
            f"({plan.count} items, sha256 {plan.corpus_sha256[:12]}...); give the same corpus file"
        )
    start, stop = plan.shards[shard]
    target = shard_dir(work_dir, shard)
    if _intact(plan, plan_sha256, target, shard):
        return ShardResult(shard, target, stop - start, built=False)
    spec = plan.spec
    quantizer = faiss.read_index(str(_checked_file(work_dir, plan.quantizer, "quantizer")))
    _apply_search_params(quantizer, spec)
    state = faiss.read_index(str(_checked_file(work_dir, plan.codec, "latent codec"))) if plan.codec else None
    codec = saved_codec(spec, {"latent_dim": plan.latent_dim, "count": 0}, state, work_dir / CODEC_NAME, work_dir)
    batch = items[start:stop]
    keys, latents = _encode(
        batch,
        encode,
        plan.key_dim,
        plan.latent_dim,
        spec,
        batch_size=batch_size,
        where=str(target),
        desc=f"shard {shard} of {plan.num_shards}",
        show=progress,
    )
    with atomic_io.staged_dir(target, overwrite=True) as staging:
        memory = LatentIndex(
            staging,
            plan.fingerprint,
            plan.key_dim,
            plan.latent_dim,
            spec,
            quantizer,
            codec,
            [],
            np.zeros((0, plan.key_dim), np.float32),
            np.zeros((0, codec.code_width), codec.code_dtype),
            built_from=_shard_record(plan, plan_sha256, shard),
            vision=plan.vision,
        )
        memory.add(batch, keys, latents)
        memory.save()
    return ShardResult(shard, target, stop - start, built=True)


# ---------------------------------------------------------------------- merge
def _rebuild_hint(work_dir: Path, shard: int, plan: BuildPlan) -> str:
    return f"build it: latentlab index build-shard {work_dir} --shard {shard} --num-shards {plan.num_shards}"


def _centroids(index: faiss.Index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def _checked_shard(work_dir: Path, plan: BuildPlan, plan_sha256: str, shard: int, centroids: np.ndarray) -> dict:
    """Shard ``shard``'s manifest, once it is this plan's shard (same compressor, quantizer, codec and range) and
    its files match their checksums; IndexError_ naming the shard otherwise."""
    path = shard_dir(work_dir, shard)
    name = f"shard {shard} of {plan.num_shards} ({path})"
    if not (path / MANIFEST_NAME).is_file():
        raise IndexError_(
            f"{path / MANIFEST_NAME}: missing: {name} has not been built, or its worker failed; "
            f"{_rebuild_hint(work_dir, shard, plan)}"
        )
    manifest = read_manifest(path)
    built_from = manifest.get("built_from") or {}
    expected = _shard_record(plan, plan_sha256, shard)
    if manifest["fingerprint"] != plan.fingerprint:
        raise IndexError_(
            f"{name} was built with compressor fingerprint '{manifest['fingerprint']}', but the plan "
            f"{work_dir / PLAN_NAME} has '{plan.fingerprint}'; {_rebuild_hint(work_dir, shard, plan)} again"
        )
    if built_from.get("quantizer_sha256") != expected["quantizer_sha256"]:
        raise IndexError_(
            f"{name} was built with another quantizer (sha256 {str(built_from.get('quantizer_sha256'))[:12]}...) "
            f"than the plan's {work_dir / QUANTIZER_NAME} ({expected['quantizer_sha256'][:12]}...); its inverted "
            f"lists do not fit the others'; {_rebuild_hint(work_dir, shard, plan)} again"
        )
    if built_from != expected:
        differ = ", ".join(f"{k} {built_from.get(k)!r}" for k in expected if built_from.get(k) != expected[k])
        raise IndexError_(f"{name} was built for another plan ({differ}); {_rebuild_hint(work_dir, shard, plan)} again")
    memory = LatentIndex.open(path, fingerprint=plan.fingerprint, verify=True)  # a damaged file names itself
    if not np.array_equal(_centroids(memory.faiss_index), centroids):
        raise IndexError_(
            f"{name}: its IVF centroids differ from the plan's {work_dir / QUANTIZER_NAME}: it was built with "
            f"another quantizer; {_rebuild_hint(work_dir, shard, plan)} again"
        )
    if len(memory) != expected["stop"] - expected["start"]:
        raise IndexError_(
            f"{name} holds {len(memory)} items, but the plan gives it {expected['stop'] - expected['start']}"
        )
    return manifest


def _write_npy_parts(path: Path, parts: list[Path], width: int, dtype: np.dtype) -> None:
    """The row-wise concatenation of the .npy files ``parts`` into ``path``, a block of rows at a time."""
    arrays = [np.load(part, mmap_mode="r", allow_pickle=False) for part in parts]
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": (sum(len(a) for a in arrays), width),
    }

    def write(handle) -> None:
        np.lib.format.write_array_header_1_0(handle, header)
        for array in arrays:
            for start in range(0, len(array), _ROWS_PER_WRITE):
                handle.write(np.ascontiguousarray(array[start : start + _ROWS_PER_WRITE], dtype=dtype).tobytes())

    atomic_io.write_atomic(path, write)


def _write_concatenated(path: Path, parts: list[Path]) -> None:
    def write(handle) -> None:
        for part in parts:
            with part.open("rb") as source:
                shutil.copyfileobj(source, handle)

    atomic_io.write_atomic(path, write)


def merge_shards(work_dir: str | os.PathLike, out_dir: str | os.PathLike) -> LatentIndex:
    """Merge the shards of the build in ``work_dir`` into one memory in ``out_dir`` (a new or empty directory).

    Every shard is checked first (present, this plan's compressor, quantizer, codec and item range, checksums);
    the first that is not is refused, naming it, before anything is written. The shards' inverted lists are merged
    into ``invlists.1.ivfdata`` (FAISS ``merge_ondisk``), read memory-mapped when the memory opens; keys, latents
    and items are the shards' concatenated in shard order; the build's compressor export is copied beside them.
    The memory is assembled in a temp folder renamed onto ``out_dir`` once complete.
    """
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    plan, plan_sha256 = read_plan(work_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        what = "a built memory" if (out_dir / MANIFEST_NAME).exists() else "files"
        raise IndexError_(
            f"refusing to merge into {out_dir}: it already holds {what}; a merge writes a new memory, into a new "
            "or empty directory (nothing was changed)"
        )
    quantizer_file = _checked_file(work_dir, plan.quantizer, "quantizer")
    codec_file = _checked_file(work_dir, plan.codec, "latent codec") if plan.codec else None
    centroids = _centroids(faiss.read_index(str(quantizer_file)))
    manifests = [_checked_shard(work_dir, plan, plan_sha256, shard, centroids) for shard in range(plan.num_shards)]
    for shard, manifest in enumerate(manifests):
        codec_sha = (manifest["files"].get("codec") or {}).get("sha256")
        if codec_sha != (plan.codec["sha256"] if plan.codec else None):
            raise IndexError_(f"shard {shard} ({shard_dir(work_dir, shard)}) stores latents with another codec")

    def parts(role: str) -> list[Path]:
        return [shard_dir(work_dir, s) / m["files"][role]["name"] for s, m in enumerate(manifests)]

    spec = plan.spec
    codec = new_codec(spec, plan.latent_dim)
    with atomic_io.staged_dir(out_dir) as staging:
        names = {role: f"{role}.1{suffix}" for role, suffix in _SUFFIX.items()}
        merged = faiss.read_index(str(quantizer_file))
        from faiss.contrib.ondisk import merge_ondisk

        with faiss_notes_silenced():
            merge_ondisk(merged, [str(p) for p in parts("index")], str(staging / names["invlists"]), shift_ids=True)
        _apply_search_params(merged, spec)
        _write_faiss(staging / names["index"], merged)
        del merged  # unmaps the inverted lists: their pages are on disk before they are hashed
        with (staging / names["invlists"]).open("rb+") as handle:
            os.fsync(handle.fileno())
        _write_npy_parts(staging / names["keys"], parts("keys"), plan.key_dim, np.dtype(np.float32))
        _write_npy_parts(staging / names["latents"], parts("latents"), codec.code_width, codec.code_dtype)
        _write_concatenated(staging / names["items"], parts("items"))
        roles = ["index", "keys", "latents", "items", "invlists"]
        if codec_file is not None:
            shutil.copyfile(codec_file, staging / names["codec"])
            roles.append("codec")
        if (work_dir / COMPRESSOR_DIR).is_dir():
            shutil.copytree(work_dir / COMPRESSOR_DIR, staging / COMPRESSOR_DIR)
        files = {role: file_entry(staging / names[role]) for role in roles}
        shards = [
            {
                "shard": s,
                "start": plan.shards[s][0],
                "stop": plan.shards[s][1],
                "manifest_sha256": _sha256(shard_dir(work_dir, s) / MANIFEST_NAME),
                "files": m["files"],
            }
            for s, m in enumerate(manifests)
        ]
        built_from = {"build": "merged", "plan_sha256": plan_sha256, "quantizer_sha256": plan.quantizer["sha256"]}
        record = manifest_record(
            plan.fingerprint,
            plan.key_dim,
            plan.latent_dim,
            plan.count,
            spec,
            files,
            1,
            {**built_from, "shards": shards},
            plan.vision,
        )
        atomic_io.write_json(staging / MANIFEST_NAME, record)
    return LatentIndex.open(out_dir, fingerprint=plan.fingerprint, verify=False)


# ---------------------------------------------------------------------- with a trained compressor (the CLI)
def prepare_from_model(
    model: Any,
    corpus: Sequence[Evidence],
    work_dir: str | os.PathLike,
    num_shards: int,
    corpus_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> BuildPlan:
    """``prepare_build`` with a loaded ``LatentMemoryModel`` (its config's `index:` section), which is exported into
    ``work_dir/compressor`` for the workers and the merged memory."""
    from latentlab.memory.checkpoint import compressor_fingerprint, export_compressor, vision_spec

    work_dir = Path(work_dir)
    fingerprint = compressor_fingerprint(model)
    spec = model.config.index
    plan = prepare_build(
        work_dir,
        corpus,
        model.encode_items,
        key_dim=model.config.compressor.key_dim,
        latent_dim=model.compressor.hidden,
        fingerprint=fingerprint,
        spec=spec,
        num_shards=num_shards,
        corpus_path=corpus_path,
        batch_size=spec.batch_size,
        progress=progress,
        vision=vision_spec(model.config),
    )
    stored = work_dir / COMPRESSOR_DIR / "fingerprint.txt"
    if not stored.is_file() or stored.read_text().strip() != fingerprint:
        export_compressor(model, work_dir / COMPRESSOR_DIR)
    return plan


def build_shards_from_work(
    work_dir: str | os.PathLike,
    shards: Sequence[int] | None = None,
    corpus_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[ShardResult]:
    """A worker: build ``shards`` (default: this torchrun rank's, ``worker_shards``) of the build in ``work_dir``
    with the compressor exported there, reading the corpus from ``corpus_path`` (default: where prepare read it).
    The compressor runs on ``cuda:LOCAL_RANK`` where a GPU is visible, else on the CPU."""
    import torch

    from latentlab.data.schema import read_corpus
    from latentlab.memory.checkpoint import compressor_fingerprint, load_model

    work_dir = Path(work_dir)
    plan, _ = read_plan(work_dir)
    source = corpus_path or plan.corpus
    if source is None:
        raise ConfigError(f"{work_dir / PLAN_NAME} records no corpus file (prepared in code); give the corpus file")
    if not (work_dir / COMPRESSOR_DIR).is_dir():
        raise IndexError_(f"{work_dir / COMPRESSOR_DIR}: missing; prepare the build with its compressor first")
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    model = load_model(work_dir / COMPRESSOR_DIR, device=device)
    corpus = read_corpus(source)
    chosen = worker_shards(plan.num_shards) if shards is None else list(shards)
    fingerprint = compressor_fingerprint(model)
    return [
        build_shard(
            work_dir,
            corpus,
            model.encode_items,
            shard,
            fingerprint=fingerprint,
            batch_size=model.config.index.batch_size,
            progress=progress,
        )
        for shard in chosen
    ]
