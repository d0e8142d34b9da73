"""Shared fixtures: tiny random models (milliseconds) and paths to the optional shared datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LATENTLAB_SHARED_DATA", REPO.parent / "shared" / "data"))
"""The real datasets (../shared/data beside the clone, or $LATENTLAB_SHARED_DATA)."""

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_LLAMA = {"tiny": {"arch": "llama", "layers": 2, "hidden": 64, "heads": 4}}
TINY_VIT = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
}
"""A tiny random open_clip ViT (custom model config): 16 patch tokens of width 32, pooled embedding of 24."""


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or a visible skip when this machine lacks it."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared dataset not found at {path}")
    return path


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> dict:
    """Overrides that turn the tiny latent-memory config into a seconds-long run on random 2-layer models."""
    return tiny_memory_overrides(tmp_path)


def tiny_memory_overrides(tmp_path: Path) -> dict:
    """``tiny_overrides`` as a plain function (for tests that build on it)."""
    return {
        "compressor.backbone.model": TINY_LLAMA,
        "generator.backbone.model": TINY_LLAMA,
        "compressor.key_dim": 32,
        "data.synthetic.num_people": 30,
        "data.batch_size": 2,
        "data.limit_val": 4,
        "trainer.max_steps": 4,
        "trainer.progress_bar": False,
        "trainer.checkpoint_every_n_steps": 2,
        "output_dir": str(tmp_path / "runs"),
    }
