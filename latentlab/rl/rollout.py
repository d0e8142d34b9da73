"""Group rollouts for RL: G samples per prompt in one batched KV-cached generation, the rollout log-probs mu they
were drawn with, their teacher-forced recompute pi, and the mu/pi mismatch (spec §3, §5.1/§5.3). ``latent_rollout``
adds recorded continuous thoughts before the language tokens (Latent-GRPO) and ``recompute_latent`` scores both.

Rows are prompt-major, as ``latentlab.rl.advantages`` expects: rows ``p*G .. p*G + G - 1`` are the G samples of
prompt p. T is ``max_new_tokens`` for every row; a row's positions after its first EOS are padding (mask False).
Generation is ``latentlab.reasoning.thoughts.generate_from_ids`` with no thought slot (the one KV-cached stepper), so
mu is recorded by the engine that sampled, under the distribution it sampled from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from latentlab.errors import ConfigError, DataError
from latentlab.reasoning.replay import RecordedThoughts, ThoughtPolicy, recording_thoughts, replaying_thoughts
from latentlab.reasoning.thoughts import (
    GenerationResult,
    _causal_lm,
    _pad,
    check_sampling,
    completion_batch,
    filter_logits,
    generate_from_ids,
    label_logprobs,
    thought_forward,
)

__all__ = [
    "LatentRecomputed",
    "Recomputed",
    "Rollouts",
    "concat_rollouts",
    "latent_rollout",
    "mismatch",
    "recompute_latent",
    "recompute_logprobs",
    "recompute_with_topk",
    "rollout",
    "select_rows",
]


@dataclass
class Rollouts:
    """N = num_prompts * G completions, prompt-major, each over T = ``max_new_tokens`` positions."""

    completion_ids: Tensor
    """[N, T] long: the token chosen at each position, EOS included; ``pad_id`` after it."""
    token_ids: list[list[int]]
    """The completions as lists, up to and excluding EOS (for decoding and rewards)."""
    mask: Tensor
    """[N, T] bool: True on generated positions, up to and including the first EOS (the EOS choice is an action)."""
    lengths: Tensor
    """[N] long: ``mask.sum(1)``, the positions generated (EOS included; T for a truncated row)."""
    truncated: Tensor
    """[N] bool: no EOS within the T positions (the budget ran out)."""
    logprobs: Tensor
    """[N, T] float32: mu, the log-prob of each chosen token under the distribution it was sampled from (after
    temperature and the top-k / top-p renormalisation; T = 1 log_softmax when greedy); 0 on padding."""
    tempered_logprobs: Tensor
    """[N, T] float32: the same tokens under log_softmax(logits / temperature) before top-k / top-p (what
    ``recompute_logprobs`` with no filter gives); equal to ``logprobs`` when no filter is on; 0 on padding."""
    top_logprobs: Tensor | None
    """[N, T, K] float32 with ``top_k_logprobs=K``: mu's K largest log-probs, descending (``-inf`` beyond the tokens
    the filter kept); 0 on padding. None otherwise."""
    top_ids: Tensor | None
    """[N, T, K] long: their ids; ``pad_id`` on padding. None otherwise."""
    group_size: int
    temperature: float
    top_k: int
    top_p: float
    eos_id: int
    pad_id: int
    thoughts: RecordedThoughts | None = None
    """Latent rollouts (``latent_rollout``): what the thought policy fed at each of the n slots, its log-densities
    mu [N, n] and its record (every slot, masked ones too). None for rollouts of language tokens only."""
    thought_mask: Tensor | None = None
    """[N, n] long: 1 on the slots each row used (its chain ended where the policy's ``stop_fn`` said)."""
    eot_id: int | None = None
    """The id fed after the thoughts (``<eot>``) of a latent rollout."""

    @property
    def exited(self) -> Tensor | None:
        """[N] bool, latent rollouts: the chain ended before its n slots ran out (``False``: it never left latent
        mode); None for rollouts of language tokens only."""
        if self.thought_mask is None:
            return None
        return self.thought_mask.sum(dim=1) < self.thought_mask.shape[1]

    @property
    def action_mask(self) -> Tensor | None:
        """[N, n] bool, latent rollouts: the slots whose choice is an action of the thought policy: the used ones and,
        for a chain that ended, the slot where it ended (SofT-GRPO's end token, ATP-Latent's stop, Latent-GRPO's
        noisy record at its exit); None for rollouts of language tokens only."""
        if self.thought_mask is None:
            return None
        used = self.thought_mask.bool()
        n = used.shape[1]
        ended = used.sum(dim=1)
        exit_slot = torch.zeros_like(used)
        rows = torch.nonzero(ended < n).squeeze(-1)
        exit_slot[rows, ended[rows]] = True
        return used | exit_slot

    @property
    def num_prompts(self) -> int:
        return self.completion_ids.shape[0] // self.group_size

    @property
    def completion_lengths(self) -> list[int]:
        """Generated tokens per row, EOS included (the unit of ``length_reward``'s ``completion_lengths``)."""
        return self.lengths.tolist()


def _check_prompts(prompt_ids: Sequence[Sequence[int]]) -> None:
    if not prompt_ids:
        raise DataError("rollout needs at least one prompt")
    empty = [index for index, prompt in enumerate(prompt_ids) if len(prompt) == 0]
    if empty:
        raise DataError(f"prompt {empty[0]} has no tokens; every prompt needs at least one (e.g. a BOS)")


def _repeat(prompt_ids: Sequence[Sequence[int]], group_size: int) -> list[list[int]]:
    """Each prompt G times in a row (prompt-major)."""
    return [list(prompt) for prompt in prompt_ids for _ in range(group_size)]


@torch.no_grad()
def rollout(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    group_size: int,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    top_k_logprobs: int = 0,
) -> Rollouts:
    """G samples of every prompt in one batched generation; see ``Rollouts`` for what is recorded.

    ``temperature`` 0 is greedy (G identical rows); ``top_k`` 0 and ``top_p`` 1 are off (then the draws are plain
    temperature sampling). ``generator`` seeds the draws: the same seed gives the same rollouts.
    """
    if group_size < 1:
        raise ConfigError(f"group_size must be >= 1, got {group_size}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_sampling(temperature, top_k, top_p)
    _check_prompts(prompt_ids)
    result = generate_from_ids(
        model,
        _repeat(prompt_ids, group_size),
        0,
        max_new_tokens,
        eos_id=eos_id,
        eot_id=None,
        pad_id=pad_id,
        temperature=temperature,
        generator=generator,
        top_k_logprobs=top_k_logprobs,
        top_k=top_k,
        top_p=top_p,
    )
    return _as_rollouts(result, group_size, temperature, top_k, top_p, eos_id, pad_id)


def _as_rollouts(
    result: GenerationResult,
    group_size: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_id: int,
    pad_id: int,
    **latent,
) -> Rollouts:
    """The ``Rollouts`` of one ``generate_from_ids`` result (``latent``: the thought fields of a latent rollout)."""
    mask = result.token_mask
    ended = ((result.generated_ids == eos_id) & mask).any(dim=1)
    top_ids = None if result.top_ids is None else result.top_ids.masked_fill(~mask[..., None], pad_id)
    return Rollouts(
        completion_ids=result.generated_ids.masked_fill(~mask, pad_id),
        token_ids=result.token_ids,
        mask=mask,
        lengths=mask.sum(dim=1),
        truncated=~ended,
        logprobs=result.chosen_logprobs,
        tempered_logprobs=result.tempered_logprobs,
        top_logprobs=result.top_logprobs,
        top_ids=top_ids,
        group_size=group_size,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
        pad_id=pad_id,
        **latent,
    )


@torch.no_grad()
def latent_rollout(
    model: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    group_size: int,
    policy: ThoughtPolicy,
    *,
    n_slots: int,
    eot_id: int,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> Rollouts:
    """G latent rollouts of every prompt (each ending in ``<bot>``): up to ``n_slots`` thoughts drawn by ``policy``
    (recorded), ended where its ``stop_fn`` says, then ``eot_id``, then language tokens sampled as ``rollout`` does.

    ``policy`` must have a ``stop_fn(index)`` (e.g. ``GumbelMixturePolicy``). The thought draws and the token draws
    share ``generator``, so a seed gives the same rollouts. ``Rollouts.thoughts`` holds the record of every slot.
    """
    if group_size < 1 or n_slots < 1 or max_new_tokens < 1:
        raise ConfigError(
            f"latent_rollout needs group_size, n_slots and max_new_tokens >= 1, got {group_size}, {n_slots}, "
            f"{max_new_tokens}"
        )
    check_sampling(temperature, top_k, top_p)
    _check_prompts(prompt_ids)
    thought_fn, recorder = recording_thoughts(policy, generator)
    result = generate_from_ids(
        model,
        _repeat(prompt_ids, group_size),
        n_slots,
        max_new_tokens,
        eos_id=eos_id,
        eot_id=eot_id,
        pad_id=pad_id,
        thought_fn=thought_fn,
        temperature=temperature,
        generator=generator,
        stop_fn=policy.stop_fn,
        top_k=top_k,
        top_p=top_p,
    )
    return _as_rollouts(
        result,
        group_size,
        temperature,
        top_k,
        top_p,
        eos_id,
        pad_id,
        thoughts=recorder.recorded(),
        thought_mask=result.thought_mask.long(),
        eot_id=eot_id,
    )


class LatentRecomputed(NamedTuple):
    """What ``recompute_latent`` returns, both with gradients."""

    thought_logp: Tensor
    """[N, n] the policy's log-density of each recorded choice; 0 off ``Rollouts.action_mask`` (the used slots and
    the exit slot)."""
    token_logp: Tensor
    """[N, T] log pi of each completion token at the rollout's temperature (no top-k / top-p); 0 on padding."""


def recompute_latent(
    model: nn.Module,
    policy: ThoughtPolicy,
    rollouts: Rollouts,
    prompt_ids: Sequence[Sequence[int]],
    temperature: float,
    flip: Tensor | None = None,
) -> LatentRecomputed:
    """One training forward over prompt, replayed thoughts, ``<eot>`` and completion (``thought_forward`` with
    ``replaying_thoughts``): the thoughts are fed as recorded (detached), their log-densities and the tokens'
    log-probs recomputed with gradients. ``flip`` [N] bool is passed to the policy as ``sample["flip"]`` (rows with
    A <= 0, for Latent-GRPO's sign-preserving flip)."""
    if rollouts.thoughts is None or rollouts.thought_mask is None:
        raise ConfigError("recompute_latent needs the rollouts of latent_rollout (no thoughts were recorded)")
    if temperature <= 0:
        raise ConfigError(f"recompute_latent needs temperature > 0, got {temperature}")
    _check_prompts(prompt_ids)
    n = rollouts.completion_ids.shape[0]
    if len(prompt_ids) * rollouts.group_size != n:
        raise DataError(
            f"{len(prompt_ids)} prompts x group_size {rollouts.group_size} != {n} rollout rows; pass the prompts the "
            "rollout was generated from"
        )
    lm = _causal_lm(model)
    device = lm.get_input_embeddings().weight.device
    recorded = rollouts.thoughts
    if flip is not None:
        flags = flip.to(device=recorded.fed.device, dtype=torch.bool)[:, None].expand(-1, recorded.n_slots)
        recorded = RecordedThoughts(recorded.fed, recorded.logp, {**recorded.sample, "flip": flags})
    batch = completion_batch(
        _repeat(prompt_ids, rollouts.group_size),
        rollouts.completion_ids.to(device),
        rollouts.mask.to(device),
        rollouts.thought_mask.to(device),
        eot_id=rollouts.eot_id,
        pad_id=rollouts.pad_id,
    )
    thought_fn, trace = replaying_thoughts(policy, recorded)
    out = thought_forward(model, batch, thought_fn=thought_fn)
    offset = 0 if rollouts.eot_id is None else 1
    token_logp = label_logprobs(lm.get_output_embeddings(), out.predictor_hidden, batch.suffix_labels, temperature)
    acted = rollouts.action_mask.to(device)
    thought_logp = torch.where(acted, trace.stacked().float(), 0.0)
    return LatentRecomputed(thought_logp, token_logp[:, offset:].float())


class Recomputed(NamedTuple):
    """What ``recompute_with_topk`` returns: pi at the chosen tokens and, when asked, at other ids."""

    logp: Tensor
    """[N, T] log pi of each completion token (``recompute_logprobs``); 0 on padding."""
    topk_logp: Tensor | None
    """[N, T, K] log pi at ``topk_ids`` under the same scores; 0 on padding. None without ``topk_ids``."""


def recompute_logprobs(
    model: nn.Module,
    rollouts: Rollouts,
    prompt_ids: Sequence[Sequence[int]],
    temperature: float,
    *,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Tensor:
    """pi [N, T]: the log-prob of each completion token under ``model``, by ONE teacher-forced forward over the
    left-padded prompt + completion (no cache, gradients kept); 0 on padding.

    Scored under log_softmax(logits / ``temperature``) with no top-k / top-p by default (TRL's and verl's recompute),
    which matches ``rollouts.tempered_logprobs``, and ``rollouts.logprobs`` when the rollout used no filter. Pass the
    rollout's ``top_k`` / ``top_p`` to score the filtered distribution instead (a token outside the recomputed
    nucleus then gets ``-inf``). Spec §5.3: use the rollout's temperature, or the first ratio is not 1.
    """
    return recompute_with_topk(model, rollouts, prompt_ids, temperature, top_k=top_k, top_p=top_p).logp


def recompute_with_topk(
    model: nn.Module,
    rollouts: Rollouts,
    prompt_ids: Sequence[Sequence[int]],
    temperature: float,
    *,
    topk_ids: Tensor | None = None,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Recomputed:
    """``recompute_logprobs`` plus, from the same forward, log pi at ``topk_ids`` [N, T, K] (e.g. the rollout's
    ``top_ids``, for DPPO's top-K divergences); see ``Recomputed``.

    The ids are scored under the same log_softmax as the chosen tokens, so an id outside a recomputed top-k / top-p
    nucleus gets ``-inf``; with the filters off (the default) every value is finite. Gradients are kept on both.
    """
    if temperature <= 0:
        raise ConfigError(f"recompute_logprobs needs temperature > 0, got {temperature}")
    check_sampling(temperature, top_k, top_p)
    _check_prompts(prompt_ids)
    n, t = rollouts.completion_ids.shape
    if len(prompt_ids) * rollouts.group_size != n:
        raise DataError(
            f"{len(prompt_ids)} prompts x group_size {rollouts.group_size} != {n} rollout rows; pass the prompts the "
            "rollout was generated from"
        )
    if topk_ids is not None and (topk_ids.dim() != 3 or tuple(topk_ids.shape[:2]) != (n, t)):
        raise DataError(f"topk_ids has shape {tuple(topk_ids.shape)}; expected [N, T, K] with [N, T] = {(n, t)}")
    lm = _causal_lm(model)
    device = lm.get_input_embeddings().weight.device
    rows = _repeat(prompt_ids, rollouts.group_size)
    prefix = _pad(rows, rollouts.pad_id, left=True).to(device)
    prefix_mask = _pad([[1] * len(row) for row in rows], 0, left=True).to(device)
    mask = rollouts.mask.to(device)
    ids = torch.cat([prefix, rollouts.completion_ids.to(device)], dim=1)
    attention = torch.cat([prefix_mask, mask.long()], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)  # as the stepper derives them: left pads do not count
    hidden = lm.base_model(
        input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False
    ).last_hidden_state
    start = prefix.shape[1] - 1  # the column that predicts completion token 0
    predictor = hidden[:, start : start + t]  # [N, T, H]
    scores = filter_logits(lm.get_output_embeddings()(predictor[mask]).float() / temperature, top_k, top_p)
    log_probs = scores.log_softmax(dim=-1)  # [M, V], M = active positions
    picked = log_probs.gather(-1, rollouts.completion_ids.to(device)[mask].unsqueeze(-1))
    logp = torch.zeros(n, t, dtype=picked.dtype, device=device).masked_scatter(mask, picked.squeeze(-1))
    if topk_ids is None:
        return Recomputed(logp, None)
    at_ids = log_probs.gather(-1, topk_ids.to(device)[mask])  # [M, K]
    topk_logp = at_ids.new_zeros(n, t, at_ids.shape[-1]).masked_scatter(mask[..., None], at_ids)
    return Recomputed(logp, topk_logp)


def concat_rollouts(parts: Sequence[Rollouts]) -> Rollouts:
    """Several rollouts of the same sampler (e.g. DAPO's draws) as one, rows in order; the prompts of the result
    are the parts' prompts in the same order. All parts share T (``max_new_tokens``) and the sampling settings."""
    if not parts:
        raise DataError("concat_rollouts needs at least one Rollouts")
    first = parts[0]
    if len(parts) == 1:
        return first
    settings = ("group_size", "temperature", "top_k", "top_p", "eos_id", "pad_id")
    for index, part in enumerate(parts[1:], start=1):
        differ = [key for key in settings if getattr(part, key) != getattr(first, key)]
        if differ or part.completion_ids.shape[1] != first.completion_ids.shape[1]:
            raise DataError(
                f"rollouts {index} differs from rollouts 0 in {differ or ['T (max_new_tokens)']}; concat_rollouts "
                "joins rollouts of one sampler"
            )
        if (part.top_ids is None) != (first.top_ids is None):
            raise DataError(f"rollouts {index} and rollouts 0 disagree on whether top-K log-probs were recorded")
        if (part.thoughts is None) != (first.thoughts is None) or (
            part.thoughts is not None and part.thoughts.n_slots != first.thoughts.n_slots
        ):
            raise DataError(f"rollouts {index} and rollouts 0 differ in their thought slots")

    def cat(name: str) -> Tensor | None:
        values = [getattr(part, name) for part in parts]
        return None if values[0] is None else torch.cat(values)

    tensors = ("completion_ids", "mask", "lengths", "truncated", "logprobs", "tempered_logprobs")
    thoughts = None
    if first.thoughts is not None:
        recorded = [part.thoughts for part in parts]
        thoughts = RecordedThoughts(
            fed=torch.cat([r.fed for r in recorded]),
            logp=torch.cat([r.logp for r in recorded]),
            sample={key: torch.cat([r.sample[key] for r in recorded]) for key in first.thoughts.sample},
        )
    return dataclasses.replace(
        first,
        **{name: cat(name) for name in (*tensors, "top_logprobs", "top_ids", "thought_mask")},
        token_ids=[row for part in parts for row in part.token_ids],
        thoughts=thoughts,
    )


def select_rows(rolled: Rollouts, rows: Tensor) -> Rollouts:
    """The rollouts of ``rows`` (whole groups, in group order, so the result is prompt-major again)."""

    def take(value: Tensor | None) -> Tensor | None:
        return None if value is None else value[rows]

    tensors = ("completion_ids", "mask", "lengths", "truncated", "logprobs", "tempered_logprobs", "top_logprobs")
    return dataclasses.replace(
        rolled,
        **{name: take(getattr(rolled, name)) for name in (*tensors, "top_ids", "thought_mask")},
        token_ids=[rolled.token_ids[i] for i in rows.tolist()],
        thoughts=None if rolled.thoughts is None else rolled.thoughts.rows(rows.to(rolled.thoughts.fed.device)),
    )


@torch.no_grad()
def mismatch(mu: Tensor, pi: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Training-inference mismatch of the sampled tokens (Precision-RL's metrics), detached.

    mu, pi: [N, T] log-probs, mask: [N, T]. Returns ``mean_abs_prob_diff`` (masked mean of |exp(pi) - exp(mu)|),
    ``max_abs_prob_diff``, ``log_ratio`` [N] (per sequence, sum_t M (pi - mu) = log pi(y)/mu(y)) and its
    ``log_ratio_mean`` / ``log_ratio_std`` over sequences (unbiased; 0 for one sequence), plus ``token_log_ratio_mean``
    (masked mean of pi - mu; ~0 before any update, spec §5.3).
    """
    if mu.shape != pi.shape or mu.shape != mask.shape or mu.dim() != 2:
        raise DataError(f"mu {tuple(mu.shape)}, pi {tuple(pi.shape)} and mask {tuple(mask.shape)} must be equal [N, T]")
    m = mask.to(device=mu.device, dtype=torch.bool)
    mu, pi = mu.detach().float(), pi.detach().float()
    diff = torch.where(m, pi - mu, torch.zeros_like(mu))
    gap = torch.where(m, (pi.exp() - mu.exp()).abs(), torch.zeros_like(mu))
    count = m.sum().clamp(min=1)
    log_ratio = diff.sum(dim=1)
    std = log_ratio.std() if log_ratio.numel() > 1 else log_ratio.new_zeros(())
    return {
        "mean_abs_prob_diff": gap.sum() / count,
        "max_abs_prob_diff": gap.max() if gap.numel() else gap.new_zeros(()),
        "token_log_ratio_mean": diff.sum() / count,
        "log_ratio": log_ratio,
        "log_ratio_mean": log_ratio.mean(),
        "log_ratio_std": std,
    }
