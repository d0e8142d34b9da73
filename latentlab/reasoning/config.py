"""Typed config of the latent-reasoning task (`task: latent_cot`): reasoner, method, curriculum, CVAE, data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from latentlab.reasoning.curriculum import CurriculumConfig
from latentlab.reasoning.cvae import CVAEConfig


@dataclass
class ReasoningDataConfig:
    """Where the reasoning examples ({id, question, steps, answer}) come from."""

    source: Literal["arithmetic", "prosqa_like", "jsonl", "gsm8k", "gsm8k_aug", "prosqa", "prontoqa"] = "arithmetic"
    """A seeded synthetic task (arithmetic, prosqa_like), latentlab JSONL, or an official format (converted on load)."""
    train: str | None = None
    """Training file (non-synthetic sources)."""
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
    """Fewest reasoning steps of a synthetic arithmetic example."""
    max_steps: int = 4
    """Most reasoning steps of a synthetic arithmetic example."""
    batch_size: int = 32
    """Examples per micro-batch."""
    limit_eval: int | None = None
    """Evaluate only the first N examples."""


@dataclass
class ReasoningConfig:
    """What `latentlab fit` trains when `task: latent_cot`."""

    method: Literal["no_cot", "cot", "coconut", "atp_latent"] = "coconut"
    """no_cot (answer only), cot (language steps), coconut (continuous thoughts), atp_latent (CVAE thoughts)."""
    reasoner: dict | str = field(default_factory=lambda: {"tiny": {"arch": "gpt2", "layers": 4, "hidden": 128}})
    """Model spec of the reasoner (see BackboneConfig.model)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights dtype of the reasoner."""
    train_from_scratch: bool = True
    """Train every weight of the reasoner (a tiny GPT-2 from scratch); False keeps pretrained weights trainable too."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Coconut's staged curriculum."""
    cvae: CVAEConfig = field(default_factory=CVAEConfig)
    """ATP-Latent conditional VAE over latent steps (method atp_latent)."""
    data: ReasoningDataConfig = field(default_factory=ReasoningDataConfig)
    """Reasoning data."""
    max_new_tokens: int = 64
    """Greedy language-token budget at evaluation."""
    pass_k: list[int] = field(default_factory=lambda: [1])
    """pass@k cut-offs reported by evaluation (k > 1 samples the thoughts or the tokens)."""
    num_samples: int = 1
    """Samples per question for pass@k (must be >= max(pass_k))."""
