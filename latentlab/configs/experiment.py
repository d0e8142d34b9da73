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
    ImageLossConfig,
    IndexConfig,
    LossConfig,
    MemoryEvalConfig,
    SyntheticImageQAConfig,
)
from latentlab.configs.reasoning import ReasoningConfig, ReasoningEvalConfig
from latentlab.configs.rl import AdvantageConfig, PolicyLossConfig, RewardConfig, RLConfig
from latentlab.configs.soft_thinking import SoftThinkingConfig
from latentlab.registry import Registry

Fail = Callable[[str, str], NoReturn]
"""``fail(dotted_key, message)`` raises a ConfigError naming the YAML and the key."""


@dataclass
class ExperimentConfig:
    """One experiment: task, seed, optimizer and trainer (the task's own sections are in its subclass)."""

    name: str = "experiment"
    """Run family name: outputs go to `<output_dir>/<name>/<run>/`."""
    task: str = "latent_memory"
    """What `latentlab fit` trains: `latent_memory` (the compressor), `latent_cot` (a latent chain-of-thought
    reasoner) or `latent_rl` (GRPO on a latent_cot reasoner). It chooses which sections the YAML may hold."""
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
        if not self.data.source.startswith("synthetic") and not self.data.train:
            fail("data.train", f"data.source is '{self.data.source}', so a training file is required")
        if not self.compressor.train_parts:
            fail("compressor.train_parts", "names nothing to train")
        vision = self.compressor.vision
        if self.data.source == "synthetic_images" and vision is None:
            fail("compressor.vision", "data.source 'synthetic_images' holds image evidence: set a vision tower")
        if self.data.source != "synthetic_images" and self.data.synthetic_images != SyntheticImageQAConfig():
            fail(
                "data.synthetic_images", f"is only read with data.source 'synthetic_images' (not '{self.data.source}')"
            )
        for flag, part in (("frozen", "vision_tower"), ("projector_frozen", "vision_projector")):
            if vision is not None and getattr(vision, flag) is False and part not in self.compressor.train_parts:
                fail(
                    f"compressor.vision.{flag}",
                    f"is false (train it), but compressor.train_parts leaves out {part}, so nothing would: add "
                    f"{part} to compressor.train_parts, or drop the key",
                )
        if vision is None and self.loss.image != ImageLossConfig():
            fail("loss.image", "weighs image items, which need compressor.vision (null here); drop loss.image")
        if self.compressor.init_fresh_decoder:
            if not self.compressor.init_from:
                fail(
                    "compressor.init_fresh_decoder",
                    "keeps init_from's weights but its decoder: set compressor.init_from",
                )
            if "decode_lora" not in self.compressor.train_parts or self.loss.recon_weight <= 0:
                fail(
                    "compressor.init_fresh_decoder",
                    "starts a decoder to train: needs decode_lora in compressor.train_parts and loss.recon_weight > 0",
                )
        per_step = self.loss.unlabelled_per_step
        if per_step and not self.data.unlabelled:
            fail("loss.unlabelled_per_step", f"is {per_step}: set data.unlabelled to the corpus to draw them from")
        if self.data.unlabelled and not per_step:
            fail("data.unlabelled", "is only read with loss.unlabelled_per_step >= 1 (0 here)")
        if per_step and self.loss.recon_weight <= 0:
            fail("loss.unlabelled_per_step", "rebuilds unlabelled text, which needs loss.recon_weight > 0")
        if per_step and not {"compress_lora", "memory_slot", "decode_lora"} & set(self.compressor.train_parts):
            fail(
                "loss.unlabelled_per_step",
                "trains the compressor through reconstruction, but compressor.train_parts holds none of "
                "compress_lora, memory_slot, decode_lora",
            )
        if vision is not None and self.loss.negatives == "mined":
            fail("loss.negatives", "'mined' ranks a corpus of texts; with compressor.vision use 'pool'")


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


RL_METHODS = ("cot", "no_cot", "latent_sft", "atp_latent")
"""Reasoning methods latent_rl trains: cot / no_cot (GRPO on language tokens, or SofT-GRPO with soft_thinking),
latent_sft (Latent-GRPO: Gumbel thoughts, then language tokens) and atp_latent (ATP-Latent RL)."""


