"""LatentIndex: a built latent memory on disk (FAISS index over retrieval keys, the latents, item metadata).

Also the streaming, resumable ``build_index`` that encodes a corpus in batches and assembles a memory from them
(defined in ``latentlab.memory.index_build``, re-exported here).

Layout of a memory directory::

    manifest.json       format version, compressor fingerprint (and its vision tower, if any), dims, count, factory,
                        metric, name/sha256/bytes per file
    index.<gen>.faiss   FAISS index over the L2-normalised d-dim keys (inner product); label = row of the stores
    keys.<gen>.npy      the keys themselves [count, key_dim] float32: the source the index is trained and rebuilt from
    latents.<gen>.npy   the H-dim latents as the codec ``latent_dtype`` stores them (see ``latent_store``): float32 or
                        float16 [count, latent_dim], or uint8 codes [count, code_width] for int8 and pq
    codec.<gen>.faiss   int8 and pq only: the codec's trained state (an empty FAISS IndexScalarQuantizer / IndexPQ)
    items.<gen>.jsonl   one Evidence record per row, in row order
    invlists.<gen>.ivfdata  merged memories only (``index_merge``): the IVF index's on-disk inverted lists, mapped
                        read-only when opened; such a memory is searched and read, not changed (add/remove refuse)

``manifest.json`` is the single commit point: ``save`` writes the data files under the next generation's names,
then replaces the manifest atomically, then deletes the files no manifest refers to. A crash at any moment leaves
either the previous memory or the new one, never a mix; opening a memory never writes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from latentlab import io as atomic_io
from latentlab.configs.memory import IndexConfig, training_keys_needed
from latentlab.data.schema import Evidence, iter_jsonl, to_record
from latentlab.errors import ConfigError, DataError, IndexError_
from latentlab.memory.index_manifest import (
    _SUFFIX,
    FORMAT_VERSION,
    MANIFEST_NAME,
    METRIC,
    _sha256,
    manifest_record,
    read_faiss,
    read_manifest,
)
from latentlab.memory.latent_store import LatentCodec, new_codec, saved_codec

BUILDING_DIR_NAME = ".building"
NORM_TOLERANCE = 1e-3
"""Keys must have |norm - 1| below this: the retrieval head L2-normalises them, so anything else is a bug upstream."""

_DATA_FILE = re.compile(r"^(index|keys|latents|items|codec|invlists)\.\d+\.(faiss|npy|jsonl|ivfdata)$")
_TEMP_FILE = re.compile(r"^\.(index|keys|latents|items|codec|manifest)\..*\.tmp$")


def _faiss_message(err: Exception) -> str:
    """FAISS errors carry a C++ file and function; keep the line that says what went wrong."""
    text = str(err).strip()
    return text.rsplit("Error: ", 1)[-1] if "Error: " in text else text or "unknown FAISS error"


def _new_faiss_index(key_dim: int, spec: IndexConfig) -> faiss.Index:
    try:
        index = faiss.index_factory(key_dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ConfigError(
            f"index.factory '{spec.factory}' cannot be built for key_dim {key_dim}: {_faiss_message(err)}"
        ) from None
    # The factory turns on polysemous training for PQ; it only serves Hamming pre-filtering, which is never enabled
    # here, and costs tens of seconds even on a few hundred keys.
    coder = faiss.downcast_index(faiss.try_extract_index_ivf(index) or index)
    if hasattr(coder, "do_polysemous_training"):
        coder.do_polysemous_training = False
    _apply_search_params(index, spec)
    return index


def _apply_search_params(index: faiss.Index, spec: IndexConfig) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = spec.nprobe
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = spec.ef_search
    base = faiss.downcast_index(index)
    while isinstance(base, faiss.IndexPreTransform):
        base = faiss.downcast_index(base.index)
    if isinstance(base, faiss.IndexHNSW):
        base.hnsw.efSearch = spec.ef_search


def _fsync_dir(path: Path) -> None:
    """fsync a directory, so the renames into it (each file's own data is fsynced by ``latentlab.io``) are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    """The manifest's (and build progress') writer: ``latentlab.io.write_json``, kept as a name tests can patch."""
    atomic_io.write_json(path, obj)


def _write_faiss(path: Path, index: faiss.Index) -> None:
    """A FAISS index through ``latentlab.io``, streamed into the temp file's handle (no in-memory copy)."""
    atomic_io.write_atomic(path, lambda handle: faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write)))


