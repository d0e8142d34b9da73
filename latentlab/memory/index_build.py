"""The streaming, resumable ``build_index``: encode a corpus in batches into ``out_dir/.building``, then assemble.

``latentlab.memory.index`` re-exports ``build_index``, ``BuildInterrupted`` and ``Encoder``; import them from either.

What a build leaves in ``out_dir`` while it runs::

    .build.lock                   the pid of the build that holds ``out_dir`` (see ``_build_lock``)
    .building/progress.json       the plan (the arguments that decide the result) and, per finished batch, the
                                  shard's name, sha256 and size; ``assembling`` once the memory's files are written
    .building/batch-NNNNNN.npz    keys and latents of batch NNNNNN, written atomically before it is recorded

A build writes only into a directory that does not exist, is empty, holds a finished memory (which is returned when
it is this very build and refused otherwise, untouched), or holds an unfinished build of the same plan. Any other
file is refused by name before anything is written: a build never overwrites nor deletes a file it did not write.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from latentlab import io as atomic_io
from latentlab.data.schema import Evidence, to_record
from latentlab.errors import ConfigError, DataError, IndexError_
from latentlab.memory.index import (
    _SUFFIX,
    BUILDING_DIR_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    IndexConfig,
    LatentIndex,
    _as_matrix,
    _check_vectors,
    _duplicate_ids,
    _sha256,
    _write_json,
    read_manifest,
)

log = logging.getLogger(__name__)

Encoder = Callable[[list[Evidence]], tuple[np.ndarray, np.ndarray]]

LOCK_NAME = ".build.lock"
PROGRESS_NAME = "progress.json"
_ASSEMBLED_GENERATION = 1
"""The generation of the files a build's single ``save`` of a fresh memory writes (``index.1.faiss``...)."""
_SHARD_FILE = re.compile(r"^batch-(\d{6})\.npz$")
_SHARD_TEMP = re.compile(r"^\.(batch-\d{6}\.npz|progress\.json)\..*\.tmp$")
_ASSEMBLY_FILES = {f"{role}.{_ASSEMBLED_GENERATION}{suffix}" for role, suffix in _SUFFIX.items()}
_ASSEMBLY_TEMP = re.compile(
    r"^\.(" + "|".join(re.escape(name) for name in sorted(_ASSEMBLY_FILES | {MANIFEST_NAME})) + r")\..*\.tmp$"
)


class BuildInterrupted(IndexError_):  # noqa: N818 - named after what happened, like KeyboardInterrupt
    """Ctrl-C stopped ``build_index``; the finished batches are kept and rerunning the same build resumes it."""


