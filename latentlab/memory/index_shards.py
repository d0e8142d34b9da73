"""Several saved memories searched as one: FAISS ``IndexShards`` over their indexes, hits mapped back to shard rows.

The shards of one memory (say, one per worker of a split corpus) share the compressor fingerprint, the key and
latent sizes and the latent codec; their item ids are unique across them. Read-only: change a shard with
``LatentIndex`` and open the set again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from latentlab.data.schema import Evidence
from latentlab.errors import IndexError_
from latentlab.memory.index import LatentIndex, faiss_search


def _layout(shard: LatentIndex) -> dict[str, Any]:
    """What every shard of one memory must have in common."""
    return {
        "compressor fingerprint": shard.fingerprint,
        "key_dim": shard.key_dim,
        "latent_dim": shard.latent_dim,
        "latent_dtype": shard.spec.latent_dtype,
        **shard.spec.latent_codec_params(),
    }


class ShardedLatentIndex:
    """``LatentIndex``'s search and lookup contract over several shards, in the order given.

    Position ``p`` (what ``search_positions`` returns) is row ``p - offset[s]`` of shard ``s``, where ``offset[s]``
    counts the items of the shards before it: exactly the labels of FAISS ``IndexShards`` with ``successive_ids``,
    which adds that offset to each shard's own labels (its rows) and merges the per-shard top-k by score. It runs
    the shards one after the other (``threaded=False``), so results do not depend on thread timing; equal scores
    in different shards come out in FAISS's fixed merge order.
    """

    def __init__(self, shards: Sequence[LatentIndex]):
        """Shards opened with ``LatentIndex.open`` (``ShardedLatentIndex.open`` does that); they must not change
        afterwards. IndexError_ naming the shard if one does not match the first, or an id is in two shards."""
        self.shards = list(shards)
        if not self.shards:
            raise IndexError_("a sharded memory needs at least one shard; got none")
        first = self.shards[0]
        expected = _layout(first)
        for shard in self.shards[1:]:
            found = _layout(shard)
            if found != expected:
                what = next(key for key in {**expected, **found} if found.get(key) != expected.get(key))
                raise IndexError_(
                    f"shard {shard.path} has {what} {found.get(what)!r}, but the first shard {first.path} has "
                    f"{expected.get(what)!r}; the shards of one memory must share compressor fingerprint, key_dim, "
                    f"latent_dim and latent codec"
                )
        self.fingerprint = first.fingerprint
        self.vision = first.vision  # the fingerprint depends on it: equal fingerprints, equal towers
        self.key_dim = first.key_dim
        self.latent_dim = first.latent_dim
        self._counts = [len(shard) for shard in self.shards]
        self._offsets = np.cumsum([0] + self._counts)  # [shards + 1]: shard s holds positions offset[s]..offset[s+1]
        shard_of: dict[str, int] = {}
        for number, shard in enumerate(self.shards):
            for item_id in shard.ids:
                if (other := shard_of.setdefault(item_id, number)) != number:
                    raise IndexError_(
                        f"id '{item_id}' is in shard {self.shards[other].path} and in shard {shard.path}; item ids "
                        f"must be unique across the shards of one memory (remove it from one of them)"
                    )
        self._shard_of = shard_of
        self._id_table = np.array([i for shard in self.shards for i in shard.ids] + [None], dtype=object)
        self._faiss = faiss.IndexShards(self.key_dim, False, True)  # threaded=False, successive_ids=True
        for shard in self.shards:
            if len(shard):  # an empty shard adds no label; an untrained (empty) IVF one could not be searched
                self._faiss.add_shard(shard.faiss_index)

    @classmethod
    def open(
        cls, paths: Iterable[str | os.PathLike], fingerprint: str | None = None, verify: bool = True
    ) -> ShardedLatentIndex:
        """Open the saved memories at ``paths`` as one; ``fingerprint`` (None: the first shard's) must be every
        shard's compressor, and ``verify`` checks every file's sha256 as ``LatentIndex.open`` does."""
        paths = [Path(path) for path in paths]
        if len(set(paths)) != len(paths):
            repeated = next(path for path in paths if paths.count(path) > 1)
            raise IndexError_(f"shard {repeated} is listed twice; list each shard of a memory once")
        shards = []
        for path in paths:
            shard = LatentIndex.open(path, fingerprint=fingerprint, verify=verify)
            fingerprint = fingerprint or shard.fingerprint
            shards.append(shard)
        return cls(shards)

    @property
    def paths(self) -> list[Path]:
        return [shard.path for shard in self.shards]

    # ------------------------------------------------------------------ search
    def search_positions(self, query_keys: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``query_keys [n, key_dim]`` -> ``(scores [n, k] float32, positions [n, k] int64)`` over all shards.

        -1 (score -inf) where the shards hold fewer than k items; ``locate`` maps a position to (shard, row).
        """
        if (counts := [len(shard) for shard in self.shards]) != self._counts:
            changed = next(shard.path for shard, a, b in zip(self.shards, counts, self._counts) if a != b)
            raise IndexError_(f"shard {changed} changed after it was opened as part of a sharded memory; open it again")
        return faiss_search(self._faiss, query_keys, k, self.key_dim, f"the sharded memory {self.paths}")

    def search(self, query_keys: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``query_keys [n, key_dim]`` -> ``(scores [n, k] float32, ids [n, k])``, best first, None past the end."""
        scores, positions = self.search_positions(query_keys, k)
        return scores, self._id_table[positions]

    def locate(self, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        """``positions`` (no -1) -> ``(shard numbers, rows in that shard)``, both of ``positions``' shape."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError_(
                f"positions must lie in [0, {len(self)}) for the sharded memory {self.paths}; got "
                f"{int(positions.min())}..{int(positions.max())} (-1 marks a missing search result)"
            )
        shard = np.searchsorted(self._offsets, positions, side="right") - 1
        return shard, positions - self._offsets[shard]

    # ------------------------------------------------------------------ lookup
    def latents_at(self, positions: Any) -> np.ndarray:
        """Latents ``positions.shape + (latent_dim,)`` float32, each decoded by its own shard's codec."""
        positions = np.asarray(positions, dtype=np.int64)
        shard, rows = self.locate(positions.reshape(-1))
        flat = np.empty((rows.size, self.latent_dim), np.float32)
        for number in np.unique(shard):
            mine = shard == number
            flat[mine] = self.shards[number].latents_at(rows[mine])
        return flat.reshape(*positions.shape, self.latent_dim)

    def _shard_numbers(self, ids: list[str]) -> np.ndarray:
        """The shard of each id, [len(ids)]; IndexError_ naming the first id no shard holds."""
        numbers = np.empty(len(ids), np.int64)
        for j, item_id in enumerate(ids):
            number = self._shard_of.get(item_id)
            if number is None:
                raise IndexError_(f"id {item_id!r} is not in any shard of the sharded memory {self.paths}")
            numbers[j] = number
        return numbers

    def positions_for(self, ids: Iterable[str]) -> np.ndarray:
        """Positions ``[len(ids)]`` int64 of the given ids (IndexError_ naming an unknown one)."""
        ids = list(ids)
        numbers = self._shard_numbers(ids)
        positions = np.empty(len(ids), np.int64)
        for number in np.unique(numbers):
            mine = np.flatnonzero(numbers == number)
            rows = self.shards[number].positions_for([ids[j] for j in mine])
            positions[mine] = self._offsets[number] + rows
        return positions

    def latents_for(self, ids: Iterable[str]) -> np.ndarray:
        """Latents ``[len(ids), latent_dim]`` float32 of the given ids, in that order, from whichever shard."""
        return self.latents_at(self.positions_for(ids))

    def items_for(self, ids: Iterable[str]) -> list[Evidence]:
        """The evidence records of the given ids, in that order."""
        ids = list(ids)
        numbers = self._shard_numbers(ids)
        items: list[Evidence | None] = [None] * len(ids)
        for number in np.unique(numbers):
            mine = np.flatnonzero(numbers == number)
            for j, item in zip(mine, self.shards[number].items_for([ids[j] for j in mine])):
                items[j] = item
        return items  # type: ignore[return-value]

    @property
    def ids(self) -> list[str]:
        """Item ids in position order: the first shard's rows, then the second's, ..."""
        return list(self._id_table[:-1])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._shard_of
