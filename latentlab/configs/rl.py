"""Config sections of RL on reasoning (`task: latent_rl`): the GRPO loop, policy loss, advantages and rewards.

Torch-free. The loss, aggregation and reward names are checked against their registries where the RL code is built
(``latentlab.rl``); here each section checks the values a name cannot carry (signs, ranges, thresholds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from latentlab.configs.common import Precision, require

INVALID_REASONS = ("unparsable", "truncated", "no_exit")
"""What can make a rollout invalid (``advantage.invalid_samples``)."""

DEFAULT_TOPK_LOGPROBS = 20
"""K of mu's top-K list for DPPO's top-K divergences when ``policy_loss.topk_logprobs`` is null (vLLM's logprobs=20)."""


@dataclass
class PolicyLossConfig:
    """Which policy loss, its clip or trust-region settings, how tokens are aggregated, and the KL to a reference."""

    name: str = "ppo_clip"
    """Per-token objective (``latentlab.rl.policy_loss.POLICY_LOSSES``): ppo_clip (PPO/GRPO/DAPO/Dr.GRPO/GSPO;
    the ratio clip), dppo (DPPO's trust-region mask on the sampled token), drpo (DRPO's smooth quadratic penalty)."""
    aggregation: str = "grpo"
    """How per-token losses become one number (``AGGREGATIONS``): grpo (mean over sequences of token means), bnpo
    (token mean of this micro-batch), dapo (token sum over the accumulated batch's active tokens), dr_grpo (token sum
    over the constant B x max_completion_length)."""
    importance_level: Literal["token", "sequence"] = "token"
    """Ratio per token, or GSPO's one length-normalised ratio per sequence."""
    clip_low: float = 0.2
    """ppo_clip: lower clip range epsilon_low (the ratio is clipped at 1 - clip_low)."""
    clip_high: float = 0.2
    """ppo_clip: upper clip range epsilon_high (DAPO's clip-higher: 0.28)."""
    dual_clip: float | None = None
    """ppo_clip: dual-clip constant c > 1 for negative advantages (verl: 3); null = off."""
    divergence: Literal["binary_tv", "binary_kl", "topk_tv", "topk_kl"] = "binary_tv"
    """dppo: the divergence between rollout mu and policy pi at the sampled token (top-K: over mu's top-K + rest)."""
    delta_low: float = 0.15
    """dppo: trust-region threshold where the advantage is negative (TV 0.15, KL 0.05 in the verl example)."""
    delta_high: float = 0.15
    """dppo: trust-region threshold where the advantage is positive."""
    topk_logprobs: int | None = None
    """dppo with divergence topk_tv / topk_kl only (an error elsewhere): K, the length of mu's top-K list that the
    rollout records and pi is recomputed at (Stable-RL's compute_topk_kl takes the rollout engine's top-K ids); null
    = ``DEFAULT_TOPK_LOGPROBS``. With sampling.top_k / top_p on, the list is of the filtered distribution mu sampled
    from (-inf beyond the kept tokens, which count 0 in the divergence)."""
    ratio_cap: float = 10.0
    """dppo: cap c of the detached importance weight min(pi/mu, c) (Stable-RL: 10)."""
    drpo_delta: float = 0.15
    """drpo: delta in probability units; the penalty's stationary point is pi - mu = sign(A) delta (the spec explains
    why not the transcribed 12.5)."""
    kl_beta: float = 0.0
    """Weight of the k3 KL to a frozen reference model (0 = no reference; DeepSeek-R1: 0.001)."""
    max_completion_length: int | None = None
    """dr_grpo: the constant L_max of its normaliser (required there); null elsewhere."""

    def __post_init__(self) -> None:
        for key in ("clip_low", "clip_high", "delta_low", "delta_high", "drpo_delta"):
            require(getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        require(
            self.clip_low < 1, "clip_low", f"must be < 1 (the ratio is clipped at 1 - clip_low), got {self.clip_low}"
        )
        require(self.dual_clip is None or self.dual_clip > 1, "dual_clip", f"must be > 1 or null, got {self.dual_clip}")
        require(self.ratio_cap > 0, "ratio_cap", f"must be > 0, got {self.ratio_cap}")
        require(
            self.topk_logprobs is None or self.topk_logprobs >= 1,
            "topk_logprobs",
            f"must be >= 1 or null, got {self.topk_logprobs}",
        )
        require(
            self.topk_logprobs is None or self.uses_topk,
            "topk_logprobs",
            f"only name dppo with divergence topk_tv / topk_kl reads it (this is {self.name} / {self.divergence}); "
            "remove it",
        )
        require(self.kl_beta >= 0, "kl_beta", f"must be >= 0, got {self.kl_beta}")
        require(
            self.max_completion_length is None or self.max_completion_length >= 1,
            "max_completion_length",
            f"must be >= 1 or null, got {self.max_completion_length}",
        )
        require(
            self.aggregation != "dr_grpo" or self.max_completion_length is not None,
            "max_completion_length",
            "aggregation dr_grpo divides by the constant B x max_completion_length: set it",
        )

    @property
    def uses_topk(self) -> bool:
        """Whether this loss reads mu's top-K list (dppo with topk_tv / topk_kl)."""
        return self.name == "dppo" and self.divergence.startswith("topk")

    @property
    def topk(self) -> int:
        """K of the rollout's top-K list: ``topk_logprobs`` (or its default) for top-K DPPO, else 0 (none)."""
        return (self.topk_logprobs or DEFAULT_TOPK_LOGPROBS) if self.uses_topk else 0


@dataclass
class AdvantageConfig:
    """Group-relative advantages over the G completions of each prompt."""

    group_size: int = 8
    """G: completions sampled per prompt."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide (r - group mean) by the group's std, the whole batch's std, or nothing (Dr.GRPO)."""
    std: Literal["unbiased", "population"] = "unbiased"
    """std convention: unbiased (n - 1; TRL, verl) or population (n; CoT2)."""
    eps: float = 1e-4
    """Added to the std before dividing (TRL 1e-4, verl 1e-6, ATP-Latent 1e-8)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and draw more until the batch is full (latent_rl: each data
    batch then holds rl.prompts_per_step x max_draws prompts, rolled out prompts_per_step at a time)."""
    max_draws: int = 4
    """Dynamic sampling: at most this many generation batches per training batch (then train on what there is: a
    short batch takes fewer optimizer steps, an empty one none)."""
    invalid_samples: list[str] = field(default_factory=lambda: ["unparsable"])
    """Which rollouts are invalid, get A = 0 and are left out of their group's mean and std (Latent-GRPO's
    invalid-sample advantage masking): unparsable (no answer after the marker, or any reward returned None),
    truncated (no EOS within sampling.max_new_tokens), no_exit (a latent chain that never predicted <eot>). An empty
    list masks nothing: every rollout counts, an unparsable one with reward 0."""
    first_token_selection: bool = False
    """Latent-GRPO's correct-path first-token selection: in a group with positive advantages, only the positive rollout
    with the highest length-normalised old log-prob keeps the advantage of its first position (its first latent);
    every other rollout of the group, negatives included, gets 0 there."""

    def __post_init__(self) -> None:
        require(
            self.group_size >= 2,
            "group_size",
            f"must be >= 2 (a group baseline needs two samples), got {self.group_size}",
        )
        require(self.eps >= 0, "eps", f"must be >= 0, got {self.eps}")
        require(self.max_draws >= 1, "max_draws", f"must be >= 1, got {self.max_draws}")
        unknown = [reason for reason in self.invalid_samples if reason not in INVALID_REASONS]
        require(
            not unknown and len(set(self.invalid_samples)) == len(self.invalid_samples),
            "invalid_samples",
            f"expected distinct names among {', '.join(INVALID_REASONS)}, got {self.invalid_samples}",
        )


@dataclass
class RewardConfig:
    """Rewards by name (``latentlab.rl.rewards.REWARDS``) with their weights; the total is the weighted sum, a gated
    term multiplied by its gate reward."""

    weights: dict = field(default_factory=lambda: {"answer": 1.0})
    """Reward name -> weight, e.g. {answer: 1.0, format: 0.5}."""
    gates: dict = field(default_factory=dict)
    """Reward name -> the reward (also in weights) its term is multiplied by: {coherence: answer} makes the
    coherence term weight * coherence * answer (ATP-Latent's 0.1 * coherence * acc); {} = a plain weighted sum."""
    numeric_tolerance: float = 1e-6
    """answer: a numeric answer within this relative tolerance of the gold counts as correct."""
    overlong_buffer: int = 0
    """length: DAPO's overlong shaping; the penalty grows linearly from 0 to -1 over the last this many tokens before
    max_completion (0 = off)."""
    max_completion: int | None = None
    """length: the completion budget the buffer ends at (required with overlong_buffer)."""

    def __post_init__(self) -> None:
        require(bool(self.weights), "weights", "must name at least one reward")
        for name, weight in self.weights.items():
            require(
                isinstance(weight, (int, float)) and not isinstance(weight, bool), f"weights.{name}", "must be a number"
            )
        for name, gate in self.gates.items():
            require(
                name in self.weights, f"gates.{name}", f"gates a reward that is not in weights {list(self.weights)}"
            )
            require(
                isinstance(gate, str) and gate in self.weights and gate != name,
                f"gates.{name}",
                f"must name another reward of weights {list(self.weights)}, got {gate!r}",
            )
        require(self.numeric_tolerance >= 0, "numeric_tolerance", f"must be >= 0, got {self.numeric_tolerance}")
        require(self.overlong_buffer >= 0, "overlong_buffer", f"must be >= 0, got {self.overlong_buffer}")
        require(
            self.overlong_buffer == 0
            or (self.max_completion is not None and self.max_completion > self.overlong_buffer),
            "max_completion",
            "overlong_buffer needs max_completion > overlong_buffer",
        )


@dataclass
class RLConfig:
    """The GRPO loop of `latent_rl`: prompts per rollout, update passes, minibatches, reference and precisions.

    One training batch = ``prompts_per_step`` prompts x ``advantage.group_size`` completions (N rows); it gives
    ``update_epochs * N / minibatch_size`` optimizer steps, which is what ``trainer.max_steps`` counts. Completions are
    at most ``sampling.max_new_tokens`` tokens, drawn at ``sampling.temperature`` / ``top_k`` / ``top_p``.
    """

    prompts_per_step: int = 8
    """Prompts (questions) rolled out per training batch (Latent-GRPO GSM8K: 64; SofT-GRPO: 64)."""
    update_epochs: int = 1
    """Passes over the batch's shuffled minibatches (Latent-GRPO: 10 on GSM8K; SofT-GRPO: 1)."""
    minibatch_size: int | None = None
    """Rows (completions) per optimizer step; a multiple of advantage.group_size (whole groups) that divides
    prompts_per_step x group_size; null = all rows, one optimizer step per update epoch."""
    reference: bool = False
    """Keep a frozen copy of the starting reasoner for the k3 KL (required when policy_loss.kl_beta > 0)."""
    rollout_precision: Precision = "fp32"
    """Autocast dtype of the rollouts (mu): fp32 (no autocast), bf16 or fp16."""
    train_precision: Precision = "fp32"
    """Autocast dtype of the recomputed log-probs (pi_old, pi, the reference's) and the update; fp16 adds dynamic
    loss scaling (Precision-RL)."""
    loss_scale_init: float = 65536.0
    """fp16 training: the initial loss scale (torch GradScaler: 2^16)."""
    loss_scale_growth_interval: int = 400
    """fp16 training: double the loss scale after this many finite steps in a row (Precision-RL: 400); a step whose
    gradient norm is not finite is skipped, counted, and halves the scale."""
    log_completions_every: int = 0
    """Write the rollouts, with their rewards, to `<run_dir>/completions.jsonl` every this many training batches
    (0 = never)."""
    freeze_embeddings: bool = False
    """Keep the reasoner's input embeddings (and an LM head tied to them) fixed (Latent-GRPO's freeze_embedding):
    a latent thought mixes embedding rows, so updating them moves every thought and every token at once."""

    def __post_init__(self) -> None:
        for key in ("prompts_per_step", "update_epochs", "loss_scale_growth_interval"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(
            self.minibatch_size is None or self.minibatch_size >= 1,
            "minibatch_size",
            f"must be >= 1 or null (null = all rows), got {self.minibatch_size}",
        )
        require(self.loss_scale_init > 0, "loss_scale_init", f"must be > 0, got {self.loss_scale_init}")
        require(
            self.log_completions_every >= 0, "log_completions_every", f"must be >= 0, got {self.log_completions_every}"
        )
