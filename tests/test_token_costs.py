"""Token accounting per modality (``latentlab.memory.token_costs``): hand-made item costs averaged by hand, and a
text-only evaluation that writes no token-cost table (the evaluation with images is in ``test_image_evidence``)."""

import json

import pytest

from latentlab.configs import load_config
from latentlab.memory.evaluate import evaluate
from latentlab.memory.prompting import ItemCost
from latentlab.memory.token_costs import LLAVA_15_PATCH_TOKENS, ModalityCost, modality_costs
from tests.conftest import REPO

TEXT_YAML = REPO / "paper_configs/tiny/latent_memory_text.yaml"


def _costs(patches: int) -> list[ItemCost]:
    """Two texts, a described image and an undescribed one: latent slot 5, titles of 3 and 7 tokens."""
    return [
        ItemCost("t1", "text", latent=5, raw_text=20, vlm_image=None),
        ItemCost("i1", "image", latent=5, raw_text=40, vlm_image=3 + patches),
        ItemCost("t2", "text", latent=5, raw_text=31, vlm_image=None),
        ItemCost("i2", "image", latent=5, raw_text=None, vlm_image=7 + patches),
    ]


def test_modality_costs_average_each_modality_against_one_latent():
    rows = modality_costs(_costs(16), _costs(LLAVA_15_PATCH_TOKENS), tower_patches=16)
    text = ModalityCost("text", 2, 5.0, 25.5, 2, None, None, None, 25.5 / 5, None, None)
    # Images: the description of i1 alone (i2 has none); the VLM reads (3 + 16) and (7 + 16) tokens, or 576 patches.
    image = ModalityCost("image", 2, 5.0, 40.0, 1, 16, 21.0, 581.0, 8.0, 21.0 / 5, 581.0 / 5)
    assert rows == [text, image]
    assert LLAVA_15_PATCH_TOKENS == 576


def test_modality_costs_without_a_tower_keep_the_llava_reference_and_skip_absent_modalities():
    images = [c for c in _costs(0) if c.modality == "image"]
    reference = [c for c in _costs(LLAVA_15_PATCH_TOKENS) if c.modality == "image"]
    (row,) = modality_costs(images, reference, tower_patches=None)
    assert (row.modality, row.tower_patches, row.vlm_tower_tokens, row.vlm_tower_per_latent) == (
        "image",
        None,
        None,
        None,
    )
    assert row.vlm_llava15_tokens == pytest.approx(581.0, abs=1e-12, rel=0)
    assert modality_costs([], [], 16) == []
    with pytest.raises(ValueError, match="same items"):
        modality_costs(images, reference[::-1], 16)


def test_a_text_only_evaluation_writes_no_token_costs(tiny_overrides, tmp_path):
    config = load_config(TEXT_YAML, {**tiny_overrides, "eval.limit": 2, "eval.checkpoint": None})
    for retrieval in ("pool", "global"):
        out = tmp_path / retrieval
        result = evaluate(config, None, out, methods=["no_retrieval", "bm25"], retrieval=retrieval)
        assert result.token_costs == []
        assert not list(out.glob("token_costs.*"))
        assert "token_costs" not in json.loads((out / "summary.json").read_text())
