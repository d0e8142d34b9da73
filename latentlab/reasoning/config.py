"""Typed config of the latent-reasoning task (`task: latent_cot`): reasoner, method, curriculum, CVAE, data.

Every field's docstring is its help text; cross-field checks raise ``ConfigError`` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from latentlab.errors import ConfigError
from latentlab.reasoning.curriculum import CurriculumConfig, effective_stage, stage_for_epoch
from latentlab.reasoning.cvae import CVAEConfig

SYNTHETIC_SOURCES = ("arithmetic", "prosqa_like")
METHOD_MODES: dict[str, tuple[str, ...]] = {
    # method -> curriculum modes it runs (the first is what an unset / default `curriculum.mode` becomes)
    "no_cot": ("no_cot",),
    "cot": ("cot",),
    "coconut": ("coconut", "no_thoughts"),
    "atp_latent": ("coconut",),
}


@dataclass
class ReasoningDataConfig:
    """Where the reasoning examples ({id, question, steps, answer}) come from."""

    source: Literal["arithmetic", "prosqa_like", "jsonl", "gsm8k", "gsm8k_aug", "prosqa", "prontoqa"] = "arithmetic"
    """A seeded synthetic task (arithmetic, prosqa_like), latentlab JSONL, or an official format (converted on load)."""
    train: str | None = None
    """Training file (non-synthetic sources); relative paths resolve against the project root."""
    val: str | None = None
    """Validation file (non-synthetic sources)."""
    test: str | None = None
    """Test file (non-synthetic sources)."""
    num_train: int = 4000
    """Synthetic training examples."""
    num_val: int = 200
    """Synthetic validation examples."""
    num_test: int = 500
    """Synthetic test examples."""
    seed: int = 0
    """Seed of the synthetic generator."""
    min_steps: int = 2
    """Fewest reasoning steps of a synthetic example (arithmetic operations, or prosqa_like hops)."""
    max_steps: int = 4
    """Most reasoning steps of a synthetic example (arithmetic operations, or prosqa_like hops)."""
    max_operand: int = 9
    """Synthetic arithmetic: operands are drawn from 1..max_operand."""
    max_value: int = 99
    """Synthetic arithmetic: every intermediate result stays in 0..max_value."""
    ops: list[str] = field(default_factory=lambda: ["+", "-", "*"])
    """Synthetic arithmetic: the operations a step may use (+, -, *, / exact only)."""
    batch_size: int = 32
    """Examples per training and validation micro-batch."""
    limit_train: int | None = None
    """Train on only the first N training examples (None: all)."""
    limit_val: int | None = None
    """Validate on only the first N validation examples (None: all)."""

    def __post_init__(self) -> None:
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 0:
                raise ConfigError(f"key 'data.{name}': must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ConfigError(f"key 'data.batch_size': must be >= 1, got {self.batch_size}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ConfigError(
                f"keys 'data.min_steps'/'data.max_steps': need 1 <= min_steps <= max_steps, "
                f"got {self.min_steps}, {self.max_steps}"
            )
        unknown = [op for op in self.ops if op not in ("+", "-", "*", "/")]
        if not self.ops or unknown:
            raise ConfigError(f"key 'data.ops': expected a non-empty list of + - * /, got {self.ops}")
        for name in ("limit_train", "limit_val"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"key 'data.{name}': must be >= 1 or null, got {value}")

    @property
    def synthetic(self) -> bool:
        """Whether the examples are generated (no files needed)."""
        return self.source in SYNTHETIC_SOURCES


@dataclass
class ReasoningConfig:
    """What `latentlab fit` trains when `task: latent_cot`."""

    method: Literal["no_cot", "cot", "coconut", "atp_latent"] = "coconut"
    """no_cot (answer only), cot (language steps), coconut (continuous thoughts), atp_latent (CVAE thoughts).
    It sets `curriculum.mode` (leave that key unset; coconut also accepts no_thoughts, the w/o-thought ablation)."""
    reasoner: dict | str = field(default_factory=lambda: {"tiny": {"arch": "gpt2", "layers": 4, "hidden": 128}})
    """Model spec of the reasoner (see BackboneConfig.model): a hub id such as openai-community/gpt2, a local
    directory, or {tiny: {...}} for a small random GPT-2/Llama with a byte-level tokenizer."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights dtype of the reasoner."""
    train_from_scratch: bool = True
    """True re-initialises the reasoner's weights from its architecture (a {tiny: ...} spec is random already);
    False starts from the pretrained weights. Every weight trains either way (full fine-tuning, as Coconut does)."""
    dropout: float | None = None
    """Set every dropout layer of the reasoner to this probability (GPT-2 ships 0.1); null keeps the model's own."""
    init_from: str | None = None
    """A run directory (its last.ckpt) or a .ckpt whose reasoner weights start this run, e.g. the CoT run that
    Coconut's GSM8k recipe starts from; CVAE weights are not taken from it."""
    start_stage: int = 0
    """Curriculum stage of the first epoch; the later ones follow the curriculum's stage lengths from there
    (Coconut's GSM8k run resumes its CoT run at stage 1; ATP-Latent starts at stage 1)."""
    init_thoughts_from: str | None = "<<"
    """Text whose mean token embedding initialises <bot>, <thought> and <eot> (Coconut copies '<<'); null keeps the
    resized-embedding default."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Coconut's staged curriculum."""
    cvae: CVAEConfig = field(default_factory=CVAEConfig)
    """ATP-Latent conditional VAE over latent steps (method atp_latent); cvae.thoughts_per_step must equal
    curriculum.thoughts_per_step."""
    elbo_weight: float = 1.0
    """atp_latent: weight of the step ELBO (reconstruction + beta * KL, mean over steps) added to the answer CE."""
    data: ReasoningDataConfig = field(default_factory=ReasoningDataConfig)
    """Reasoning data."""
    max_new_tokens: int = 64
    """Language-token budget when generating (validation accuracy and evaluation)."""
    val_generate_batches: int = 2
    """Validation batches on which answers are generated for val/accuracy (generation is slower than the loss)."""
    pass_k: list[int] = field(default_factory=lambda: [1])
    """pass@k cut-offs reported by evaluation (`evaluate_cot` reads eval.checkpoint, eval.split, eval.limit,
    eval.batch_size and eval.output_dir like the other tasks). With num_samples 1, pass@1 is the greedy accuracy;
    otherwise every pass@k uses the unbiased estimator over num_samples sampled answers."""
    num_samples: int = 1
    """Samples per question for pass@k (must be >= max(pass_k)); 1 = greedy only."""
    sample_temperature: float = 0.7
    """Token temperature of the pass@k samples (Gumbel-max sampling, the same for every method); 0 = greedy tokens."""
    thought_noise: float = 0.0
    """Std of Gaussian noise added to every continuous thought of a pass@k sample, relative to the thought's RMS
    (latent methods only; 0 = none). atp_latent with cvae.inference: sample also samples z itself."""

    def __post_init__(self) -> None:
        allowed = METHOD_MODES[self.method]
        mode = self.curriculum.mode
        if mode not in allowed:
            if mode != "coconut":  # "coconut" is the CurriculumConfig default, i.e. unset: follow the method
                raise ConfigError(
                    f"key 'curriculum.mode': {mode!r} contradicts method {self.method!r} "
                    f"(allowed: {', '.join(allowed)}); remove curriculum.mode, the method sets it"
                )
            self.curriculum = dataclasses.replace(self.curriculum, mode=allowed[0])
        if self.method == "atp_latent" and self.cvae.thoughts_per_step != self.curriculum.thoughts_per_step:
            raise ConfigError(
                f"key 'cvae.thoughts_per_step': {self.cvae.thoughts_per_step} differs from "
                f"curriculum.thoughts_per_step {self.curriculum.thoughts_per_step}; the decoder reads one step's "
                "thoughts, so set both to the same c"
            )
        if self.cvae.stop_head and (self.method != "atp_latent" or self.curriculum.pad_latent_to_max):
            raise ConfigError(
                "key 'cvae.stop_head': the stop head learns each question's step count, so it needs method "
                f"atp_latent (got {self.method!r}) and curriculum.pad_latent_to_max: false (got "
                f"{self.curriculum.pad_latent_to_max}), which gives each row its own thought count"
            )
        if self.method == "atp_latent" and self.curriculum.thoughts_per_step < 1:
            raise ConfigError("key 'curriculum.thoughts_per_step': atp_latent needs at least 1 thought per step")
        if self.start_stage < 0:
            raise ConfigError(f"key 'start_stage': must be >= 0, got {self.start_stage}")
        if self.max_new_tokens < 1 or self.val_generate_batches < 0:
            raise ConfigError(
                "keys 'max_new_tokens' must be >= 1 and 'val_generate_batches' >= 0, got "
                f"{self.max_new_tokens}, {self.val_generate_batches}"
            )
        if not self.pass_k or any(k < 1 for k in self.pass_k):
            raise ConfigError(f"key 'pass_k': expected a non-empty list of integers >= 1, got {self.pass_k}")
        if self.num_samples < max(self.pass_k):
            raise ConfigError(
                f"key 'num_samples': {self.num_samples} samples cannot give pass@{max(self.pass_k)}; "
                f"set num_samples >= {max(self.pass_k)} or lower pass_k"
            )
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"key 'dropout': expected a probability in [0, 1) or null, got {self.dropout}")
        if self.sample_temperature < 0 or self.thought_noise < 0 or self.elbo_weight < 0:
            raise ConfigError(
                "keys 'sample_temperature', 'thought_noise', 'elbo_weight' must be >= 0, got "
                f"{self.sample_temperature}, {self.thought_noise}, {self.elbo_weight}"
            )

    @property
    def latent(self) -> bool:
        """Whether the method feeds continuous thoughts."""
        return self.method in ("coconut", "atp_latent")

    def stage_at_epoch(self, epoch: int) -> int:
        """The curriculum stage trained at 0-based ``epoch`` (``start_stage`` shifts the schedule; cot/no_cot: 0)."""
        return effective_stage(stage_for_epoch(epoch, self.curriculum, self.start_stage), self.curriculum)

    @property
    def final_stage(self) -> int:
        """The stage evaluation runs at: all steps latent for latent methods, 0 for cot/no_cot."""
        return effective_stage(self.curriculum.final_stage, self.curriculum)
