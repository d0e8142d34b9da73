"""Token sampling for generation and rollouts: temperature, top-k and top-p filtering, Gumbel-max draws.

Pure functions on logits; ``thoughts.py`` (the KV-cached stepper) calls them at every generated position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from latentlab.errors import ConfigError


def check_sampling(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """ConfigError unless temperature >= 0, top_k >= 0 (0 = off) and 0 < top_p <= 1 (1 = off)."""
    if temperature < 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def filter_logits(scores: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """``scores`` [..., V] with the entries outside the top-k and then the top-p nucleus set to ``-inf``.

    top-k keeps every entry >= the k-th largest (ties kept, as transformers' ``TopKLogitsWarper``); top-p then keeps,
    in descending order of softmax(scores) after top-k, each token whose preceding mass is < ``top_p``, so the most
    likely token always stays (transformers and vLLM filter in this order too). ``top_k=0`` / ``top_p=1`` are off and
    return ``scores`` itself.
    """
    if 0 < top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p  # mass strictly before each token; never the first one
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return scores


def sampling_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """float32 logits / T with ``filter_logits``'s top-k / top-p applied: log_softmax of it is the distribution
    ``next_token`` samples from at ``temperature`` T > 0 (so the log-prob recorded for a sampled token)."""
    if temperature <= 0:
        raise ConfigError(f"sampling_logits needs temperature > 0, got {temperature}")
    return filter_logits(logits.float() / temperature, top_k, top_p)


def gumbel_noise(shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device=None) -> Tensor:
    """Standard Gumbel(0, 1) draws, float32: -log(-log(u)) with u ~ U(1e-10, 1)."""
    uniform = torch.rand(shape, generator=generator, device=device).clamp_(1e-10, 1.0)
    return -torch.log(-torch.log(uniform))


def gumbel_max(scores: Tensor, generator: torch.Generator | None) -> Tensor:
    """A sample of softmax(scores) per row: argmax of scores + Gumbel noise (``-inf`` entries are never drawn)."""
    return (scores + gumbel_noise(scores.shape, generator, scores.device)).argmax(dim=-1)


def next_token(
    logits: Tensor,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Tensor:
    """argmax of ``logits`` (greedy) or, for ``temperature > 0``, a sample of softmax(``sampling_logits``)
    (Gumbel-max): logits / T, then top-k, then top-p, renormalised over the kept tokens. Greedy ignores top-k / top-p
    (the argmax is always kept). With both off, the draws are those of plain softmax(logits / T) sampling."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    return gumbel_max(sampling_logits(logits, temperature, top_k, top_p), generator)
