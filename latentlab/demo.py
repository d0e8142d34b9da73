"""The main job on the embedded default: get a trained compressor (shipped, or trained now), build a memory
over the synthetic corpus, answer the held-out questions, and compare with raw-text RAG and no retrieval.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from latentlab.configs import config_root, load_config, parse_overrides, project_root
from latentlab.memory.evaluate import EvalResult, evaluate

STAGES = (
    "paper_configs/tiny/latent_memory_text.yaml",  # end to end
    "paper_configs/tiny/latent_memory_text_projector.yaml",  # the projector alone, labelled slots
    "paper_configs/tiny/latent_memory_text_projector_mixed.yaml",  # the projector alone, both slot formats
    "paper_configs/tiny/latent_memory_text_reader.yaml",  # projector + the generator's reading adapter, global memory
)
"""The demo's compressor: each stage starts from the one before (`compressor.init_from`)."""
DEFAULT_CONFIG = STAGES[-1]


def ensure_compressor(config, previous=()) -> Path:
    """The compressor named by `eval.checkpoint`; trained with `fit` and exported there when missing.

    ``previous``: the configs of the stages before this one, in order; the last is the compressor this one
    starts from (`compressor.init_from`). Missing ones are made first, the same way, and init_from then
    points at the one made.
    """
    from latentlab.memory.checkpoint import WEIGHTS, export_compressor, load_model
    from latentlab.training import fit

    root = config_root(config)
    target = root / (config.eval.checkpoint or f"artifacts/{config.name}")
    if (target / WEIGHTS).exists():
        return target
    if previous:
        config.compressor.init_from = str(ensure_compressor(previous[-1], previous[:-1]))
    print(
        f"[demo] no trained compressor at {target}: training it now ({config.source_file}, "
        f"{config.trainer.max_steps} steps)"
    )
    result = fit(config)  # a fresh timestamped run directory: an earlier interrupted demo run is left alone
    export_compressor(load_model(result.run_dir), target, include_decoder=False, dtype=torch.float16)
    for name in ("metrics.json", "run.json"):
        shutil.copy(result.run_dir / name, target / name)
    return target


def run_demo(config_path: str | None = None, overrides: list[str] | None = None) -> EvalResult:
    root = project_root(Path(__file__).resolve().parent)
    path = Path(config_path) if config_path else root / DEFAULT_CONFIG
    parsed = parse_overrides(overrides or [])
    config = load_config(path, parsed)
    previous = [load_config(root / stage, parsed) for stage in STAGES[:-1]] if config_path is None else []
    checkpoint = ensure_compressor(config, previous)
    command = "latentlab demo" + (f" --config {config_path}" if config_path else "") + " ".join(overrides or [])
    # The demo regenerates its own results folder (the README's table) on every run: written whole, then swapped in.
    return evaluate(config, checkpoint=checkpoint, retrieval="global", command=command, overwrite=True)
