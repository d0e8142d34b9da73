"""Run an experiment with the Lightning Trainer and record it beside its checkpoints.

Each run directory holds the resolved config, git commit, seed, wall time and metrics (before and after
training, on the same validation batches), plus CSV/TensorBoard logs and ``last.ckpt`` for resuming.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latentlab.configs import ExperimentConfig, config_root, dump_yaml
from latentlab.errors import ConfigError


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float) -> Callable[[int], float]:
    """LR multiplier: linear 0->1 over ``warmup_steps``, then cosine 1->``floor`` at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class Task:
    """What `fit` trains: a LightningDataModule, a LightningModule, and task-specific Trainer settings."""

    datamodule: Any
    module: Any
    callbacks: list = field(default_factory=list)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, str] = {
    # task name -> "module:function" returning a Task for an ExperimentConfig (imported lazily: heavy deps)
    "latent_memory": "latentlab.memory.module:build_task",
    "latent_cot": "latentlab.reasoning.task:build_task",
}


def build_task(config: ExperimentConfig) -> Task:
    import importlib

    if config.task not in TASKS:
        raise ConfigError(f"{config.source_file}: key 'task': unknown task {config.task!r} (known: {sorted(TASKS)})")
    module_name, function = TASKS[config.task].split(":")
    return getattr(importlib.import_module(module_name), function)(config)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def _scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for item in results:
        merged.update({k: float(v) for k, v in item.items()})
    return merged


def new_run_dir(config: ExperimentConfig, run_name: str | None = None) -> Path:
    """``output_dir/name/run_name`` (a UTC timestamp when unnamed); an existing one is refused.

    A second fit into a used directory would mix its checkpoints, logs and metrics with the first run's.
    """
    output_root = Path(config.output_dir)
    if not output_root.is_absolute():
        output_root = config_root(config) / output_root
    run_dir = output_root / config.name / (run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(
            f"run directory {run_dir} already holds a run; pass another run name, or --resume {run_dir} to continue it"
        )
    return run_dir


def fit(
    config: ExperimentConfig,
    run_name: str | None = None,
    resume: str | Path | None = None,
    callbacks: list | None = None,
) -> RunResult:
    """Train the configured experiment; returns the run directory and its metrics.

    ``resume`` is a run directory: training continues from its ``last.ckpt`` (same global step, optimizer
    and scheduler state). ``callbacks`` are extra Lightning callbacks (a notebook's, or a test's).
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    root = config_root(config)
    ckpt_path = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt = run_dir / "last.ckpt"
        if not ckpt.exists():
            raise ConfigError(f"--resume {resume}: no last.ckpt in {run_dir}")
        ckpt_path = str(ckpt)
    else:
        run_dir = new_run_dir(config, run_name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
    info = {"git_commit": git_commit(root), "seed": config.seed, "config_file": config.source_file}
    write_json(run_dir / "run.json", info)

    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    task = build_task(config)
    data, module = task.datamodule, task.module
    data.setup("fit")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir,
        filename="step{step}",
        save_last=True,
        every_n_train_steps=config.trainer.checkpoint_every_n_steps,
        save_top_k=0,
        auto_insert_metric_name=False,
    )
    tc = config.trainer
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_steps=tc.max_steps,
        max_epochs=tc.max_epochs if tc.max_steps == -1 else -1,
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=tc.gradient_clip_val or None,
        val_check_interval=tc.val_check_interval,
        limit_val_batches=tc.limit_val_batches,
        log_every_n_steps=tc.log_every_n_steps,
        accelerator=tc.accelerator,
        devices=tc.devices,
        precision=tc.precision,
        enable_progress_bar=tc.progress_bar,
        logger=[CSVLogger(run_dir, name="logs", version=""), TensorBoardLogger(run_dir, name="tb", version="")],
        callbacks=[checkpoint, *task.callbacks, *(callbacks or [])],
        num_sanity_val_steps=0,
        enable_model_summary=False,
        deterministic=False,
        **task.trainer_kwargs,
    )
    started = time.time()
    has_val = getattr(data, "val_set", None) is not None
    before: dict[str, float] = {}
    if has_val and ckpt_path is None:
        before = _scalars(trainer.validate(module, datamodule=data, verbose=False))
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    # Read before the final validate: Lightning resets callback_metrics when it runs.
    train_last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    after = _scalars(trainer.validate(module, datamodule=data, verbose=False)) if has_val else {}
    metrics = {
        "global_step": trainer.global_step,
        "wall_time_s": round(time.time() - started, 1),
        "val_before": before,
        "val_after": after,
        "train_last": train_last,
    }
    previous = run_dir / "metrics.json"
    if ckpt_path and previous.exists():
        metrics["val_before"] = json.loads(previous.read_text()).get("val_before", {})
    write_json(run_dir / "metrics.json", metrics)
    info.update({"finished": datetime.now(timezone.utc).isoformat(), "global_step": trainer.global_step})
    write_json(run_dir / "run.json", info)
    return RunResult(run_dir=run_dir, metrics=metrics)
