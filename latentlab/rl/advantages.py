"""Group-relative advantages (GRPO, batch-scaled, Dr.GRPO) and DAPO's dynamic sampling of informative groups.

Rewards arrive flat, [N] = [num_prompts * G] and prompt-major (prompt p owns samples p*G .. p*G + G - 1); every
function views them as [num_prompts, G] and works on whole groups at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from latentlab.configs.rl import AdvantageConfig
from latentlab.errors import ConfigError, DataError

__all__ = [
    "FillInfo",
    "GenerationBatch",
    "fill_batch",
    "first_token_selection",
    "group_advantages",
    "group_view",
    "keep_informative_groups",
]


def group_view(values: Tensor, group_size: int) -> Tensor:
    """values: [N] prompt-major -> [num_prompts, G]; a G that does not divide N is a ConfigError."""
    if values.dim() != 1:
        raise DataError(f"rewards must be flat [num_prompts * group_size], got shape {tuple(values.shape)}")
    n = values.shape[0]
    if n % group_size:
        raise ConfigError(
            f"advantage.group_size={group_size} does not divide the batch's N={n} rewards; expected N = num_prompts * "
            "group_size (the G completions of each prompt side by side): set group_size to the G the rollout used"
        )
    return rearrange(values, "(p g) -> p g", g=group_size)


def _grouped(rewards: Tensor, valid: Tensor | None, group_size: int) -> tuple[Tensor, Tensor]:
    """rewards, valid: [N] -> float64 rewards [P, G] and bool valid [P, G]; valid rewards must be finite."""
    grouped = group_view(rewards, group_size).to(torch.float64)
    if valid is None:
        mask = torch.ones_like(grouped, dtype=torch.bool)
    else:
        if valid.shape != rewards.shape:
            raise DataError(f"valid has shape {tuple(valid.shape)} but rewards {tuple(rewards.shape)}; expected equal")
        mask = group_view(valid, group_size).to(device=grouped.device, dtype=torch.bool)
    bad = mask & ~torch.isfinite(grouped)
    if bad.any():
        index = int(bad.flatten().nonzero()[0])
        raise DataError(
            f"reward at sample {index} is {float(grouped.flatten()[index])}; a valid sample needs a finite reward "
            "(mark unscorable samples valid=False instead)"
        )
    return grouped, mask


def _moments(values: Tensor, mask: Tensor, dim: int | None, unbiased: bool) -> tuple[Tensor, Tensor]:
    """Mean and std of the masked-in entries along ``dim`` (all of them when None), dims kept.

    An empty or single-entry reduction gets std 0 (the caller never divides by it: see ``_varies``).
    """
    dims = tuple(range(values.dim())) if dim is None else (dim,)
    count = mask.sum(dims, keepdim=True)
    mean = torch.where(mask, values, 0.0).sum(dims, keepdim=True) / count.clamp(min=1)
    squares = torch.where(mask, (values - mean) ** 2, 0.0).sum(dims, keepdim=True)
    dof = count - 1 if unbiased else count
    return mean, (squares / dof.clamp(min=1)).sqrt()


def _varies(grouped: Tensor, mask: Tensor) -> Tensor:
    """[P, G] -> [P, 1] bool: the group has two or more valid samples whose rewards are not all equal.

    Exact comparison, not std > 0: the mean of equal floats is not always that float, and a residue of 1e-17
    divided by a std of 1e-17 (eps 0) would be a spurious advantage of +-1.
    """
    highest = torch.where(mask, grouped, -torch.inf).amax(dim=1, keepdim=True)
    lowest = torch.where(mask, grouped, torch.inf).amin(dim=1, keepdim=True)
    return (mask.sum(dim=1, keepdim=True) >= 2) & (highest > lowest)


def group_advantages(rewards: Tensor, config: AdvantageConfig, valid: Tensor | None = None) -> Tensor:
    """A = (r - group mean) / (scale + eps) for the G completions of each prompt.

    rewards: [N] = [num_prompts * G], prompt-major; valid: [N] bool or None (all valid). Returns [N] advantages in
    the rewards' floating dtype (float32 for integer rewards), computed in float64.

    ``config.scale_rewards`` picks the scale (``config.std``: unbiased n - 1 as TRL and verl, or population n as CoT2):

    | scale_rewards | scale | who |
    |---|---|---|
    | group | std of the group's valid rewards | GRPO (TRL's default) |
    | batch | std of all valid raw rewards of the batch, as TRL (not of the centred ones) | TRL "batch" |
    | none  | 1 (and eps is not added): A = r - group mean | Dr.GRPO |

    Rules that make the edge cases explicit:
    - ``valid=False`` samples (truncated or unparsable rollouts, spec §5.7) get A = 0 and are left out of their
      group's mean and std, and of the batch std, so they cannot set the baseline. Their reward may be NaN.
    - A group whose valid rewards are all equal gets A = 0 everywhere (no learning signal; DAPO drops such groups).
    - A group with a single valid sample also gets A = 0. The reference (Latent-GRPO's verl advantage) falls back to
      mean 0, std 1 there, so that sample gets its raw reward as advantage: an unbaselined signal on a different
      scale from every other group's, given only because its siblings failed. With no sibling there is no group
      baseline, so we give no signal, the same as for a group that all succeeded or all failed.
    """
    grouped, mask = _grouped(rewards, valid, config.group_size)
    mean, group_std = _moments(grouped, mask, dim=1, unbiased=config.std == "unbiased")
    centred = grouped - mean
    if config.scale_rewards == "group":
        normalised = centred / (group_std + config.eps)
    elif config.scale_rewards == "batch":
        _, batch_std = _moments(grouped, mask, dim=None, unbiased=config.std == "unbiased")
        normalised = centred / (batch_std + config.eps)
    elif config.scale_rewards == "none":
        normalised = centred
    else:
        raise ConfigError(
            f"advantage.scale_rewards={config.scale_rewards!r} is unknown; expected one of group, batch, none"
        )
    # Where A is set to 0 the division may have been 0/0; torch.where keeps that NaN out of the result.
    advantages = torch.where(mask & _varies(grouped, mask), normalised, 0.0)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    return rearrange(advantages, "p g -> (p g)").to(out_dtype)


def keep_informative_groups(rewards: Tensor, group_size: int, valid: Tensor | None = None) -> Tensor:
    """DAPO's filter: rewards [N] -> [num_prompts] bool, False for a group whose (valid) rewards are all equal.

    The kept groups are exactly those where ``group_advantages`` can be non-zero: at least two valid samples with
    different rewards. rewards may be NaN where valid is False.
    """
    grouped, mask = _grouped(rewards, valid, group_size)
    return _varies(grouped, mask).squeeze(1)


@dataclass
class GenerationBatch:
    """One batch of rollouts as dynamic sampling sees it: rewards per sample and a payload it never looks into.

    ``payload[p]`` is everything of prompt p's group the trainer needs (token ids, masks, rollout log-probs, ...);
    ``fill_batch`` only indexes it by group and collects the kept items, in order, into a list. A tensor
    [num_prompts, ...] or a list of per-prompt records both qualify.
    """

    rewards: Tensor
    """[num_prompts * G] prompt-major total rewards (NaN allowed where valid is False)."""
    payload: Sequence[Any]
    """len num_prompts; item p belongs to the group of rewards p*G .. p*G + G - 1."""
    valid: Tensor | None = None
    """[num_prompts * G] bool, False for samples that must not set a baseline; None = all valid."""


@dataclass
class FillInfo:
    """What ``fill_batch`` did: how many draws it took and whether it filled the batch."""

    draws: int
    """Generation batches drawn (1 .. max_draws)."""
    groups_drawn: int
    """Groups in all the draws together."""
    informative_groups: int
    """Of those, groups whose rewards differ (the excess over want_groups in the last draw is dropped)."""
    groups_kept: int
    """Groups in the returned batch."""
    full: bool
    """groups_kept >= want_groups; False means max_draws ran out and the batch is short (train on what there is)."""


def fill_batch(
    draw: Callable[[], GenerationBatch], want_groups: int, config: AdvantageConfig
) -> tuple[GenerationBatch, FillInfo]:
    """DAPO dynamic sampling: call ``draw`` until ``want_groups`` informative groups are collected.

    Each ``draw()`` returns a fresh ``GenerationBatch`` of rollouts. Groups whose rewards are all equal are dropped
    (``keep_informative_groups``), the rest are kept in draw order, and the last draw's surplus is cut so that the
    batch holds exactly ``want_groups`` groups (verl does the same). After ``config.max_draws`` draws it stops and
    returns what it has, ``info.full`` False (possibly no group at all: rewards of shape [0]).

    With ``config.dynamic_sampling`` off it draws once and returns that batch unfiltered, so a trainer can call it
    either way. The returned batch's ``valid`` is always a bool tensor and its ``payload`` a list.
    """
    if want_groups < 1:
        raise ConfigError(f"fill_batch needs want_groups >= 1 (prompts per training batch), got {want_groups}")
    group_size = config.group_size
    rewards_kept: list[Tensor] = []
    valid_kept: list[Tensor] = []
    payload_kept: list[Any] = []
    groups_drawn = informative = 0
    draws = 0
    for draws in range(1, (config.max_draws if config.dynamic_sampling else 1) + 1):
        batch = draw()
        grouped_rewards = group_view(batch.rewards, group_size)  # [P, G]
        num_prompts = grouped_rewards.shape[0]
        if len(batch.payload) != num_prompts:
            raise DataError(
                f"draw {draws} returned {batch.rewards.shape[0]} rewards ({num_prompts} groups of {group_size}) but a "
                f"payload of {len(batch.payload)} items; expected one payload item per group"
            )
        valid = torch.ones_like(batch.rewards, dtype=torch.bool) if batch.valid is None else batch.valid.bool()
        keep = keep_informative_groups(batch.rewards, group_size, valid)
        groups_drawn += num_prompts
        informative += int(keep.sum())
        if config.dynamic_sampling:
            ids = keep.nonzero().flatten()[: want_groups - len(payload_kept)]
        else:
            ids = torch.arange(num_prompts, device=keep.device)
        rewards_kept.append(grouped_rewards[ids])
        valid_kept.append(group_view(valid, group_size)[ids])
        payload_kept.extend(batch.payload[i] for i in ids.tolist())
        if len(payload_kept) >= want_groups:
            break
    filled = GenerationBatch(
        rewards=rearrange(torch.cat(rewards_kept), "p g -> (p g)"),
        payload=payload_kept,
        valid=rearrange(torch.cat(valid_kept), "p g -> (p g)"),
    )
    info = FillInfo(
        draws=draws,
        groups_drawn=groups_drawn,
        informative_groups=informative,
        groups_kept=len(payload_kept),
        full=len(payload_kept) >= want_groups,
    )
    return filled, info


def first_token_selection(advantages: Tensor, old_logp: Tensor, mask: Tensor, group_size: int) -> Tensor:
    """Latent-GRPO's correct-path first-token selection: per-position advantages [N, L] from per-row ones [N].

    advantages: [N] prompt-major; old_logp, mask: [N, L] (pi_old over each row's positions, the thought slots first).
    In every group with a positive advantage, the winner is the positive row with the highest length-normalised old
    log-prob (sum_t M old_logp / sum_t M; ties go to the lower row index); every other row of the group, negative
    ones included (the reference's rule), gets advantage 0 at its first position (its first latent, or its first
    token when it has no latent). A group without a positive row is unchanged. Rows keep their advantage elsewhere.
    So only one correct path's first latent is reinforced, instead of the average of several ("latent mixture
    non-closure": a mixture of the first latents of different correct chains need not start any chain).
    """
    n, length = old_logp.shape
    if advantages.shape != (n,) or mask.shape != old_logp.shape:
        raise DataError(
            f"first_token_selection needs advantages [N] and old_logp, mask [N, L]; got {tuple(advantages.shape)}, "
            f"{tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if n % group_size:
        raise DataError(f"{n} rows is not a whole number of groups of {group_size}")
    m = mask.to(dtype=torch.bool)
    counts = m.sum(dim=1)
    normalised = torch.where(m, old_logp.detach().double(), 0.0).sum(dim=1) / counts.clamp(min=1)
    positive = advantages > 0
    candidates = group_view(torch.where(positive, normalised, -torch.inf), group_size)  # [P, G]
    winners = candidates.argmax(dim=1)  # the first maximum: ties go to the lower index
    has_positive = group_view(positive, group_size).any(dim=1)
    is_winner = torch.zeros_like(candidates, dtype=torch.bool)
    is_winner[torch.arange(candidates.shape[0]), winners] = True
    zero_first = rearrange(has_positive[:, None] & ~is_winner, "p g -> (p g)") & (counts > 0)
    first = m.long().argmax(dim=1)  # the first active position of each row
    per_position = advantages[:, None].expand(n, length).clone()
    rows = torch.nonzero(zero_first).squeeze(-1)
    per_position[rows, first[rows]] = 0.0
    return per_position
