"""ATP-Latent's RL actions (spec latent_reasoning §2.3, §5.5): the CVAE's Gaussian latent and its stop head as one
thought policy, for ``latentlab.rl.rollout.latent_rollout`` and for sampled answers.

Shapes: B rows, n thought slots, c = thoughts per step (``cvae.config.thoughts_per_step``), Z latent dim, H reasoner
hidden size.

One slot's log-probability in the RL loss is ``ATPLatentPolicy``'s: the Gaussian latent's plus log P(continue) at a
step start, and log P(stop) alone at the slot where the chain stops (``Rollouts.action_mask`` counts that slot), as
the reference adds log P(continue) to the latent's density and puts log P(stop) after the last latent.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentlab.errors import ConfigError
from latentlab.reasoning.cvae import LatentStepCVAE, reparameterize
from latentlab.reasoning.replay import ThoughtDraw

__all__ = ["ATPLatentPolicy", "GaussianThoughtPolicy", "gaussian_logp_per_dim"]

_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------- the Gaussian latent


def gaussian_logp_per_dim(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) of a diagonal Gaussian, *averaged* over the latent dim: [..., Z] -> [...] float32.

    Per dim: -0.5 * (log 2 pi + logvar + (z - mu)^2 / exp(logvar)). The mean, not the sum: the reference sums over
    2048 dims, so a small change of mu moves the log-ratio by thousands of nats and its ratios explode (it survives
    only through the [-3, 3] clamp on the log-ratio; spec §5.5). The mean keeps a ratio's scale independent of Z.
    """
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    per_dim = -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))
    return per_dim.mean(dim=-1)


class GaussianThoughtPolicy:
    """ATP-Latent's latent action as a ``ThoughtPolicy``: z ~ N(mu(h), sigma(h)^2) from ``LatentStepCVAE.text_free_distribution``, fed
    as ``cvae.to_thought(z)``, scored by ``gaussian_logp_per_dim``.

    The exploration noise is the learned sigma, as in the reference rollout. ``log_prob`` scores the recorded z (its
    ``fed`` argument, ``to_thought(z)``, is replayed as is), so RL gradients reach the Gaussian heads and, through
    ``hidden``, the reasoner, but not ``to_thought``. Greedy evaluation is ``cvae.inference_hook`` with
    ``inference: mean``.
    """

    def __init__(self, cvae: LatentStepCVAE):
        self.cvae = cvae

    def draw(self, index: int, hidden: Tensor, generator: torch.Generator | None) -> ThoughtDraw:
        """hidden [B, H] -> fed [B, H], logp [B] (per-dim mean), sample {"z": [B, Z]}; noise from ``generator``."""
        mu, logvar = self.cvae.text_free_distribution(hidden)
        z = reparameterize(mu, logvar, generator)
        fed = self.cvae.to_thought(z).to(hidden.dtype)
        return ThoughtDraw(fed, gaussian_logp_per_dim(z, mu, logvar), {"z": z})

    def log_prob(self, index: int, hidden: Tensor, fed: Tensor, sample: dict[str, Tensor]) -> Tensor:
        """The per-dim mean log-density [B] of the recorded ``sample["z"]`` [B, Z] under the Gaussian of hidden [B, H]."""
        mu, logvar = self.cvae.text_free_distribution(hidden)
        return gaussian_logp_per_dim(sample["z"].to(mu.device), mu, logvar)


# ---------------------------------------------------------------- the latent and its stop decision, one policy


class ATPLatentPolicy:
    """ATP-Latent's RL action per slot (a ``ThoughtPolicy`` with a ``stop_fn``, for ``latent_rollout``): z from
    ``GaussianThoughtPolicy`` and, with a stop head, at step starts (slots 0, c, 2c, ...) a sampled decision
    stop ~ Bernoulli(softmax(stop logits of that z)[1]) from the rollout's generator.

    The log-probability of a slot is the Gaussian's (per-dim mean) plus log P(continue) at a step start; at the slot
    where a row stops it is log P(stop) alone (that z is never fed: the slot is masked). So with the rollout's
    ``action_mask`` (the used slots and the stop slot) the sum over slots is the reference's: the latents' densities
    with log P(continue) added, and log P(stop) after the last latent. Off step boundaries there is no decision.
    Without a stop head no row stops: every chain runs its n slots. The record is {"z", "stop"} per slot.
    """

    def __init__(self, cvae: LatentStepCVAE):
        self.gaussian = GaussianThoughtPolicy(cvae)
        self.cvae = cvae
        self.per_step = cvae.config.thoughts_per_step
        self.exiting: Tensor | None = None

    def _decision_logp(self, index: int, z: Tensor) -> Tensor | None:
        """[B, 2] log (P(continue), P(stop)) at a step start, None elsewhere or without a stop head."""
        if self.cvae.stop is None or index % self.per_step:
            return None
        return self.cvae.stop(z).float().log_softmax(dim=-1)

    def _combine(self, index: int, z: Tensor, gaussian: Tensor, stop: Tensor) -> Tensor:
        decision = self._decision_logp(index, z)
        if decision is None:
            return gaussian
        return torch.where(stop, decision[:, 1], gaussian + decision[:, 0])

    def draw(self, index: int, hidden: Tensor, generator: torch.Generator | None) -> ThoughtDraw:
        drawn = self.gaussian.draw(index, hidden, generator)
        z = drawn.sample["z"]
        decision = self._decision_logp(index, z)
        if decision is None:
            stop = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        else:
            stop = torch.bernoulli(decision[:, 1].exp(), generator=generator).bool()
        self.exiting = stop
        logp = self._combine(index, z, drawn.logp, stop)
        return ThoughtDraw(drawn.fed, logp, {"z": z, "stop": stop.float()})

    def log_prob(self, index: int, hidden: Tensor, fed: Tensor, sample: dict[str, Tensor]) -> Tensor:
        if "z" not in sample or "stop" not in sample:
            raise ConfigError("ATPLatentPolicy.log_prob needs the recorded 'z' and 'stop' of each slot")
        z = sample["z"].to(hidden.device)
        gaussian = self.gaussian.log_prob(index, hidden, fed, sample)
        return self._combine(index, z, gaussian, sample["stop"].bool().to(hidden.device))

    def stop_fn(self, index: int) -> Tensor:
        """Rows that stop at this slot (sampled by ``draw``)."""
        if self.exiting is None:
            raise ConfigError("ATPLatentPolicy.stop_fn ran before draw at this slot")
        return self.exiting
