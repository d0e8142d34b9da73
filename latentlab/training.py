"""Run an experiment with the Lightning Trainer and record it beside its checkpoints.

Each run directory holds the resolved config, git commit, seed, wall time and metrics (before and after
training, on the same validation batches), plus CSV/TensorBoard logs and ``last.ckpt`` for resuming.
Nothing of a run is written until its config and (on resume) its checkpoint have been checked, a resume appends to
the run's logs, and a fit that fails before its first checkpoint leaves no directory behind to block the rerun.
Under ddp, fsdp or deepspeed (``trainer.strategy``, see ``latentlab.distributed``) every process runs ``fit``; only
rank 0 writes the run's records (Lightning writes checkpoints and logs on rank 0 too), and the metrics it records
are the mean over the ranks, each of which saw its own shard of the data.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latentlab.configs import ExperimentConfig, config_root, dump_yaml, to_dict
from latentlab.configs.loader import read_resolved
from latentlab.distributed import check_strategy_available, launch_rank, trainer_strategy
from latentlab.errors import ConfigError
from latentlab.io import write_json, write_text
from latentlab.parts import FitParts

RESUMABLE_KEYS = (
    "trainer.max_steps",
    "trainer.max_epochs",
    "trainer.progress_bar",
    "trainer.num_threads",
    "trainer.log_every_n_steps",
    "trainer.checkpoint_every_n_steps",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.process_group_backend",
    "trainer.find_unused_parameters",
    "trainer.fsdp",
    "eval",
)
"""What a resume may change: how long and where it runs, and how the run is evaluated afterwards. Anything else
would make the checkpoint continue a different experiment than the one its run directory records. (Checkpoints of
ddp and fsdp hold full, unsharded state, so a run moves between them and a single device; deepspeed's do not.)"""

METRICS_ASIDE = "metrics.before_resume.csv"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for item in results:
        merged.update({k: float(v) for k, v in item.items()})
    return merged


def _holds_run(run_dir: Path) -> bool:
    return run_dir.exists() and any(run_dir.iterdir())


def new_run_dir(config: ExperimentConfig, run_name: str | None = None, check: bool = True) -> Path:
    """``output_dir/name/run_name`` (a UTC timestamp when unnamed); an existing one is refused (unless not ``check``).

    A second fit into a used directory would mix its checkpoints, logs and metrics with the first run's.
    """
    output_root = Path(config.output_dir)
    if not output_root.is_absolute():
        output_root = config_root(config) / output_root
    run_dir = output_root / config.name / (run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    if check and _holds_run(run_dir):
        raise ConfigError(
            f"run directory {run_dir} already holds a run; pass another run name, or --resume {run_dir} to continue it"
        )
    return run_dir


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "model":
            out.update(_flat(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def check_resume(config: ExperimentConfig, run_dir: Path) -> Path:
    """The run's ``last.ckpt``, once the run exists, its stored config matches ``config`` (up to
    ``RESUMABLE_KEYS``) and the checkpoint reads; each failure is an error naming what differs. Writes nothing."""
    from latentlab.weights import load_lightning_checkpoint

    ckpt = run_dir / "last.ckpt"
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such run directory")
    if not ckpt.exists():
        raise ConfigError(f"--resume {run_dir}: no last.ckpt in {run_dir} (the run wrote no checkpoint yet)")
    stored_path = run_dir / "config.yaml"
    if stored_path.exists():
        stored = read_resolved(stored_path)
        given, kept = _flat(to_dict(config)), _flat(to_dict(stored))
        differ = sorted(
            k
            for k in given.keys() | kept.keys()
            if given.get(k) != kept.get(k) and not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)
        )
        if differ:
            shown = ", ".join(f"{k}: {kept.get(k)!r} in the run, {given.get(k)!r} now" for k in differ[:4])
            raise ConfigError(
                f"--resume {run_dir}: the config differs from the run's config.yaml ({shown}"
                f"{', ...' if len(differ) > 4 else ''}); a resume may change only {', '.join(RESUMABLE_KEYS)}. "
                "Start a new run for a different experiment"
            )
    load_lightning_checkpoint(ckpt)  # a truncated file is an error here, before anything is written
    return ckpt


def check_accelerator(config: ExperimentConfig) -> None:
    """A GPU accelerator with no GPU visible is an error naming the key, not a crash deep inside Lightning."""
    import torch

    accelerator = config.trainer.accelerator
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"{config.source_file}: key 'trainer.accelerator' is {accelerator!r} but no GPU is visible "
            "(torch.cuda.is_available() is False); use --trainer.accelerator cpu (or auto)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{config.source_file}: key 'trainer.accelerator' is 'mps' but MPS is not available")
    if accelerator in ("gpu", "cuda") and config.trainer.devices > torch.cuda.device_count():
        raise ConfigError(
            f"{config.source_file}: key 'trainer.devices' is {config.trainer.devices} but only "
            f"{torch.cuda.device_count()} GPU(s) are visible"
        )


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write_csv_rows(path: Path, rows: list[dict[str, str]]) -> None:
    from latentlab.eval.report import write_csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    write_csv(rows, path, columns)


def _stash_metrics(log_dir: Path) -> list[dict[str, str]]:
    """Before a resume: the rows of metrics.csv so far, kept in ``METRICS_ASIDE`` (Lightning's CSV logger deletes
    an existing metrics.csv when it starts); an aside file left by an interrupted resume comes first."""
    rows = _read_csv(log_dir / METRICS_ASIDE) + _read_csv(log_dir / "metrics.csv")
    if rows:
        _write_csv_rows(log_dir / METRICS_ASIDE, rows)
        (log_dir / "metrics.csv").unlink(missing_ok=True)
    return rows


def _step(row: dict[str, str]) -> float | None:
    try:
        return float(row.get("step") or "")
    except ValueError:
        return None


def _merge_metrics(log_dir: Path, earlier: list[dict[str, str]]) -> None:
    """After a resume: metrics.csv = the earlier rows, then this run's. Earlier rows at or past the step the resume
    started from are dropped: the resumed run logged those steps again (it redid them from the checkpoint), and a
    curve must have each step once."""
    if not earlier:
        return
    later = _read_csv(log_dir / "metrics.csv")
    steps = [step for step in map(_step, later) if step is not None]
    if steps:
        first = min(steps)
        earlier = [row for row in earlier if (_step(row) is None or _step(row) < first)]
    _write_csv_rows(log_dir / "metrics.csv", earlier + later)
    (log_dir / METRICS_ASIDE).unlink(missing_ok=True)


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

    from latentlab.tasks import task_of

    task = task_of(config)
    check_accelerator(config)
    check_strategy_available(config)
    root = config_root(config)
    # Other ranks write nothing of their own: an unnamed run's timestamp may differ on them, and the run directory
    # they train into is rank 0's (Lightning broadcasts the checkpoint directory), returned below.
    writer = launch_rank(config.trainer.devices) == 0
    if resume is not None:
        run_dir = Path(resume)
        ckpt_path: str | None = str(check_resume(config, run_dir))
    else:
        run_dir, ckpt_path = new_run_dir(config, run_name, check=writer), None
    created = not run_dir.exists()

    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    # The same seed on every rank: each builds the same initial model (ddp also broadcasts rank 0's weights).
    L.seed_everything(config.seed, workers=True, verbose=False)
    parts = task.build(config)  # models load and data is checked before the run directory gets anything
    parts.datamodule.setup("fit")
    strategy = trainer_strategy(config, parts.module)  # fsdp: a wrap class the model lacks fails here

    if not writer:
        metrics, run_dir, used = _train(config, parts, run_dir, ckpt_path, callbacks, strategy)
        used.barrier("latentlab.fit")  # until rank 0 has recorded the run: a returned fit is a complete run
        return RunResult(run_dir=run_dir, metrics=metrics)
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier_metrics = _stash_metrics(run_dir / "logs") if ckpt_path else []
    info = {"git_commit": git_commit(root), "seed": config.seed, "config_file": config.source_file}
    try:
        write_text(run_dir / "config.yaml", dump_yaml(config))
        write_json(run_dir / "run.json", info)
        metrics, _, used = _train(config, parts, run_dir, ckpt_path, callbacks, strategy)
    except BaseException:
        if ckpt_path is None and not (run_dir / "last.ckpt").exists() and not any(run_dir.glob("step*.ckpt")):
            # Nothing resumable was made: leave no half run that would block the corrected rerun.
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                for name in ("config.yaml", "run.json", "logs", "tb"):
                    target = run_dir / name
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        raise
    finally:
        if ckpt_path:
            _merge_metrics(run_dir / "logs", earlier_metrics)
    previous = run_dir / "metrics.json"
    if ckpt_path and previous.exists():
        import json

        metrics["val_before"] = json.loads(previous.read_text()).get("val_before", {})
    write_json(run_dir / "metrics.json", metrics)
    info.update({"finished": datetime.now(timezone.utc).isoformat(), "global_step": metrics["global_step"]})
    write_json(run_dir / "run.json", info)
    used.barrier("latentlab.fit")
    return RunResult(run_dir=run_dir, metrics=metrics)


def _mean_over_ranks(trainer, metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` averaged over the ranks (each validated, or trained on, its own shard of the data); as they are on
    one process. Every rank holds the same keys: they log the same names."""
    if trainer.world_size == 1:
        return metrics
    import torch

    device = trainer.strategy.root_device
    return {
        key: float(trainer.strategy.reduce(torch.tensor(value, dtype=torch.float64, device=device), reduce_op="mean"))
        for key, value in sorted(metrics.items())
    }


def _train(
    config: ExperimentConfig, parts: FitParts, run_dir: Path, ckpt_path: str | None, callbacks, strategy
) -> tuple[dict, Path, Any]:
    """The Lightning part of ``fit``: validate, train (or resume), validate again; returns the run's metrics, the run
    directory the checkpoints went to (rank 0's, on every rank) and the Lightning strategy the Trainer ran."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    data, module = parts.datamodule, parts.module
    checkpoint = ModelCheckpoint(
        dirpath=run_dir,
        filename="step{step}",
        save_last=True,
        every_n_train_steps=config.trainer.checkpoint_every_n_steps,
        save_top_k=0,
        auto_insert_metric_name=False,
    )
    tc = config.trainer
    settings = dict(
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
        num_nodes=tc.num_nodes,
        strategy=strategy,
        precision=tc.precision,
        enable_progress_bar=tc.progress_bar,
        logger=[CSVLogger(run_dir, name="logs", version=""), TensorBoardLogger(run_dir, name="tb", version="")],
        callbacks=[checkpoint, *parts.callbacks, *(callbacks or [])],
        num_sanity_val_steps=0,
        enable_model_summary=False,
        deterministic=False,
    )
    # A task's own settings win (latent_rl clips gradients itself: manual optimisation refuses the Trainer's clip).
    trainer = L.Trainer(**{**settings, **parts.trainer_kwargs})
    started = time.time()
    has_val = getattr(data, "val_set", None) is not None
    before: dict[str, float] = {}
    if has_val and ckpt_path is None:
        before = _mean_over_ranks(trainer, _scalars(trainer.validate(module, datamodule=data, verbose=False)))
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    # Read before the final validate: Lightning resets callback_metrics when it runs.
    train_last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    train_last = _mean_over_ranks(trainer, train_last)
    after = _scalars(trainer.validate(module, datamodule=data, verbose=False)) if has_val else {}
    metrics = {
        "global_step": trainer.global_step,
        "wall_time_s": round(time.time() - started, 1),
        "val_before": before,
        "val_after": _mean_over_ranks(trainer, after),
        "train_last": train_last,
    }
    return metrics, Path(checkpoint.dirpath), trainer.strategy
