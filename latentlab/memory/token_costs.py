"""Token accounting per modality: what an evidence item costs the generator's context as one latent, as raw text and
as an image a VLM reads (patch tokens + title); the evaluation's ``token_costs`` table.

Per item the counts are ``prompting.item_costs``'s (measured with the generator's tokenizer); here they are averaged
per modality and set against the latent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latentlab.data.schema import Evidence
from latentlab.memory.prompting import ItemCost

LLAVA_15_PATCH_TOKENS = 576
"""LLaVA-1.5's tokens per image, the reference VLM: CLIP ViT-L/14 at 336 px gives (336 / 14)^2 = 576 patches, each
one generator token."""

MODALITIES = ("text", "image")


@dataclass(frozen=True)
class ModalityCost:
    """Mean generator context tokens per item of one modality, three ways, and their ratios to the latent."""

    modality: str
    items: int
    latent_tokens: float
    """One latent slot in the `paper` format: the `Latent context i: ` label and the latent."""
    raw_text_tokens: float | None
    """`Context i: ` and the item's text (an image's description), over the ``described_items``; None if none."""
    described_items: int
    """Items with a text (every text item; the images that carry a description)."""
    tower_patches: int | None
    """Patch tokens of the compressor's vision tower per image (images only; None without a tower)."""
    vlm_tower_tokens: float | None
    """`Context i: `, ``tower_patches`` patch tokens and the title: a VLM with this compressor's tower (images only)."""
    vlm_llava15_tokens: float | None
    """As ``vlm_tower_tokens`` with LLaVA-1.5's 576 patch tokens, for reference (images only)."""
    raw_text_per_latent: float | None
    vlm_tower_per_latent: float | None
    vlm_llava15_per_latent: float | None


def _mean(values: Sequence[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _per(tokens: float | None, latent: float) -> float | None:
    return None if tokens is None else tokens / latent


def modality_costs(
    tower: Sequence[ItemCost], reference: Sequence[ItemCost], tower_patches: int | None
) -> list[ModalityCost]:
    """One row per modality present (text, then image) from the same items' costs twice: ``tower`` measured with the
    compressor's ``tower_patches`` (None: no vision tower, no tower column) and ``reference`` with LLaVA-1.5's."""
    if [c.id for c in tower] != [c.id for c in reference]:
        raise ValueError("tower and reference costs must be of the same items, in the same order")
    rows = []
    for modality in MODALITIES:
        chosen = [i for i, cost in enumerate(tower) if cost.modality == modality]
        if not chosen:
            continue
        latent = float(np.mean([tower[i].latent for i in chosen]))
        raw = _mean([tower[i].raw_text for i in chosen])
        image = modality == "image"
        vlm_tower = _mean([tower[i].vlm_image for i in chosen]) if image and tower_patches is not None else None
        vlm_reference = _mean([reference[i].vlm_image for i in chosen]) if image else None
        rows.append(
            ModalityCost(
                modality=modality,
                items=len(chosen),
                latent_tokens=latent,
                raw_text_tokens=raw,
                described_items=sum(tower[i].raw_text is not None for i in chosen),
                tower_patches=tower_patches if image else None,
                vlm_tower_tokens=vlm_tower,
                vlm_llava15_tokens=vlm_reference,
                raw_text_per_latent=_per(raw, latent),
                vlm_tower_per_latent=_per(vlm_tower, latent),
                vlm_llava15_per_latent=_per(vlm_reference, latent),
            )
        )
    return rows


def token_costs(model, items: Sequence[Evidence]) -> list[ModalityCost]:
    """``modality_costs`` of ``items`` under ``model``'s generator tokenizer and vision tower (a LatentMemoryModel)."""
    vision = model.compressor.vision
    tower = model.item_costs(items)
    reference = model.item_costs(items, patch_tokens=LLAVA_15_PATCH_TOKENS)
    return modality_costs(tower, reference, vision.num_patches if vision is not None else None)


def token_costs_title(name: str, where: str, tower_patches: int | None) -> str:
    """The ``token_costs`` table's title: what each column counts, the two VLMs named with their patch counts."""
    tower = f"this compressor's tower ({tower_patches} patches)" if tower_patches is not None else "no tower here"
    return (
        f"{name}: generator context tokens per evidence item of {where}, by modality: one latent slot (`paper` "
        "format), the raw text (an image's description, over the described items), and a VLM reading the image "
        f"(its patch tokens + title) with {tower} and with LLaVA-1.5 (CLIP ViT-L/14-336, "
        f"{LLAVA_15_PATCH_TOKENS} patches) for reference; `*_per_latent`: ratio to the latent"
    )
