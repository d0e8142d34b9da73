"""The files of a memory directory: their roles and names, the manifest that lists them, its reader and writer.

A memory's ``manifest.json`` is its commit point (see ``latentlab.memory.index``); a merged memory (``index_merge``)
adds ``invlists``, the on-disk inverted lists its IVF index reads memory-mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import faiss

from latentlab.configs.memory import IndexConfig
from latentlab.errors import IndexError_

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
METRIC = "inner_product"

_SUFFIX = {
    "index": ".faiss",
    "keys": ".npy",
    "latents": ".npy",
    "items": ".jsonl",
    "codec": ".faiss",
    "invlists": ".ivfdata",
}
_REQUIRED_FILES = ("index", "keys", "latents", "items")
"""Every memory has these; ``codec`` only where its latent codec is trained (int8, pq), ``invlists`` only where the
memory was merged from shards into on-disk inverted lists."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def faiss_notes_silenced() -> Iterator[None]:
    """FAISS's C++ prints notes on stdout when it maps or grows on-disk inverted lists ("IO_FLAG_ONDISK_SAME_DIR:
    updating ondisk filename ..."); keep them out of a command's output (fd 1 goes to /dev/null meanwhile)."""
    import ctypes

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        with suppress(OSError, AttributeError):  # C stdio buffers what it printed when stdout is a pipe
            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def read_faiss(file: Path, ondisk: bool = False) -> faiss.Index:
    """``faiss.read_index``; ``ondisk``: the index's inverted lists are mapped read-only from the file of that name
    beside ``file`` (wherever the memory directory has moved since it was written), with no read-ahead threads:
    FAISS's default of 32 per search made single queries 4.5-35x slower on a cached file
    (``benchmarks/distributed_build.py`` compares both)."""
    if not ondisk:
        return faiss.read_index(str(file))
    with faiss_notes_silenced():
        index = faiss.read_index(str(file), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    if isinstance(lists, faiss.OnDiskInvertedLists):
        lists.prefetch_nthread = 0
    return index


def file_entry(path: Path) -> dict[str, Any]:
    """A manifest's record of one file: name, sha256 and size."""
    return {"name": path.name, "sha256": _sha256(path), "bytes": path.stat().st_size}


def vision_field(vision: dict[str, Any] | None) -> dict[str, Any]:
    """``{"vision": vision}`` for a compressor with a vision tower (``checkpoint.vision_spec``), nothing for a
    text-only one: manifests and build plans name a tower only where there is one, so a text-only memory's files
    are what they were before images, and a manifest without the key (text-only, or older) reads as None."""
    return {} if vision is None else {"vision": vision}


def manifest_record(
    fingerprint: str,
    key_dim: int,
    latent_dim: int,
    count: int,
    spec: IndexConfig,
    files: dict[str, dict],
    generation: int,
    built_from: dict[str, Any] | None = None,
    vision: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of a memory; ``built_from`` (shards and merged memories) says which build made it, ``vision``
    names the vision tower of the compressor that built it (``vision_field``)."""
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        **vision_field(vision),
        "key_dim": key_dim,
        "latent_dim": latent_dim,
        "count": count,
        "factory": spec.factory,
        "metric": METRIC,
        "nprobe": spec.nprobe,
        "ef_search": spec.ef_search,
        "latent_dtype": spec.latent_dtype,
        **spec.latent_codec_params(),
        "max_train_keys": spec.max_train_keys,
        "generation": generation,
        "files": files,
        **({"built_from": built_from} if built_from is not None else {}),
    }


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the memory at ``path``, checked for its format; IndexError_ naming the file otherwise."""
    manifest_path = Path(path) / MANIFEST_NAME
    if not Path(path).exists():
        raise IndexError_(f"no such memory directory: {path}")
    if not Path(path).is_dir():
        raise IndexError_(f"{path}: not a directory; a memory is a directory holding {MANIFEST_NAME}")
    if not manifest_path.is_file():
        raise IndexError_(
            f"{manifest_path}: missing; {path} is not a built memory (build one with build_index or "
            f"`latentlab index build`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexError_(f"{manifest_path}: not valid JSON ({err})") from None
    required = {
        "format_version": int,
        "fingerprint": str,
        "key_dim": int,
        "latent_dim": int,
        "count": int,
        "factory": str,
        "metric": str,
        "nprobe": int,
        "ef_search": int,
        "latent_dtype": str,
        "files": dict,
    }
    for key, kind in required.items():
        if not isinstance(manifest, dict) or not isinstance(manifest.get(key), kind):
            raise IndexError_(f"{manifest_path}: missing or malformed field '{key}' (expected {kind.__name__})")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexError_(
            f"{manifest_path}: format_version {manifest['format_version']} is not supported "
            f"(this latentlab reads version {FORMAT_VERSION}); rebuild the memory"
        )
    if manifest["metric"] != METRIC:
        raise IndexError_(f"{manifest_path}: metric '{manifest['metric']}' is not supported (expected '{METRIC}')")
    if not isinstance(manifest.get("vision"), (dict, type(None))):
        raise IndexError_(
            f"{manifest_path}: malformed field 'vision' (expected an object naming the compressor's vision tower, "
            f"or no such field for a text-only memory), got {json.dumps(manifest['vision'])[:80]}"
        )
    for role in _SUFFIX:
        entry = manifest["files"].get(role)
        if entry is None and role not in _REQUIRED_FILES:
            continue
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), t) for k, t in (("name", str), ("sha256", str), ("bytes", int))
        ):
            raise IndexError_(f"{manifest_path}: files.{role} must be an object with name, sha256 and bytes")
    return manifest
