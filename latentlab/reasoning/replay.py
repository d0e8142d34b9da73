"""Record and replay continuous thoughts: a rollout records what a thought policy fed (and what it needs to
recompute its log-density); a training forward replays exactly those thoughts and recomputes the log-density with
gradients. Both are ``ThoughtFn`` hooks for ``thoughts.thought_forward`` / ``generate_from_ids``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from latentlab.errors import ConfigError

ThoughtFn = Callable[[int, Tensor], Tensor]
"""A thought hook: (slot index, last hidden state [B, H]) -> the embedding fed as that thought [B, H]."""


@dataclass
class ThoughtDraw:
    """What a stochastic thought policy chose at one slot, for every row."""

    fed: Tensor
    """[B, H] the thought fed at this slot."""
    logp: Tensor
    """[B] the log-density of this choice under the policy (of ``fed``, of a latent z, ...: the policy defines it)."""
    sample: dict[str, Tensor] = field(default_factory=dict)
    """Whatever else ``log_prob`` needs to recompute ``logp`` (the noise, the sampled z, ...), each [B, ...]."""


class ThoughtPolicy(Protocol):
    """A stochastic thought hook whose choices can be recorded at rollout time and scored again in training.

    ``draw`` runs in the rollout (usually under ``torch.no_grad``); ``log_prob`` runs in the training forward on the
    *recomputed* hidden state before the slot, with gradients, and must return ``draw``'s ``logp`` when nothing has
    changed (same parameters, same hidden). Its gradient reaches the policy's parameters and, through ``hidden``,
    the reasoner.
    """

    def draw(self, index: int, hidden: Tensor, generator: torch.Generator | None) -> ThoughtDraw:
        """Slot ``index``, hidden [B, H] (the last hidden state before the slot) -> the choice and its log-density."""
        ...

    def log_prob(self, index: int, hidden: Tensor, fed: Tensor, sample: dict[str, Tensor]) -> Tensor:
        """The log-density [B] of a recorded choice (``fed`` [B, H], ``sample`` as drawn) given hidden [B, H]."""
        ...


@dataclass
class RecordedThoughts:
    """A rollout's thoughts, stacked over slots: what ``replaying_thoughts`` feeds and scores again.

    Every slot is recorded, masked ones too (``GenerationResult.thought_mask`` says which slots count).
    """

    fed: Tensor
    """[B, n, H] the thoughts fed."""
    logp: Tensor
    """[B, n] their log-density at rollout time (the behaviour policy's, for importance ratios)."""
    sample: dict[str, Tensor] = field(default_factory=dict)
    """Each [B, n, ...]: the policy's extra record per slot (``ThoughtDraw.sample``)."""

    @property
    def n_slots(self) -> int:
        return self.fed.shape[1]

    def rows(self, index: Tensor | slice | Sequence[int]) -> RecordedThoughts:
        """The recording of a subset of rows (a training micro-batch of rollouts)."""
        if not isinstance(index, slice | Tensor):
            index = torch.as_tensor(list(index), dtype=torch.long, device=self.fed.device)
        return RecordedThoughts(self.fed[index], self.logp[index], {k: v[index] for k, v in self.sample.items()})


class ThoughtRecorder:
    """Collects the ``ThoughtDraw`` of each slot (detached) as ``recording_thoughts``'s hook runs."""

    def __init__(self) -> None:
        self.draws: list[ThoughtDraw] = []

    def recorded(self) -> RecordedThoughts:
        """The draws so far stacked over slots; a rollout with no thought slot cannot be recorded."""
        if not self.draws:
            raise ConfigError("no thought was recorded (the rollout had no thought slot)")
        keys = self.draws[0].sample.keys()
        return RecordedThoughts(
            fed=torch.stack([d.fed for d in self.draws], dim=1),
            logp=torch.stack([d.logp for d in self.draws], dim=1),
            sample={k: torch.stack([d.sample[k] for d in self.draws], dim=1) for k in keys},
        )


def recording_thoughts(
    policy: ThoughtPolicy, generator: torch.Generator | None = None
) -> tuple[ThoughtFn, ThoughtRecorder]:
    """A ``thought_fn`` feeding ``policy.draw``'s thoughts, and the recorder it fills (one draw per slot).

    Use it as the outermost hook: a wrapper that changes what is fed (``shuffled_thoughts``, ``noisy_thoughts``)
    would make the recording differ from ``GenerationResult.thought_inputs``.
    """
    recorder = ThoughtRecorder()

    def thought_fn(index: int, hidden: Tensor) -> Tensor:
        draw = policy.draw(index, hidden, generator)
        recorder.draws.append(
            ThoughtDraw(draw.fed.detach(), draw.logp.detach(), {k: v.detach() for k, v in draw.sample.items()})
        )
        return draw.fed

    return thought_fn, recorder


@dataclass
class ReplayTrace:
    """The log-densities ``replaying_thoughts``'s hook recomputed, one [B] tensor per slot, with gradients."""

    logp: list[Tensor] = field(default_factory=list)

    def stacked(self) -> Tensor:
        """[B, n] (multiply by the thought mask before summing)."""
        return torch.stack(self.logp, dim=1)


def replaying_thoughts(policy: ThoughtPolicy, recorded: RecordedThoughts) -> tuple[ThoughtFn, ReplayTrace]:
    """A ``thought_fn`` for ``thought_forward`` that feeds exactly the recorded thoughts and scores them again.

    At slot t it feeds ``recorded.fed[:, t]`` (detached, as Latent-GRPO and SofT-GRPO rebuild their soft inputs) and
    appends ``policy.log_prob(t, hidden, fed, sample)`` to the trace, computed with gradients on the hidden state the
    training forward recomputed. Since the chain is cut at the thoughts, their effect on what follows reaches the
    gradient only through these log-densities (a score-function estimator).
    """
    trace = ReplayTrace()

    def thought_fn(index: int, hidden: Tensor) -> Tensor:
        if index >= recorded.n_slots or recorded.fed.shape[0] != hidden.shape[0]:
            raise ConfigError(
                f"replayed thoughts are [{recorded.fed.shape[0]} rows, {recorded.n_slots} slots]; the forward asks "
                f"for slot {index} of {hidden.shape[0]} rows"
            )
        fed = recorded.fed[:, index].to(device=hidden.device, dtype=hidden.dtype)
        sample = {k: v[:, index].to(hidden.device) for k, v in recorded.sample.items()}
        trace.logp.append(policy.log_prob(index, hidden, fed, sample))
        return fed

    return thought_fn, trace
