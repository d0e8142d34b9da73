"""ATP-Latent's RL actions and reward: the CVAE's Gaussian latent and its stop head as policies, and the coherence
of the steps the frozen decoder reads back from the latents (spec latent_reasoning §2.3, §5.5).

Shapes: B rows, n thought slots, c = thoughts per step (``cvae.config.thoughts_per_step``), Z latent dim, H reasoner
hidden size.

One slot's log-probability in the RL loss is ``GaussianThoughtPolicy``'s (recorded by ``recording_thoughts``, masked
with the rollout's ``thought_mask``) plus ``StopPolicy``'s (not masked: its "stop" entry sits on the first masked
slot), as the reference adds log P(continue) to the latent's density and puts log P(stop) after the last latent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from latentlab.errors import ConfigError, DataError
from latentlab.eval.metrics import answers_match
from latentlab.reasoning.curriculum import extract_answer
from latentlab.reasoning.cvae import LatentStepCVAE, decode_steps, reparameterize
from latentlab.reasoning.replay import ThoughtDraw, ThoughtRecorder
from latentlab.reasoning.thoughts import StopFn
from latentlab.rl.rewards import REWARDS, _column

__all__ = [
    "GaussianThoughtPolicy",
    "StopPolicy",
    "StopRecord",
    "coherence",
    "coherence_reward",
    "decode_latent_steps",
    "gaussian_logp_per_dim",
    "step_result",
]

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


# ---------------------------------------------------------------- the stop head


@dataclass
class StopRecord:
    """The stop decisions of one rollout, filled slot by slot by ``StopPolicy.sampler``'s ``stop_fn``."""

    slot_logp: list[Tensor] = field(default_factory=list)
    """One [B] per slot: log P(decision taken) at a live row's step start, 0 elsewhere."""
    stop_slot: Tensor | None = None
    """[B] long: the slot where a row stopped, -1 while it has not (``stopped_at`` reads it)."""

    @property
    def logp(self) -> Tensor:
        """[B, n]: log P(continue) at each step start a row used, log P(stop) at the slot where it stopped, 0 elsewhere.

        Add it to the thought log-densities *after* masking those with ``thought_mask``; do not mask this one.
        """
        if not self.slot_logp:
            raise ConfigError("no stop decision was recorded (the rollout had no thought slot)")
        return torch.stack(self.slot_logp, dim=1)

    @property
    def stopped_at(self) -> Tensor:
        """[B] long: the slot where each row stopped (a multiple of c), n for a row that used every slot; this is
        the rollout's ``thought_mask.sum(1)``."""
        if self.stop_slot is None:
            raise ConfigError("no stop decision was recorded (the rollout had no thought slot)")
        n = len(self.slot_logp)
        return torch.where(self.stop_slot < 0, torch.full_like(self.stop_slot, n), self.stop_slot)


