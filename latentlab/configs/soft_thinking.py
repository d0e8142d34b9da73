"""Config section of SofT-GRPO's soft-thinking tokens (latent_rl_spec.md §2): the thinking distribution's filters,
the Gumbel-softmax noise of the rollout, the training density's clamp and mask, and how thinking ends.

Torch-free. The policy itself is ``latentlab.reasoning.soft_thinking.SoftThinkingPolicy``; the end-of-thinking id is the
first token of ``end_text`` under the reasoner's tokenizer (``end_of_thinking_id``), never a hard-coded id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latentlab.configs.common import require


@dataclass(frozen=True)
class SoftThinkingConfig:
    """How each soft-thinking token is drawn and scored.

    Rollout, at a thinking slot with LM-head logits l: p = softmax(l / temperature), top-k renormalised, then top-p
    renormalised, then min-p; the top_k ids with those probabilities renormalised to p~; g ~ Gumbel(0, 1) clamped to
    [clamp_low, clamp_high]; scores y = log(p~ + 1e-6) + noise_factor * g; the thought fed is
    sum_i softmax(y / gumbel_temperature)_i E[id_i], its recorded token the id of largest weight. Thinking ends at the
    slot whose recorded token is the end-of-thinking id, or after max_thinking slots. Training: p^ = softmax(l /
    temperature) renormalised over the recorded ids (no top-p), g^ = clamp(y - log(p^ + 1e-6), clamp_low, clamp_high),
    log pi = the mean of -g^ - exp(-g^) over the candidates with log p^ > min_logp.
    """

    top_k: int = 5
    """K: the candidates mixed into each soft token; also the top-k filter of the thinking distribution (SofT-GRPO's
    max_topk = top_k = 5)."""
    top_p: float = 0.95
    """Nucleus of the top-k renormalised thinking distribution; candidates outside it keep their id with p~ = 0
    (SofT-GRPO: 0.95; 1 = off)."""
    min_p: float = 0.0
    """Drop candidates whose probability (after top-p) is below min_p x the largest one (0 = off; SofT-GRPO: off)."""
    temperature: float = 1.0
    """T of the thinking distribution softmax(logits / T), at rollout and in the training density (SofT-GRPO: 1)."""
    gumbel_temperature: float = 0.1
    """tau_g of the mixture weights softmax(y / tau_g) (SofT-GRPO: 0.1 in training and evaluation)."""
    noise_factor: float = 1.0
    """Multiplies the clamped Gumbel noise in the scores y (SofT-GRPO: 1; 0 = plain Soft Thinking, no noise)."""
    clamp_low: float = -1.5
    """Lower clamp of the Gumbel noise at rollout and of the recovered noise in training (SofT-GRPO: -1.5)."""
    clamp_high: float = 3.0
    """Upper clamp of the Gumbel noise at rollout and of the recovered noise in training (SofT-GRPO: 3)."""
    min_logp: float = -3.0
    """Training mask: only candidates with log p^ > min_logp count in the mean density (SofT-GRPO: -3); a row where
    none does counts them all. -.inf = no mask."""
    max_thinking: int = 48
    """Soft-token slots before thinking is forced to end (the end-of-thinking token is then fed anyway)."""
    end_text: str = "###"
    """The text that ends the thinking block: its first token id under the reasoner's tokenizer is the
    end-of-thinking id (latentlab's CoT format: the answer marker ###; SofT-GRPO: </think>)."""

    def __post_init__(self) -> None:
        require(self.top_k >= 1, "top_k", f"must be >= 1, got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (1 = off), got {self.top_p}")
        require(0 <= self.min_p < 1, "min_p", f"must be in [0, 1) (0 = off), got {self.min_p}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.gumbel_temperature > 0, "gumbel_temperature", f"must be > 0, got {self.gumbel_temperature}")
        require(
            math.isfinite(self.noise_factor) and self.noise_factor >= 0,
            "noise_factor",
            f"must be a finite number >= 0 (0 = no noise), got {self.noise_factor}",
        )
        require(
            self.clamp_low < 0,
            "clamp_low",
            f"must be < 0 (the Gumbel mode 0 must lie inside [clamp_low, clamp_high]), got {self.clamp_low}",
        )
        require(
            self.clamp_high > 0,
            "clamp_high",
            f"must be > 0 (the Gumbel mode 0 must lie inside [clamp_low, clamp_high]), got {self.clamp_high}",
        )
        require(
            self.min_logp < 0,
            "min_logp",
            f"must be < 0 (log p^ <= 0, so a mask at or above 0 drops every candidate), got {self.min_logp}",
        )
        require(self.max_thinking >= 1, "max_thinking", f"must be >= 1, got {self.max_thinking}")
        require(
            isinstance(self.end_text, str) and bool(self.end_text.strip()),
            "end_text",
            f"must be non-blank text (its first token ends thinking), got {self.end_text!r}",
        )
