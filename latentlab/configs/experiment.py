"""The experiment: what every task shares (name, seed, optimizer, Trainer) plus the sections of its own task.

``TASK_CONFIGS`` maps a task name to its experiment class; the loader reads `task:` first and builds that class,
so a latent-memory YAML cannot carry reasoning sections (an unknown key) and the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from latentlab.configs.common import EvalConfig, OptimConfig, SamplingConfig, TrainerConfig
from latentlab.configs.memory import (
    CompressorConfig,
    DataConfig,
    GeneratorConfig,
    IndexConfig,
    LossConfig,
    MemoryEvalConfig,
)
from latentlab.configs.reasoning import ReasoningConfig, ReasoningEvalConfig
from latentlab.registry import Registry

Fail = Callable[[str, str], NoReturn]
"""``fail(dotted_key, message)`` raises a ConfigError naming the YAML and the key."""


@dataclass
class ExperimentConfig:
    """One experiment: task, seed, optimizer and trainer (the task's own sections are in its subclass)."""

    name: str = "experiment"
    """Run family name: outputs go to `<output_dir>/<name>/<run>/`."""
    task: str = "latent_memory"
    """What `latentlab fit` trains: `latent_memory` (the compressor) or `latent_cot` (a latent chain-of-thought
    reasoner). It chooses which sections the YAML may hold."""
    seed: int = 0
    """Global seed (python, numpy, torch)."""
    output_dir: str = "checkpoints"
    """Root of run directories."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation (`latentlab evaluate`)."""

    source_file: str | None = None
    """Path of the YAML this config was read from (set by the loader)."""

    def validate(self, fail: Fail) -> None:
        """Checks across sections that no single section can make (each section checks itself)."""


@dataclass
class MemoryExperimentConfig(ExperimentConfig):
    """`task: latent_memory`: compressor, generator, losses, QA data, index and memory evaluation."""

    task: str = "latent_memory"
    """Always `latent_memory` for this class."""
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    """The compressor."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """The frozen generator."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights and settings."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source and batching."""
    eval: MemoryEvalConfig = field(default_factory=MemoryEvalConfig)
    """Evaluation (`latentlab evaluate`, `latentlab demo`)."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Memory index built by `latentlab index build` and global-retrieval evaluation."""

    def validate(self, fail: Fail) -> None:
        if self.data.source != "synthetic" and not self.data.train:
            fail("data.train", f"data.source is '{self.data.source}', so a training file is required")
        if not self.compressor.train_parts:
            fail("compressor.train_parts", "names nothing to train")


@dataclass
class ReasoningExperimentConfig(ExperimentConfig):
    """`task: latent_cot`: the reasoner and its method, sampling, and reasoning evaluation."""

    task: str = "latent_cot"
    """Always `latent_cot` for this class."""
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    """Reasoner, method, curriculum, CVAE and data."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How answers are generated (token budget, samples per question, temperature, thought noise)."""
    eval: ReasoningEvalConfig = field(default_factory=ReasoningEvalConfig)
    """Evaluation (`latentlab evaluate`): run, split, limit, pass@k."""

    def validate(self, fail: Fail) -> None:
        if self.sampling.num_samples < max(self.eval.pass_k):
            fail(
                "sampling.num_samples",
                f"{self.sampling.num_samples} samples cannot give pass@{max(self.eval.pass_k)}; "
                f"set sampling.num_samples >= {max(self.eval.pass_k)} or lower eval.pass_k",
            )


TASK_CONFIGS: Registry[type[ExperimentConfig]] = Registry("task")
TASK_CONFIGS.register("latent_memory", MemoryExperimentConfig)
TASK_CONFIGS.register("latent_cot", ReasoningExperimentConfig)