class StopPolicy:
    """ATP-Latent's stop head as an action: stop ~ Bernoulli(softmax(stop logits of the z just drawn)[1]) at step
    starts (slots 0, c, 2c, ...) only; a row that stops at slot t masks t and every later slot.

    Rollout: ``thought_fn, recorder = recording_thoughts(GaussianThoughtPolicy(cvae), generator)``,
    ``stop_fn, record = StopPolicy(cvae).sampler(recorder, generator)``, then ``generate_from_ids(...,
    thought_fn=thought_fn, stop_fn=stop_fn)``; keep ``record.stopped_at``. Training: ``log_prob(z, stopped_at)``
    recomputes ``record.logp.sum(1)`` with gradients from the recorded z ([B, n, Z], ``recorded().sample["z"]``).
    Every row must be given all n slots (the reference's fixed budget of 20): a row's own shorter ``n_thoughts``
    is not known here.
    """

    def __init__(self, cvae: LatentStepCVAE):
        if cvae.stop is None:
            raise ConfigError("StopPolicy needs a CVAE with a stop head (cvae.stop_head: true)")
        self.cvae = cvae
        self.per_step = cvae.config.thoughts_per_step

    def sampler(self, recorder: ThoughtRecorder, generator: torch.Generator | None = None) -> tuple[StopFn, StopRecord]:
        """A ``stop_fn`` for ``generate_from_ids`` reading the z that ``recorder``'s thought hook drew at the same
        slot (``sample["z"]``, so the hook must be ``recording_thoughts(GaussianThoughtPolicy(...))``), and the
        record it fills."""
        record = StopRecord()

        def stop_fn(index: int) -> Tensor:
            if len(recorder.draws) != index + 1 or "z" not in recorder.draws[-1].sample:
                raise ConfigError(
                    f"stop sampler at slot {index} found {len(recorder.draws)} recorded draws; pass the recorder of "
                    "this generation's recording_thoughts(GaussianThoughtPolicy(...)) hook"
                )
            z = recorder.draws[-1].sample["z"]  # [B, Z]
            if index == 0:
                record.stop_slot = torch.full((z.shape[0],), -1, dtype=torch.long, device=z.device)
            live = record.stop_slot < 0
            if index % self.per_step:
                record.slot_logp.append(torch.zeros(z.shape[0], device=z.device))
                return torch.zeros_like(live)
            with torch.no_grad():
                logp = self.cvae.stop(z).float().log_softmax(dim=-1)  # [B, 2]
            stopping = torch.bernoulli(logp[:, 1].exp(), generator=generator).bool() & live
            taken = torch.where(stopping, logp[:, 1], logp[:, 0])
            record.slot_logp.append(torch.where(live, taken, torch.zeros_like(taken)))
            record.stop_slot[stopping] = index
            return stopping

        return stop_fn, record

    def slot_log_probs(self, z: Tensor, stopped_at: Tensor) -> Tensor:
        """z [B, n, Z] as drawn, stopped_at [B] (``StopRecord.stopped_at``) -> [B, n] float32, with gradients: what
        the sampler recorded in ``StopRecord.logp``. A stop off a step start is not an action this policy takes."""
        n = z.shape[1]
        stopped_at = stopped_at.to(device=z.device, dtype=torch.long)
        bad = (stopped_at < 0) | (stopped_at > n) | ((stopped_at % self.per_step != 0) & (stopped_at != n))
        if bad.any():
            row = int(bad.nonzero()[0])
            raise DataError(
                f"stopped_at[{row}] is {int(stopped_at[row])}; expected a step start (a multiple of "
                f"thoughts_per_step={self.per_step}) in [0, {n}), or {n} for a row that used every slot"
            )
        logp = self.cvae.stop_logits(z).float().log_softmax(dim=-1)  # [B, G, 2]
        starts = torch.arange(0, n, self.per_step, device=z.device)  # [G]
        cont = starts[None, :] < stopped_at[:, None]
        stop = starts[None, :] == stopped_at[:, None]
        zero = logp.new_zeros(())
        per_start = torch.where(cont, logp[..., 0], zero) + torch.where(stop, logp[..., 1], zero)  # [B, G]
        per_slot = F.pad(per_start.unsqueeze(-1), (0, self.per_step - 1))  # [B, G, c]: decisions sit at offset 0
        return rearrange(per_slot, "b g c -> b (g c)")[:, :n]

    def log_prob(self, z: Tensor, stopped_at: Tensor) -> Tensor:
        """The log-probability [B] of a rollout's stop decisions: ``slot_log_probs(z, stopped_at).sum(1)``."""
        return self.slot_log_probs(z, stopped_at).sum(dim=1)


# ---------------------------------------------------------------- decoding the latents into steps


