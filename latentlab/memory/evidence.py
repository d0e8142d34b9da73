"""Evidence encoders: the seam in front of the compressor. Items in, prefix embeddings [N, T, H] and mask out;
the compressor then appends its memory slot and takes the latent there.

Text items go through the compressor's own token embeddings; image items through its vision tower and projector
(``latentlab.memory.vision``), then their title's tokens. A compressor without a vision tower refuses image items
by id instead of compressing the string of their file name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from latentlab.backbones import input_embeddings
from latentlab.data.schema import Evidence
from latentlab.errors import DataError
from latentlab.memory.vision import image_prefix
from latentlab.registry import Registry


class EvidenceEncoder(Protocol):
    """Turns items of one kind into compressor-input prefix embeddings."""

    def __call__(self, compressor, items: Sequence[Evidence]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (embeds [N, T, H] right-padded, mask [N, T] long)."""
        ...


def text_prefix(compressor, items: Sequence[Evidence]) -> tuple[torch.Tensor, torch.Tensor]:
    """Title and text tokens (``Evidence.display_text``, cut to ``compressor.max_evidence_tokens``) as embeddings."""
    ids, mask = compressor.tokenize([e.display_text() for e in items], compressor.config.max_evidence_tokens)
    return input_embeddings(compressor.lm)(ids), mask


ENCODERS: Registry[EvidenceEncoder] = Registry("evidence encoder")
ENCODERS.register("text", text_prefix)
ENCODERS.register("image", image_prefix)


def kind_of(item: Evidence) -> str:
    """Which encoder an item needs (its modality): `image` when it has an image, else `text`."""
    return "image" if item.image else "text"


def rows_by_kind(items: Sequence[Evidence]) -> dict[str, list[int]]:
    """Row indices of ``items`` per kind, kinds in first-seen order: a mixed batch is encoded one kind at a time."""
    rows: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        rows.setdefault(kind_of(item), []).append(i)
    return rows


def encode_prefix(compressor, items: Sequence[Evidence]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix embeddings and mask of ``items`` (all of one kind); an item no encoder handles is a DataError."""
    kinds = {kind_of(e) for e in items}
    for kind in kinds:
        if kind not in ENCODERS:
            first = next(e for e in items if kind_of(e) == kind)
            raise DataError(
                f"evidence '{first.id}': {kind} evidence has no encoder yet (known: {', '.join(ENCODERS.names())}); "
                "the compressor would otherwise encode its file name as text"
            )
    if len(kinds) > 1:
        raise DataError(f"one batch mixes {sorted(kinds)} evidence; encode each kind in its own batch")
    return ENCODERS.get(kinds.pop() if kinds else "text")(compressor, items)
