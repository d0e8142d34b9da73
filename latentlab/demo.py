"""The main job on the embedded default: get a trained compressor (shipped, or trained now), build a memory
over the synthetic corpus, answer the held-out questions, and compare with raw-text RAG and no retrieval.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from latentlab.config import config_root, load_config, parse_overrides, project_root
from latentlab.eval.evaluate import EvalResult, evaluate

FIRST_STAGE = "paper_configs/tiny/latent_memory_text.yaml"
DEFAULT_CONFIG = "paper_configs/tiny/latent_memory_text_projector.yaml"
"""The demo's compressor comes from two stages: end to end (FIRST_STAGE), then the projector alone."""


def ensure_compressor(config, first_stage=None) -> Path:
    """The compressor named by `eval.checkpoint`; trained with `fit` and exported there when missing.

    ``first_stage``: the config whose compressor this one starts from (`compressor.init_from`); it is made
    first, the same way, when missing, and init_from then points at it.
    """
    from latentlab.memory.pipeline import WEIGHTS, export_compressor, load_trained
    from latentlab.training import fit

    root = config_root(config)
    target = root / (config.eval.checkpoint or f"artifacts/{config.name}")
    if (target / WEIGHTS).exists():
        return target
    if first_stage is not None:
        config.compressor.init_from = str(ensure_compressor(first_stage))
    print(
        f"[demo] no trained compressor at {target}: training it now ({config.source_file}, "
        f"{config.trainer.max_steps} steps)"
    )
    result = fit(config)  # a fresh timestamped run directory: an earlier interrupted demo run is left alone
    export_compressor(load_trained(result.run_dir), target, include_decoder=False, dtype=torch.float16)
    for name in ("metrics.json", "run.json"):
        shutil.copy(result.run_dir / name, target / name)
    return target


def run_demo(config_path: str | None = None, overrides: list[str] | None = None) -> EvalResult:
    root = project_root(Path(__file__).resolve().parent)
    path = Path(config_path) if config_path else root / DEFAULT_CONFIG
    parsed = parse_overrides(overrides or [])
    config = load_config(path, parsed)
    first = load_config(root / FIRST_STAGE, parsed) if config_path is None and config.compressor.init_from else None
    checkpoint = ensure_compressor(config, first_stage=first)
    command = "latentlab demo" + (f" --config {config_path}" if config_path else "") + " ".join(overrides or [])
    return evaluate(config, checkpoint=checkpoint, retrieval="global", command=command)