def _duplicate_ids(ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """``{id: (first position, second position)}`` for each repeated id."""
    first: dict[str, int] = {}
    repeats: dict[str, tuple[int, int]] = {}
    for position, item_id in enumerate(ids):
        if item_id in first:
            repeats.setdefault(item_id, (first[item_id], position))
        else:
            first[item_id] = position
    return repeats


def _as_matrix(values: Any, rows: int, dim: int, what: str, where: str) -> np.ndarray:
    """``values`` as a C-contiguous float32 [rows, dim] matrix, or an IndexError_ naming both shapes and ``where``."""
    matrix = np.asarray(values)
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise IndexError_(
            f"{what} have shape {tuple(matrix.shape)}, i.e. dimension {matrix.shape[-1] if matrix.ndim else '?'}, "
            f"but the memory at {where} expects dimension {dim} (an array of shape [n, {dim}])"
        )
    if matrix.shape[0] != rows:
        raise IndexError_(f"{what} have {matrix.shape[0]} rows but there are {rows} items (memory at {where})")
    return np.ascontiguousarray(matrix, dtype=np.float32)


def _check_vectors(items: Sequence[Evidence], keys: np.ndarray, latents: np.ndarray, latent_dtype: str) -> None:
    """Keys finite and unit-norm, latents finite in their storage dtype; DataError naming the first bad item."""
    stored_as = latent_dtype if latent_dtype in ("float32", "float16") else "float32"  # what int8 / pq encode
    for what, matrix in (("key", keys), (f"latent (as {stored_as})", latents.astype(stored_as, copy=False))):
        finite = np.isfinite(matrix).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise DataError(f"item '{items[bad].id}' has a non-finite {what}: NaN or inf")
    norms = np.linalg.norm(keys, axis=1)
    off = np.abs(norms - 1.0) > NORM_TOLERANCE
    if off.any():
        bad = int(np.flatnonzero(off)[0])
        raise DataError(
            f"item '{items[bad].id}' has a key of L2 norm {norms[bad]:.6f}; keys must be L2-normalised "
            f"(|norm - 1| <= {NORM_TOLERANCE}), e.g. keys / np.linalg.norm(keys, axis=1, keepdims=True)"
        )


def faiss_search(index: faiss.Index, query_keys: Any, k: int, key_dim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` after checking ``query_keys [n, key_dim]`` and ``k`` (IndexError_ naming ``what``):
    ``(scores [n, k] float32, labels [n, k] int64)``, label -1 and score -inf where there is no k-th result."""
    queries = np.asarray(query_keys)
    if queries.ndim != 2 or queries.shape[1] != key_dim:
        raise IndexError_(
            f"query keys have shape {tuple(queries.shape)}, i.e. dimension "
            f"{queries.shape[-1] if queries.ndim else '?'}, but {what} has key_dim "
            f"{key_dim} (expected an array of shape [n, {key_dim}]; use q[None] for one query)"
        )
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise IndexError_(f"k must be a positive integer, got {k!r}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if index.ntotal == 0:  # an untrained (hence empty) IVF index cannot even be searched
        n = queries.shape[0]
        return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    scores, labels = index.search(queries, int(k))
    scores[labels < 0] = -np.inf
    return scores, labels


def _training_sample(rows: np.ndarray, limit: int | None) -> np.ndarray:
    """At most ``limit`` of ``rows`` (all when None), drawn with a fixed seed and kept in row order."""
    if limit is None or len(rows) <= limit:
        return rows
    return rows[np.sort(np.random.default_rng(0).choice(len(rows), limit, replace=False))]


def _parse_item(obj: Any, where: str, base_dir: Path | None) -> Evidence:
    # Not schema.parse_evidence: a built memory must open even when an evidence image has since moved.
    if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
        raise IndexError_(f"{where}: expected an item object with a string 'id', got {json.dumps(obj)[:80]}")
    return Evidence(id=obj["id"], text=obj.get("text"), image=obj.get("image"), title=obj.get("title"))


class LatentIndex:
    """A latent memory: FAISS search over keys, plus the latents and items of each result, saved atomically.

    Row ``i`` of the keys, latents and items is FAISS label ``i``; ``search_positions`` returns those rows.
    Not safe for concurrent writers: one process saves a memory at a time.
    """

    def __init__(
        self,
        path: Path,
        fingerprint: str,
        key_dim: int,
        latent_dim: int,
        spec: IndexConfig,
        faiss_index: faiss.Index,
        codec: LatentCodec,
        items: list[Evidence],
        keys: np.ndarray,
        latent_codes: np.ndarray,
        generation: int = 0,
        invlists: dict[str, Any] | None = None,
        built_from: dict[str, Any] | None = None,
        vision: dict[str, Any] | None = None,
    ) -> None:
        """Use ``LatentIndex.create`` or ``LatentIndex.open`` (``index_merge`` makes shards with a trained index)."""
        self.path = path
        self.fingerprint = fingerprint
        # The vision tower of the compressor that built it (checkpoint.vision_spec); None: a text-only compressor,
        # or a manifest older than the field (the fingerprint still tells compressors apart).
        self.vision = vision
        self.key_dim = key_dim
        self.latent_dim = latent_dim
        self.spec = spec
        self._faiss = faiss_index
        self._codec = codec
        self._generation = generation
        self._dirty = generation == 0
        self._invlists = invlists  # the manifest entry of on-disk inverted lists (a merged memory), else None
        self._built_from = built_from
        self._set_rows(items, keys, latent_codes)

    def _set_rows(self, items: list[Evidence], keys: np.ndarray, latent_codes: np.ndarray) -> None:
        self._items = items
        self._keys = keys
        self._latent_codes = latent_codes  # [count, codec.code_width]; decoded per request
        self._row_of = {item.id: row for row, item in enumerate(items)}
        # Indexing this with FAISS labels maps -1 (no result) to the trailing None.
        self._id_table = np.array([item.id for item in items] + [None], dtype=object)

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        key_dim: int,
        latent_dim: int,
        fingerprint: str,
        spec: IndexConfig | None = None,
        vision: dict[str, Any] | None = None,
    ) -> LatentIndex:
        """An empty memory bound to ``path``; nothing is written until ``save``. Refuses a directory holding one.
        ``vision``: the compressor's vision tower (``checkpoint.vision_spec``), recorded in the manifest."""
        path = Path(path)
        spec = spec or IndexConfig()
        for name, value in (("key_dim", key_dim), ("latent_dim", latent_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ConfigError(f"the compressor fingerprint must be a non-empty string, got {fingerprint!r}")
        if not isinstance(vision, (dict, type(None))):
            raise ConfigError(f"vision must be the compressor's vision spec (a dict) or None, got {vision!r}")
        if (path / MANIFEST_NAME).exists():
            raise IndexError_(
                f"{path} already holds a built memory ({MANIFEST_NAME}); open it with LatentIndex.open, "
                f"or choose another directory"
            )
        codec = new_codec(spec, latent_dim)
        return cls(
            path,
            fingerprint,
            key_dim,
            latent_dim,
            spec,
            _new_faiss_index(key_dim, spec),
            codec,
            [],
            np.zeros((0, key_dim), np.float32),
            np.zeros((0, codec.code_width), codec.code_dtype),
            vision=vision,
        )

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: str | None = None, verify: bool = True) -> LatentIndex:
        """Open a saved memory read-only on disk (nothing is ever written by opening or by its errors).

        ``fingerprint``: the compressor this memory must have been built with (None: accept any).
        ``verify``: check every file's sha256 against the manifest (sizes are always checked).
        """
        path = Path(path)
        manifest = read_manifest(path)
        manifest_path = path / MANIFEST_NAME
        if fingerprint is not None and manifest["fingerprint"] != fingerprint:
            raise IndexError_(
                f"{path}: compressor fingerprint mismatch: expected '{fingerprint}', found "
                f"'{manifest['fingerprint']}' in {manifest_path}; rebuild the memory with this compressor, or open "
                f"it with the compressor that built it"
            )
        files: dict[str, Path] = {}
        for role in [role for role in _SUFFIX if role in manifest["files"]]:
            entry = manifest["files"][role]
            file = path / entry["name"]
            if not file.is_file():
                raise IndexError_(f"{file}: missing ({manifest_path} lists it as the memory's {role} file)")
            size = file.stat().st_size
            if size != entry["bytes"]:
                raise IndexError_(
                    f"{file}: {size} bytes, but {manifest_path} records {entry['bytes']} (truncated or overwritten)"
                )
            if verify and _sha256(file) != entry["sha256"]:
                raise IndexError_(f"{file}: sha256 differs from the one recorded in {manifest_path} (file corrupted)")
            files[role] = file
        try:
            spec = IndexConfig(
                factory=manifest["factory"],
                nprobe=manifest["nprobe"],
                ef_search=manifest["ef_search"],
                latent_dtype=manifest["latent_dtype"],
                latent_pq_m=manifest.get("latent_pq_m"),
                latent_pq_nbits=manifest.get("latent_pq_nbits", 8),  # absent before latents could be quantised
                max_train_keys=manifest.get("max_train_keys"),
            )
        except ConfigError as err:  # e.g. a latent codec this latentlab does not know
            raise IndexError_(f"{manifest_path}: {err}; open it with the latentlab that built it, or rebuild") from None
        read = {}
        for role in [role for role in ("index", "codec") if role in files]:
            try:  # a merged memory's inverted lists are mapped read-only from its invlists file
                read[role] = read_faiss(files[role], ondisk=role == "index" and "invlists" in files)
            except RuntimeError as err:
                raise IndexError_(f"{files[role]}: not a readable FAISS {role} file ({_faiss_message(err)})") from None
        faiss_index = read["index"]
        codec = saved_codec(spec, manifest, read.get("codec"), files.get("codec"), manifest_path)
        arrays = {}
        for role in ("keys", "latents"):
            try:
                arrays[role] = np.load(files[role], mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as err:
                raise IndexError_(f"{files[role]}: not a readable .npy array ({err})") from None
        try:
            items = list(iter_jsonl(files["items"], _parse_item))
        except DataError as err:
            raise IndexError_(str(err)) from None
        count, key_dim, latent_dim = manifest["count"], manifest["key_dim"], manifest["latent_dim"]
        checks = [
            (files["index"], "vectors", faiss_index.ntotal, count),
            (files["index"], "dimension", faiss_index.d, key_dim),
            (files["keys"], "shape", arrays["keys"].shape, (count, key_dim)),
            (files["latents"], "shape", arrays["latents"].shape, (count, codec.code_width)),
            (files["latents"], "dtype", str(arrays["latents"].dtype), str(codec.code_dtype)),
            (files["items"], "items", len(items), count),
        ]
        for file, what, found, expected in checks:
            if found != expected:
                raise IndexError_(f"{file}: {what} {found}, but {manifest_path} says {expected}")
        if repeats := _duplicate_ids(item.id for item in items):
            raise IndexError_(f"{files['items']}: duplicate id '{next(iter(repeats))}'")
        _apply_search_params(faiss_index, spec)
        memory = cls(
            path,
            manifest["fingerprint"],
            key_dim,
            latent_dim,
            spec,
            faiss_index,
            codec,
            items,
            arrays["keys"],
            arrays["latents"],
            generation=manifest.get("generation", 1),
            invlists=manifest["files"].get("invlists"),
            built_from=manifest.get("built_from"),
            vision=manifest.get("vision"),
        )
        memory._dirty = False
        return memory

    # ------------------------------------------------------------------ mutation
    def add(self, items: Sequence[Evidence], keys: Any, latents: Any) -> None:
        """Append items with their keys ``[n, key_dim]`` (L2-normalised) and latents ``[n, latent_dim]``.

        Everything is checked before anything changes: a duplicate id (within ``items`` or with the memory) raises
        DataError naming it, a wrong dimension raises IndexError_ naming both; the memory is then left as it was.
        An untrained index (IVF, PQ) is trained here on all stored keys plus the new ones, an untrained latent codec
        (int8, pq) on the new latents (nothing is stored before the first add); later adds encode with it.
        """
        self._refuse_on_disk("add to")
        items = list(items)
        where = str(self.path)
        keys = _as_matrix(keys, len(items), self.key_dim, "keys", where)
        latents = _as_matrix(latents, len(items), self.latent_dim, "latents", where)
        if not items:
            return
        if repeats := _duplicate_ids(item.id for item in items):
            item_id, (first, second) = next(iter(repeats.items()))
            raise DataError(f"duplicate id '{item_id}' in the items to add (positions {first} and {second})")
        if clash := next((item.id for item in items if item.id in self._row_of), None):
            raise DataError(f"id '{clash}' is already in the memory at {where}; remove it first to replace it")
        _check_vectors(items, keys, latents, self.spec.latent_dtype)
        codec = self._codec if self._codec.is_trained else self._trained_codec(latents)
        all_keys = np.concatenate([self._keys, keys])
        all_codes = np.concatenate([self._latent_codes, codec.encode(latents)])
        if self._faiss.is_trained:
            self._faiss.add(keys)
        else:
            self._faiss = self._trained_index(all_keys)
            self._faiss.add(all_keys)
        self._codec = codec
        self._set_rows(self._items + items, all_keys, all_codes)
        self._dirty = True

    def _trained_codec(self, latents: np.ndarray) -> LatentCodec:
        """The memory's latent codec trained on ``latents`` (a seeded sample of ``max_train_keys`` for pq)."""
        if self._codec.trains_on_sample:  # max_train_keys >= 2**nbits: a sample is never too small to train
            latents = _training_sample(latents, self.spec.max_train_keys)
        try:
            return self._codec.trained(latents, where=str(self.path))
        except RuntimeError as err:
            raise IndexError_(f"{self.path}: training {self._codec.describe()} failed: {_faiss_message(err)}") from None

    def _trained_index(self, keys: np.ndarray) -> faiss.Index:
        needed = training_keys_needed(self.spec.factory)
        if len(keys) < needed:
            raise IndexError_(
                f"{self.path}: index '{self.spec.factory}' needs at least {needed} keys to train, but only "
                f"{len(keys)} are available; add more items in the first add, or use a smaller nlist "
                f"(about count / 39, e.g. 'IVF{max(1, len(keys) // 39)},Flat') or 'Flat'"
            )
        index = _new_faiss_index(self.key_dim, self.spec)
        try:
            index.train(_training_sample(keys, self.spec.max_train_keys))
        except RuntimeError as err:
            raise IndexError_(f"{self.path}: training '{self.spec.factory}' failed: {_faiss_message(err)}") from None
        return index

    def remove(self, ids: Iterable[str]) -> None:
        """Remove items by id; an unknown id raises IndexError_ naming it and nothing is removed.

        FAISS labels must stay equal to store rows, which IVF's remove_ids would not renumber and HNSW cannot
        do at all, so the index is reset (keeping IVF centroids and PQ codebooks) and re-filled with the kept keys.
        """
        self._refuse_on_disk("remove from")
        ids = list(dict.fromkeys(ids))
        unknown = [item_id for item_id in ids if item_id not in self._row_of]
        if unknown:
            raise IndexError_(
                f"cannot remove id '{unknown[0]}': not in the memory at {self.path} "
                f"({len(unknown)} of {len(ids)} ids unknown); nothing was removed"
            )
        if not ids:
            return
        keep = np.ones(len(self._items), dtype=bool)
        keep[[self._row_of[item_id] for item_id in ids]] = False
        kept_keys = np.ascontiguousarray(self._keys[keep])
        kept_codes = np.ascontiguousarray(self._latent_codes[keep])  # codes stay as they are: no re-encoding
        kept_items = [item for item, kept in zip(self._items, keep) if kept]
        self._faiss.reset()
        if len(kept_keys):
            self._faiss.add(kept_keys)
        self._set_rows(kept_items, kept_keys, kept_codes)
        self._dirty = True

    def _refuse_on_disk(self, action: str) -> None:
        if self._invlists is not None:
            raise IndexError_(
                f"cannot {action} the memory at {self.path}: it was merged from shards into read-only on-disk "
                f"inverted lists ({self._invlists['name']}); change the corpus and build it again (index prepare, "
                "build-shard, merge), or keep the change in a separate memory searched beside it"
            )

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change IVF ``nprobe`` / HNSW ``ef_search``; recorded in the manifest at the next ``save``."""
        self.spec = replace(
            self.spec,
            nprobe=self.spec.nprobe if nprobe is None else nprobe,
            ef_search=self.spec.ef_search if ef_search is None else ef_search,
        )
        _apply_search_params(self._faiss, self.spec)
        self._dirty = True

    # ------------------------------------------------------------------ search and lookup
    @property
    def faiss_index(self) -> faiss.Index:
        """The FAISS index over the keys (label = row); for searching only: ``add``/``remove`` may replace it."""
        return self._faiss

    def search_positions(self, query_keys: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's contract: ``query_keys [n, key_dim]`` -> ``(scores [n, k] float32, positions [n, k] int64)``.

        Positions are rows of the stores, -1 where there is no k-th result; their score is then -inf.
        """
        return faiss_search(self._faiss, query_keys, k, self.key_dim, f"the memory at {self.path}")

    def search(self, query_keys: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``query_keys [n, key_dim]`` -> ``(scores [n, k] float32, ids [n, k])``, best first.

        ``ids`` is an object array of item ids, ``None`` where FAISS has no k-th result (label -1).
        """
        scores, positions = self.search_positions(query_keys, k)
        return scores, self._id_table[positions]

    def positions_for(self, ids: Iterable[str]) -> np.ndarray:
        """Rows ``[len(ids)]`` int64 (what ``search_positions`` returns) of the given ids; IndexError_ if unknown."""
        rows = []
        for item_id in ids:
            row = self._row_of.get(item_id)  # type: ignore[arg-type]
            if row is None:
                raise IndexError_(f"id {item_id!r} is not in the memory at {self.path}")
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    def latents_for(self, ids: Iterable[str]) -> np.ndarray:
        """Latents ``[len(ids), latent_dim]`` float32 of the given ids, in that order (decoded from their codes)."""
        return self._codec.decode(self._latent_codes[self.positions_for(ids)])

    def latents_at(self, positions: Any) -> np.ndarray:
        """Latents ``positions.shape + (latent_dim,)`` float32 of rows from ``search_positions`` (no -1 allowed)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self._items)):
            raise IndexError_(
                f"positions must lie in [0, {len(self._items)}) for the memory at {self.path}; got "
                f"{int(positions.min())}..{int(positions.max())} (-1 marks a missing search result)"
            )
        flat = self._codec.decode(self._latent_codes[positions.reshape(-1)])
        return flat.reshape(*positions.shape, self.latent_dim)

    def items_for(self, ids: Iterable[str]) -> list[Evidence]:
        """The evidence records of the given ids, in that order."""
        return [self._items[row] for row in self.positions_for(ids)]

    @property
    def ids(self) -> list[str]:
        """Item ids in row order."""
        return [item.id for item in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        """Write the memory atomically: new data files, then the manifest (the commit point), then cleanup."""
        if not self._dirty:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        generation = self._generation + 1
        writers: dict[str, Callable[[Path], object]] = {
            "index": lambda file: _write_faiss(file, self._faiss),
            "keys": lambda file: atomic_io.write_npy(file, self._keys),
            "latents": lambda file: atomic_io.write_npy(file, self._latent_codes),
            "items": lambda file: atomic_io.write_jsonl(file, (to_record(item) for item in self._items)),
        }
        if (state := self._codec.state()) is not None:
            writers["codec"] = lambda file: _write_faiss(file, state)
        files = {}
        for role, write in writers.items():
            file = self.path / f"{role}.{generation}{_SUFFIX[role]}"
            write(file)
            files[role] = {"name": file.name, "sha256": _sha256(file), "bytes": file.stat().st_size}
        if self._invlists is not None:  # the index file written above still reads them
            files["invlists"] = self._invlists
        _fsync_dir(self.path)
        _write_json(self.path / MANIFEST_NAME, self._manifest(files, generation))
        _fsync_dir(self.path)
        self._generation = generation
        self._dirty = False
        referenced = {entry["name"] for entry in files.values()}
        for stale in self.path.iterdir():
            if (_DATA_FILE.match(stale.name) and stale.name not in referenced) or _TEMP_FILE.match(stale.name):
                stale.unlink(missing_ok=True)

    def _manifest(self, files: dict[str, dict], generation: int) -> dict[str, Any]:
        return manifest_record(
            self.fingerprint,
            self.key_dim,
            self.latent_dim,
            len(self._items),
            self.spec,
            files,
            generation,
            self._built_from,
            self.vision,
        )

    def info(self) -> dict[str, Any]:
        """What ``latentlab index info`` prints: manifest fields, sizes on disk and bytes per item."""
        manifest = read_manifest(self.path) if not self._dirty else None
        files = manifest["files"] if manifest else {}
        total = sum(entry["bytes"] for entry in files.values())
        return {
            "path": str(self.path),
            "saved": manifest is not None,
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "vision": self.vision,
            "key_dim": self.key_dim,
            "latent_dim": self.latent_dim,
            "count": len(self._items),
            **self.spec.searched_as(),
            "metric": METRIC,
            "is_trained": bool(self._faiss.is_trained),
            "files": {role: {"name": e["name"], "bytes": e["bytes"]} for role, e in files.items()},
            "bytes_total": total,
            "bytes_per_item": total / len(self._items) if manifest and self._items else None,
        }


# ---------------------------------------------------------------------- resumable build
def __getattr__(name: str) -> Any:
    """``build_index``, ``BuildInterrupted`` and ``Encoder`` live in ``index_build``, which imports this module;
    re-exported lazily here so that ``from latentlab.memory.index import build_index`` keeps working whichever of
    the two modules is imported first."""
    if name in ("build_index", "BuildInterrupted", "Encoder"):
        from latentlab.memory import index_build

        return getattr(index_build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