def decode_latent_steps(
    cvae: LatentStepCVAE, z: Tensor, n_used: Tensor, eos_id: int, tokenizer, max_len: int = 16
) -> list[list[str]]:
    """The step texts the frozen decoder reads from each row's used latents, greedy, at most ``max_len`` tokens.

    z: [B, n, Z] per slot; n_used: [B] slots each row used (``thought_mask.sum(1)``) -> B lists of n_used // c texts
    (a partial last step is dropped, as the reference's floor). One batched ``decode_steps`` call for all rows.
    """
    b, n = z.shape[:2]
    c = cvae.config.thoughts_per_step
    n_used = torch.as_tensor(n_used, device=z.device).long()
    if n_used.shape != (b,) or bool(((n_used < 0) | (n_used > n)).any()):
        raise DataError(f"n_used must be [{b}] counts in [0, {n}] (the slots each row used), got {n_used.tolist()}")
    steps = n // c
    grouped = rearrange(z[:, : steps * c], "b (k c) d -> b k c d", c=c)
    used = n_used // c  # [B]
    keep = torch.arange(steps, device=z.device)[None, :] < used[:, None]  # [B, K]
    texts: list[str] = []
    if bool(keep.any()):
        with torch.no_grad():
            texts = decode_steps(cvae.decoder, grouped[keep].detach(), eos_id, max_len, tokenizer)
    rows, start = [], 0
    for count in used.tolist():
        rows.append(list(texts[start : start + count]))
        start += count
    return rows


# ---------------------------------------------------------------- coherence


def step_result(step_text: str) -> str | None:
    """The result of a decoded step: the text after its last "=", up to ">>" or the end, stripped.

    ``"<<3*4=12>>" -> "12"``, ``"3*4=12" -> "12"``, ``"<<3*4=12" -> "12"`` (truncated); None when the step has no
    "=" or nothing after it (``"<<3*4=>>"``).
    """
    _, sep, tail = step_text.rpartition("=")
    result = tail.split(">>", 1)[0].strip() if sep else ""
    return result or None


def _mentions(text: str, result: str) -> bool:
    """``result`` occurs in ``text`` as a whole token: not inside a longer word or number ("2" is not in "12",
    "5" not in "0.5", "12" not in "12.5"); a sign or operator before it is fine ("3" is in "5-3")."""
    return re.search(rf"(?<![\w.]){re.escape(result)}(?!\w|\.\d)", text) is not None


def coherence(decoded_steps: Sequence[str], answer: str) -> float:
    """ATP-Latent's coherence of decoded steps: the fraction of steps whose result is used later.

    A step i < last counts when its result occurs in some later step; the last step counts when its result occurs
    in the predicted ``answer`` (or equals it as a number: "34" and "34.0"). 1.0 when there are no steps, as the
    reference. Departures from the reference, on purpose: a step without a result (``step_result`` None) never
    counts, where the reference's empty result is a substring of everything; and results match as whole tokens
    (``_mentions``), where the reference's plain substring test lets "2" match "<<3*4=12>>".
    """
    if not decoded_steps:
        return 1.0
    results = [step_result(step) for step in decoded_steps]
    matched = 0
    for i, result in enumerate(results[:-1]):
        matched += result is not None and any(_mentions(later, result) for later in decoded_steps[i + 1 :])
    last = results[-1]
    matched += last is not None and (_mentions(answer, last) or answers_match(last, answer))
    return matched / len(decoded_steps)


@REWARDS.register("coherence")
def coherence_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
    """``coherence`` of the column ``decoded_steps`` (one list of step texts per completion, from
    ``decode_latent_steps``) against the completion's answer (``extract_answer``, after the last "###").

    With a column ``gate`` (one number or None per completion) the score is coherence * gate, so that gate = the
    answer reward gives the reference's 0.1 * coherence * acc term; a None gate gives None (not scorable).
    """
    n = len(completions)
    decoded = _column(columns, "decoded_steps", "coherence", n)
    gates = _column(columns, "gate", "coherence", n) if "gate" in columns else [1.0] * n
    scores: list[float | None] = []
    for i, (completion, steps, gate) in enumerate(zip(completions, decoded, gates)):
        if not isinstance(steps, (list, tuple)) or not all(isinstance(step, str) for step in steps):
            raise DataError(f"decoded_steps[{i}] is {steps!r}; expected a list of step texts")
        scores.append(None if gate is None else coherence(steps, extract_answer(completion)) * float(gate))
    return scores