def _corpus_sha256(items: Sequence[Evidence]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(to_record(item), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


# ---------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


@contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.build.lock`` (created with O_CREAT|O_EXCL, holding this pid) for the duration; removed after.

    A lock whose pid is alive (this process included: a build nested in another's encoder) refuses the build,
    naming the pid. A stale lock, whose pid no longer runs (a build killed with SIGKILL or a power cut), is taken
    over. Takeover re-reads the lock before deleting it, which leaves only a narrow race between two builds that
    find the same stale lock at the same moment. The pid is of this machine: do not share ``out_dir`` between
    hosts building at once.
    """
    lock = out_dir / LOCK_NAME
    mine = f"{os.getpid()}\n"
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                text = lock.read_text(encoding="utf-8")
            except FileNotFoundError:  # released meanwhile: try again
                continue
            pid = int(text) if text.strip().isdigit() else None
            if pid is None or pid < 1:
                raise IndexError_(
                    f"{lock}: a build lock without a pid ({text[:40]!r}) keeps {out_dir} from being built; if no "
                    f"build of {out_dir} is running, delete {lock}"
                ) from None
            if _pid_alive(pid):
                raise IndexError_(
                    f"another build (pid {pid}) holds the lock {lock} on {out_dir}; wait for it to finish (if pid "
                    f"{pid} is no build of {out_dir}, delete the lock)"
                ) from None
            with suppress(OSError):
                if lock.read_text(encoding="utf-8") == text:  # still the stale one: take it over
                    lock.unlink()
            continue
        try:
            os.write(fd, mine.encode())
        finally:
            os.close(fd)
        break
    else:
        raise IndexError_(f"{lock}: could not take the build lock on {out_dir}; is another build starting there?")
    try:
        yield
    finally:
        with suppress(OSError):
            if lock.read_text(encoding="utf-8") == mine:
                lock.unlink()


# ---------------------------------------------------------------------- what out_dir may hold
def _refused(out_dir: Path, offending: Path) -> IndexError_:
    return IndexError_(
        f"refusing to build into {out_dir}: {offending} is not part of this build (a build writes only into an "
        f"empty or new directory, a finished memory or an unfinished build with the same arguments); nothing was "
        f"changed. Build into an empty or new directory, or move {offending} away"
    )


def _read_progress(building: Path, plan: dict[str, Any], batches: int) -> dict[str, Any] | None:
    """The recorded progress of this plan's build (None: none recorded); IndexError_ if unreadable or another plan."""
    progress_path = building / PROGRESS_NAME
    if not progress_path.exists():
        return None
    try:
        progress = json.loads(progress_path.read_text(encoding="utf-8"))
        recorded, shards, assembling = progress["plan"], list(progress["shards"]), bool(progress.get("assembling"))
        if not isinstance(recorded, dict):
            raise TypeError("'plan' is not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError, KeyError, TypeError) as err:
        raise IndexError_(
            f"{progress_path}: unreadable build progress ({err}); delete {building} to start over"
        ) from None
    if recorded != plan:
        differences = ", ".join(
            f"{key}: {recorded.get(key)!r} then, {plan[key]!r} now" for key in plan if recorded.get(key) != plan[key]
        )
        raise IndexError_(
            f"{progress_path} records an unfinished build with other arguments ({differences or 'other fields'}); "
            f"rerun with the same arguments to resume it, or delete {building} to start over"
        )
    by_number: dict[int, dict[str, Any]] = {}
    for entry in shards:
        match = (
            _SHARD_FILE.match(entry["name"]) if isinstance(entry, dict) and isinstance(entry.get("name"), str) else None
        )
        number = int(match.group(1)) if match else -1
        if (
            not 0 <= number < batches
            or number in by_number
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("bytes"), int)
        ):
            raise IndexError_(
                f"{progress_path}: unreadable build progress (bad shard entry {json.dumps(entry)[:80]}); "
                f"delete {building} to start over"
            )
        by_number[number] = entry
    return {"shards": by_number, "assembling": assembling}


def _check_building(out_dir: Path, plan: dict[str, Any], batches: int) -> dict[str, Any] | None:
    """``.building``'s recorded progress, after checking that everything in it is this build's (else IndexError_)."""
    building = out_dir / BUILDING_DIR_NAME
    if not building.exists():
        return None
    if not building.is_dir():
        raise _refused(out_dir, building)
    progress = _read_progress(building, plan, batches)
    for entry in sorted(building.iterdir()):
        match = _SHARD_FILE.match(entry.name)
        if progress is None:  # no record yet: only what a build leaves before its first progress.json
            ours = entry.name.startswith(f".{PROGRESS_NAME}.") and _SHARD_TEMP.match(entry.name) is not None
        else:
            ours = (
                entry.name == PROGRESS_NAME
                or (match is not None and int(match.group(1)) < batches)
                or _SHARD_TEMP.match(entry.name) is not None
            )
        if not ours or not entry.is_file():
            raise _refused(out_dir, entry)
    return progress


def _resume_state(out_dir: Path, plan: dict[str, Any], batches: int) -> tuple[dict[int, dict[str, Any]], bool]:
    """Intact shards of an earlier run of this build, by batch number, and whether it began assembling.

    Refuses (IndexError_, naming the first offending file, changing nothing) a directory holding anything but
    this build's lock, its ``.building`` and, once it began assembling, the memory files its ``save`` writes.
    A recorded shard whose size or sha256 no longer matches is left out, so that only its batch is encoded again.
    """
    progress = _check_building(out_dir, plan, batches)
    assembling = bool(progress and progress["assembling"])
    for entry in sorted(out_dir.iterdir()):
        if entry.name in (LOCK_NAME, BUILDING_DIR_NAME):
            continue
        assembled = entry.name in _ASSEMBLY_FILES or _ASSEMBLY_TEMP.match(entry.name) is not None
        if not (assembling and assembled and entry.is_file()):
            raise _refused(out_dir, entry)
    if progress is None:
        return {}, False
    building = out_dir / BUILDING_DIR_NAME
    intact, damaged = {}, []
    for number, entry in sorted(progress["shards"].items()):
        file = building / entry["name"]
        if file.is_file() and file.stat().st_size == entry["bytes"] and _sha256(file) == entry["sha256"]:
            intact[number] = entry
        else:
            damaged.append(entry["name"])
    if damaged:
        log.warning(
            "%s: %d build shard(s) missing or changed since they were written (%s); encoding those batches again",
            building,
            len(damaged),
            ", ".join(damaged),
        )
    return intact, assembling


def _write_progress(building: Path, plan: dict[str, Any], shards: dict[int, dict[str, Any]], assembling: bool) -> None:
    record = {"plan": plan, "shards": [shards[number] for number in sorted(shards)], "assembling": assembling}
    _write_json(building / PROGRESS_NAME, record)


def _remove_building(building: Path) -> None:
    """Delete ``.building`` (checked to hold only this build's files), its progress.json last.

    Interrupted anywhere, what is left is either still recorded by progress.json or an empty directory.
    """
    for entry in building.iterdir():
        if entry.name != PROGRESS_NAME:
            entry.unlink()
    (building / PROGRESS_NAME).unlink(missing_ok=True)
    building.rmdir()


def _refuse_or_reuse_finished(
    out_dir: Path, items: list[Evidence], fingerprint: str, key_dim: int, latent_dim: int, spec: IndexConfig
) -> LatentIndex:
    """A finished memory in ``out_dir`` is returned if it is this very build, otherwise left intact and refused."""
    found = read_manifest(out_dir)["fingerprint"]
    if found != fingerprint:
        raise IndexError_(
            f"{out_dir} already holds a finished memory built with compressor fingerprint '{found}', but this "
            f"build uses '{fingerprint}'; it was left untouched. Build into a new directory, or delete {out_dir} "
            f"yourself to replace it"
        )
    memory = LatentIndex.open(out_dir, fingerprint=fingerprint)
    wanted = (key_dim, latent_dim, spec.factory, spec.latent_dtype, spec.latent_codec_params())
    found_layout = (
        memory.key_dim,
        memory.latent_dim,
        memory.spec.factory,
        memory.spec.latent_dtype,
        memory.spec.latent_codec_params(),
    )
    if found_layout != wanted or memory.items_for(memory.ids) != items:
        raise IndexError_(
            f"{out_dir} already holds a finished memory with fingerprint '{fingerprint}' but different items, "
            f"dimensions or index type ({len(memory)} items, factory '{memory.spec.factory}'); it was left "
            f"untouched. Open it and add()/remove() items, or build into a new directory"
        )
    return memory


def _discard_leftover_building(out_dir: Path, plan: dict[str, Any], batches: int) -> None:
    """After the memory is saved: remove this build's ``.building`` (left if a run died right after saving).

    A ``.building`` that is not this build's is left in place with a warning.
    """
    building = out_dir / BUILDING_DIR_NAME
    if not building.exists():
        return
    try:
        _check_building(out_dir, plan, batches)
    except IndexError_ as err:
        log.warning("%s holds a finished memory; left %s in place: %s", out_dir, building, err)
        return
    _remove_building(building)


# ---------------------------------------------------------------------- build_index
def build_index(
    out_dir: str | os.PathLike,
    corpus: Iterable[Evidence],
    encode: Encoder,
    *,
    key_dim: int,
    latent_dim: int,
    fingerprint: str,
    spec: IndexConfig | None = None,
    batch_size: int = 256,
    progress: bool = True,
    vision: dict[str, Any] | None = None,
) -> LatentIndex:
    """Encode ``corpus`` in batches and save it as a memory in ``out_dir``; resumes an interrupted run.

    ``encode(batch) -> (keys [b, key_dim], latents [b, latent_dim])`` must be deterministic per item. Each finished
    batch is written to ``out_dir/.building/batch-NNNNNN.npz`` and recorded, with its sha256 and size, in
    ``progress.json`` (both atomically), so rerunning with the same arguments after a crash or Ctrl-C encodes only
    the remaining batches, plus any recorded one whose file has since changed; the memory is assembled from the
    shards once all exist, so it is identical to an uninterrupted build. The corpus is read into memory first:
    ids are checked (empty corpus or a duplicate id: DataError) before anything is written.

    The same arguments (the plan: fingerprint, dimensions, factory, latent codec, batch size and corpus) are
    required to resume or reuse. ``out_dir`` must not exist, be empty, hold a finished memory or an unfinished
    build of this plan; anything else is refused (IndexError_ naming the first offending file) and left untouched.
    One build at a time per ``out_dir``: a second one raises IndexError_ naming the pid holding ``.build.lock``.
    Ctrl-C raises BuildInterrupted (an IndexError_), which says that rerunning resumes. ``vision``: the
    compressor's vision tower (``checkpoint.vision_spec``, None for text only), recorded in the manifest; the
    fingerprint already depends on it, so it is no part of the plan.
    """
    out_dir = Path(out_dir)
    spec = spec or IndexConfig()
    try:
        items = list(corpus)
        if not items:
            raise DataError(f"the corpus for {out_dir} is empty; nothing to build")
        if repeats := _duplicate_ids(item.id for item in items):
            item_id, (first, second) = next(iter(repeats.items()))
            raise DataError(
                f"the corpus for {out_dir} has duplicate id '{item_id}' (items {first + 1} and {second + 1})"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if out_dir.exists() and not out_dir.is_dir():
            raise IndexError_(f"{out_dir} is a file, not a directory; build the memory into a directory")
        if not (out_dir / MANIFEST_NAME).exists():
            LatentIndex.create(out_dir, key_dim, latent_dim, fingerprint, spec, vision)  # validates; writes nothing
        plan = {
            "format_version": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "key_dim": key_dim,
            "latent_dim": latent_dim,
            "factory": spec.factory,
            "latent_dtype": spec.latent_dtype,
            **spec.latent_codec_params(),  # only pq has any: plans of unfinished float builds stay as they were
            "batch_size": batch_size,
            "count": len(items),
            "corpus_sha256": _corpus_sha256(items),
        }
        batch_starts = range(0, len(items), batch_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        with _build_lock(out_dir):
            if (out_dir / MANIFEST_NAME).exists():
                memory = _refuse_or_reuse_finished(out_dir, items, fingerprint, key_dim, latent_dim, spec)
                _discard_leftover_building(out_dir, plan, len(batch_starts))
                return memory
            return _encode_and_assemble(out_dir, items, encode, plan, spec, batch_starts, progress, vision)
    except KeyboardInterrupt:  # before any batch was encoded (BuildInterrupted from later on is no KeyboardInterrupt)
        raise BuildInterrupted(
            f"build of {out_dir} interrupted (Ctrl-C) before it encoded anything new: rerun the same command to resume"
        ) from None


def _encode_and_assemble(
    out_dir: Path,
    items: list[Evidence],
    encode: Encoder,
    plan: dict[str, Any],
    spec: IndexConfig,
    batch_starts: range,
    progress: bool,
    vision: dict[str, Any] | None,
) -> LatentIndex:
    """The unfinished-build part of ``build_index``, run under the lock."""
    building = out_dir / BUILDING_DIR_NAME
    key_dim, latent_dim, batch_size = plan["key_dim"], plan["latent_dim"], plan["batch_size"]
    shards, assembling = _resume_state(out_dir, plan, len(batch_starts))
    recorded = False
    try:
        building.mkdir(exist_ok=True)
        _write_progress(building, plan, shards, assembling)  # damaged shards are no longer recorded
        recorded = True
        done = sum(len(items[batch_starts[number] : batch_starts[number] + batch_size]) for number in shards)
        with tqdm(
            total=len(items), initial=done, unit="item", desc=f"encoding {out_dir.name}", disable=not progress
        ) as bar:
            for number in range(len(batch_starts)):
                if number in shards:
                    continue
                batch = items[batch_starts[number] : batch_starts[number] + batch_size]
                where = f"{out_dir} (batch {number})"
                keys, latents = encode(batch)
                keys = _as_matrix(keys, len(batch), key_dim, "encoded keys", where)
                latents = _as_matrix(latents, len(batch), latent_dim, "encoded latents", where)
                _check_vectors(batch, keys, latents, spec.latent_dtype)
                shard = building / f"batch-{number:06d}.npz"
                atomic_io.write_npz(shard, keys=keys, latents=latents)
                shards[number] = {"name": shard.name, "sha256": _sha256(shard), "bytes": shard.stat().st_size}
                _write_progress(building, plan, shards, assembling)
                bar.update(len(batch))
        assembling = True  # from here on out_dir may hold the memory's files: a resumed run may overwrite them
        _write_progress(building, plan, shards, assembling)
        key_parts, latent_parts = [], []
        for number in range(len(batch_starts)):
            file = building / shards[number]["name"]
            data = file.read_bytes() if file.is_file() else b""
            if len(data) != shards[number]["bytes"] or hashlib.sha256(data).hexdigest() != shards[number]["sha256"]:
                raise IndexError_(
                    f"{file}: build shard missing or changed during the build (size or sha256 differs from "
                    f"{building / PROGRESS_NAME}); rerun the same command to encode that batch again"
                )
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                key_parts.append(arrays["keys"])
                latent_parts.append(arrays["latents"])
        memory = LatentIndex.create(out_dir, key_dim, latent_dim, plan["fingerprint"], spec, vision)
        memory.add(items, np.concatenate(key_parts), np.concatenate(latent_parts))
        memory.save()
        _remove_building(building)
        return memory
    except KeyboardInterrupt:
        if recorded:
            with suppress(OSError):  # record a shard written just before Ctrl-C; every write is atomic anyway
                _write_progress(building, plan, shards, assembling)
        raise BuildInterrupted(
            f"build of {out_dir} interrupted (Ctrl-C) with {len(shards)} of {len(batch_starts)} batches encoded; "
            f"they are kept in {building}: rerun the same command to resume"
        ) from None  # a Ctrl-C before the try (checking the earlier shards) is reported by build_index
