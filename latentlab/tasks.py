"""The task registry: each task (`latent_memory`, `latent_cot`, `latent_rl`) is one object that builds its
training parts, evaluates a run into table rows, and knows its table's columns and plot.

`fit`, `evaluate`, ``experiments/sweep.py`` and ``experiments/reproduce.py`` go through ``TASKS``; nothing else
branches on ``config.task``. Importing this module is cheap: each task imports its model code when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from latentlab.configs import ExperimentConfig
from latentlab.registry import Registry


class Evaluation(Protocol):
    """What a task's evaluation returns: the rows it wrote, where, and the rows as a Markdown table."""

    out_dir: Path
    rows: list[dict]

    def table(self) -> str: ...


@dataclass(frozen=True)
class Task:
    """One task: how to train it, how to score it, and how its tables look."""

    name: str
    """The `task:` value of its YAMLs."""
    primary_metric: str
    """The metric a sweep plots and a reader looks at first."""
    init_from_key: str = ""
    """The config key that starts a run from another run's weights (reproduce.py chains table rows through it)."""

    @property
    def columns(self) -> tuple[str, ...]:
        """Table columns, in order (a row may lack some); defined beside the task's evaluation."""
        raise NotImplementedError

    def build(self, config: ExperimentConfig) -> Any:
        """The ``FitParts`` (module, datamodule, callbacks, Trainer settings) that `fit` trains."""
        raise NotImplementedError

    def evaluate(
        self,
        config: ExperimentConfig,
        checkpoint: str | Path | None = None,
        out_dir: str | Path | None = None,
        command: str | None = None,
        overwrite: bool = False,
    ) -> Evaluation:
        """Evaluate ``checkpoint`` (default: ``eval.checkpoint``) on the configured split; writes its results folder."""
        raise NotImplementedError

    def evaluate_run(self, config: ExperimentConfig, run_dir: Path, command: str) -> list[dict]:
        """Score a run `fit` just wrote (results into ``run_dir / "eval"``); returns the table rows."""
        raise NotImplementedError

    def plot(self, metric: str | None = None):
        """The ``PlotSpec`` of this task's tables (``metric`` defaults to the primary one); defined beside its
        evaluation, like ``columns``."""
        raise NotImplementedError


class LatentMemoryTask(Task):
    """The compressor, memory and generator of latent memory; scored against raw-text RAG."""

    @property
    def columns(self):
        from latentlab.memory.evaluate import TABLE_COLUMNS

        return TABLE_COLUMNS

    def plot(self, metric=None):
        from latentlab.memory.evaluate import table_plot

        return table_plot(metric or self.primary_metric)

    def build(self, config):
        from latentlab.memory.module import build_task

        return build_task(config)

    def evaluate(self, config, checkpoint=None, out_dir=None, command=None, overwrite=False):
        from latentlab.memory.evaluate import evaluate

        return evaluate(config, checkpoint=checkpoint, out_dir=out_dir, command=command, overwrite=overwrite)

    def evaluate_run(self, config, run_dir, command):
        from latentlab.memory.checkpoint import export_compressor, load_model

        export_compressor(load_model(run_dir), run_dir / "export", include_decoder=False)
        return self.evaluate(config, run_dir / "export", run_dir / "eval", command, overwrite=True).rows


def _trained_run(config: ExperimentConfig, checkpoint: str | Path | None) -> str | Path:
    """``checkpoint``, else ``eval.checkpoint``; neither is an error naming the key."""
    from latentlab.errors import ConfigError

    checkpoint = checkpoint or config.eval.checkpoint
    if checkpoint is None:
        raise ConfigError(
            f"{config.source_file}: key 'eval.checkpoint': evaluate needs a trained run "
            "(--checkpoint RUN_DIR or eval.checkpoint in the YAML)"
        )
    return checkpoint


class LatentCoTTask(Task):
    """A latent chain-of-thought reasoner (no-CoT, CoT, Coconut, ATP-Latent); scored by accuracy and tokens."""

    @property
    def columns(self):
        from latentlab.reasoning.evaluate import TABLE_COLUMNS

        return TABLE_COLUMNS

    def plot(self, metric=None):
        from latentlab.reasoning.evaluate import table_plot

        return table_plot(metric or self.primary_metric)

    def build(self, config):
        from latentlab.reasoning.task import build_task

        return build_task(config)

    def evaluate(self, config, checkpoint=None, out_dir=None, command=None, overwrite=False):
        from latentlab.reasoning.evaluate import evaluate_cot

        checkpoint = _trained_run(config, checkpoint)
        return evaluate_cot(config, checkpoint=checkpoint, out_dir=out_dir, command=command, overwrite=overwrite)

    def evaluate_run(self, config, run_dir, command):
        return self.evaluate(config, run_dir, run_dir / "eval", command, overwrite=True).rows


class LatentRLTask(LatentCoTTask):
    """GRPO on a CoT / no-CoT reasoner from a latent_cot run; its policy is scored as latent_cot scores a reasoner
    (columns, plot and evaluate_run are latent_cot's)."""

    def build(self, config):
        from latentlab.rl.task import build_task

        return build_task(config)

    def evaluate(self, config, checkpoint=None, out_dir=None, command=None, overwrite=False):
        from latentlab.configs import config_root
        from latentlab.reasoning.evaluate import evaluate_cot
        from latentlab.rl.task import load_policy

        checkpoint = _trained_run(config, checkpoint)
        if not Path(checkpoint).is_absolute():
            checkpoint = config_root(config) / checkpoint
        from latentlab.reasoning.evaluate import METHOD_LABELS

        policy = load_policy(checkpoint)
        trained = policy.config  # the latent_rl run's own config: its method and policy loss
        label = f"{METHOD_LABELS[trained.reasoning.method]} + RL ({trained.policy_loss.name}, {trained.policy_loss.aggregation})"
        return evaluate_cot(
            config, checkpoint=policy, out_dir=out_dir, command=command, overwrite=overwrite, label=label
        )


TASKS: Registry[Task] = Registry("task")
TASKS.register(
    "latent_memory",
    LatentMemoryTask(
        name="latent_memory",
        primary_metric="f1",
        init_from_key="compressor.init_from",
    ),
)
TASKS.register(
    "latent_cot",
    LatentCoTTask(
        name="latent_cot",
        primary_metric="accuracy",
        init_from_key="reasoning.init_from",
    ),
)

TASKS.register(
    "latent_rl",
    LatentRLTask(
        name="latent_rl",
        primary_metric="accuracy",
        init_from_key="reasoning.init_from",
    ),
)


def task_of(config: ExperimentConfig) -> Task:
    """The registered task of ``config`` (an unknown name raises and lists the known ones)."""
    return TASKS.get(config.task, where=f"{config.source_file or '<config>'}: key 'task'")