@dataclass
class RLExperimentConfig(ExperimentConfig):
    """`task: latent_rl`: GRPO on a reasoner trained by `latent_cot` (its run in ``reasoning.init_from``).

    Loss, aggregation and reward names are checked against their registries when the task is built (they live in
    torch code); everything else is checked here.
    """

    task: str = "latent_rl"
    """Always `latent_rl` for this class."""
    reasoning: ReasoningConfig = field(default_factory=lambda: ReasoningConfig(method="cot"))
    """The reasoner spec, its data, and ``init_from``: the SFT run GRPO starts from (method cot or no_cot)."""
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0))
    """Rollout sampling (max_new_tokens, temperature, top_k, top_p), and evaluation's."""
    policy_loss: PolicyLossConfig = field(default_factory=PolicyLossConfig)
    """Per-token objective, clip / trust region, aggregation, KL to the reference."""
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    """Group size G and the normalisation of group-relative advantages."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Rewards by name and weight."""
    rl: RLConfig = field(default_factory=RLConfig)
    """The GRPO loop: prompts per step, update epochs, minibatches, reference, precisions, completion logs."""
    soft_thinking: SoftThinkingConfig | None = None
    """SofT-GRPO on a cot reasoner: the reasoning before the answer marker is written in soft-thinking tokens
    (Gumbel-softmax mixtures of the top-k embeddings) in rollouts and sampled answers; null = discrete tokens."""
    eval: ReasoningEvalConfig = field(default_factory=ReasoningEvalConfig)
    """Evaluation (`latentlab evaluate`): run, split, limit, pass@k."""

    def validate(self, fail: Fail) -> None:
        if self.reasoning.method not in RL_METHODS:
            fail(
                "reasoning.method",
                f"{self.reasoning.method!r} feeds continuous thoughts; GRPO on discrete tokens needs one of "
                f"{', '.join(RL_METHODS)}",
            )
        latent = self.reasoning.method == "latent_sft"
        if self.soft_thinking is not None and self.reasoning.method != "cot":
            fail(
                "soft_thinking",
                f"SofT-GRPO writes a CoT reasoner's steps as soft tokens; method is {self.reasoning.method!r} (need cot)",
            )
        latent = latent or self.soft_thinking is not None or self.reasoning.method == "atp_latent"
        if self.reasoning.method == "atp_latent" and self.rl.reference:
            fail("rl.reference", "atp_latent: the frozen reference copies the reasoner, not the CVAE heads (ATP-Latent "
                 "RL uses no KL); set rl.reference: false")  # fmt: skip
        if "coherence" in self.reward.weights and self.reasoning.method != "atp_latent":
            fail("reward.weights", "coherence reads the steps ATP-Latent's decoder reads from its latents: method "
                 f"{self.reasoning.method!r} has none")  # fmt: skip
        if not latent and "no_exit" in self.advantage.invalid_samples:
            fail(
                "advantage.invalid_samples",
                f"no_exit needs latent or soft thoughts; method is {self.reasoning.method!r} and soft_thinking is off",
            )
        if latent and self.policy_loss.uses_topk:
            fail(
                "policy_loss.divergence",
                "top-K divergences read a token distribution at every position; latent thoughts have none",
            )
        if self.policy_loss.kl_beta > 0 and not self.rl.reference:
            fail(
                "rl.reference",
                f"policy_loss.kl_beta is {self.policy_loss.kl_beta}, which needs the frozen reference: set "
                "rl.reference: true (or kl_beta: 0)",
            )
        group, rows = self.advantage.group_size, self.rl.prompts_per_step * self.advantage.group_size
        size = self.rl.minibatch_size
        if size is not None and (size % group or rows % size):
            fail(
                "rl.minibatch_size",
                f"{size} must be a multiple of advantage.group_size={group} (whole groups per minibatch) that "
                f"divides the {rows} rows of a batch (rl.prompts_per_step={self.rl.prompts_per_step} x {group}); "
                f"e.g. {group} or {rows}",
            )
        if self.sampling.temperature <= 0:
            fail("sampling.temperature", "must be > 0 for rollouts (greedy gives G identical completions)")
        if self.trainer.accumulate_grad_batches != 1:
            fail(
                "trainer.accumulate_grad_batches",
                "must be 1: latent_rl steps its optimizer itself, once per minibatch (set rl.minibatch_size)",
            )
        if self.trainer.precision != "32-true":
            fail(
                "trainer.precision",
                f"{self.trainer.precision!r}: latent_rl sets precision per phase; keep 32-true and set "
                "rl.rollout_precision / rl.train_precision",
            )
        if self.sampling.num_samples < max(self.eval.pass_k):
            fail(
                "sampling.num_samples",
                f"{self.sampling.num_samples} samples cannot give pass@{max(self.eval.pass_k)}; "
                f"set sampling.num_samples >= {max(self.eval.pass_k)} or lower eval.pass_k",
            )


TASK_CONFIGS: Registry[type[ExperimentConfig]] = Registry("task")
TASK_CONFIGS.register("latent_memory", MemoryExperimentConfig)
TASK_CONFIGS.register("latent_cot", ReasoningExperimentConfig)
TASK_CONFIGS.register("latent_rl", RLExperimentConfig)
