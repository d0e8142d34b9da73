"""Policy losses for RL on reasoning as pure functions on tensors, in three steps a reader can see.

(1) importance ratio, per token or per sequence; (2) the per-token objective, which is the variant; (3) the aggregation
into one number, which is the normaliser. ``policy_loss`` runs the three; each step is also importable on its own.

What differs between the variants (rho = pi/pi_old, rho~ = pi/mu, s_i = GSPO's sequence ratio, A = advantage,
M = completion mask, sg = detach, cap = ratio_cap):

| variant: config      | (1) ratio             | (2) per-token loss l_t               | (3)     | defaults          |
|----------------------|-----------------------|--------------------------------------|---------|-------------------|
| PPO/GRPO: ppo_clip   | pi / old_logp (or mu) | -min(rho A, clip(rho, 1-lo, 1+hi) A) | grpo    | lo = hi = 0.2     |
| DAPO: ppo_clip       | rho_t                 | same, clip-higher                    | dapo    | hi = 0.28         |
| Dr.GRPO: ppo_clip    | rho_t                 | same; A = r - mean, no std           | dr_grpo | L_max needed      |
| GSPO: sequence level | exp(mean_t log rho_t) | same, s_i on every token of y_i      | grpo    | as PPO            |
| dual-clip: c         | rho_t                 | where A < 0: min(l_t, -c A)          | any     | c = 3 (verl)      |
| DPPO: dppo           | rho~_t, detached      | -A sg(min(rho~, cap)) keep_t log pi  | bnpo    | delta .15, cap 10 |
| DRPO: drpo           | rho~_t, with gradient | -rho~ A + |A| mu (rho~-1)^2 / 2delta | bnpo    | delta 0.15        |

DPPO's keep_t is 0 only where D(mu, pi) > delta in the harmful direction (A > 0 & pi > mu, or A < 0 & pi < mu); D is
binary TV |pi - mu|, binary KL, or TV / KL over mu's top-K ids plus a rest bucket (thresholds: TV 0.15, KL
0.05 in the verl example).

All ratios are formed from log-probs with the log-ratio clamped to [-20, 20] so exp never overflows (a ratio of
e^20 ~ 5e8 is far beyond every clip). With ``kl_beta > 0`` the k3 estimator exp(ref - logp) - (ref - logp) - 1 is added
to every token's loss, times beta, before the aggregation (TRL with beta > 0; verl ``low_var_kl``).

The aggregations differ only in the normaliser (TRL ``_compute_loss``, verl ``agg_loss``; L = per-token loss):

=======  ========================================  ==================================================================
name     loss =                                    notes
=======  ========================================  ==================================================================
grpo     mean_i [ sum_t M L / sum_t M ]            verl seq-mean-token-mean; short sequences weigh more per token
bnpo     sum M L / sum M (this micro-batch)        verl 0.4 token-mean; changes with gradient accumulation
dapo     sum M L / num_active_tokens               N = active tokens of the whole accumulated batch (default: this
                                                   batch's); micro-batch losses then sum to the big batch's loss
dr_grpo  sum M L / (B * max_completion_length)     constant normaliser: padding length does not change it
=======  ========================================  ==================================================================

DPPO and DRPO compare against mu, the rollout engine's log-probs (spec section 5.1: the ratio against pi_old is
another algorithm); ppo_clip compares against ``old_logp`` (pi_old), which defaults to mu.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from latentlab.configs.rl import PolicyLossConfig
from latentlab.errors import ConfigError, LatentLabError
from latentlab.registry import Registry

LOG_RATIO_CLAMP = 20.0
"""Every log-ratio is clamped to [-20, 20] before exp (verl; DPPO's "log-ratio clamped at 20")."""
PROB_EPS = 1e-12
"""Floor of probabilities inside the divergences' logs (a rest bucket can round to 0 or below)."""


class PolicyLossInputError(LatentLabError, ValueError):
    """The tensors given to a policy loss do not fit together (shapes, a missing input the config asks for)."""


@dataclass
class PolicyLossOutput:
    """The aggregated loss, the per-token losses it came from, and detached diagnostics."""

    loss: torch.Tensor
    """Scalar to call backward on."""
    per_token: torch.Tensor
    """[B, T] per-token loss (objective plus beta * k3), zero where mask is 0, before the aggregation."""
    diagnostics: dict[str, torch.Tensor]
    """Detached 0-d tensors: ratio_mean, ratio_max, approx_kl, and clip_fraction (ppo_clip), mask_fraction (dppo) or
    beyond_delta_fraction (drpo); kl_ref when kl_beta > 0."""


@dataclass
class ObjectiveInputs:
    """What a per-token objective sees; every tensor is [B, T] except the top-K ones ([B, T, K])."""

    logp: torch.Tensor
    """log pi(y_t) of the sampled tokens, with gradient."""
    log_ratio: torch.Tensor
    """Step (1): log ratio against the objective's reference (token or sequence level), clamped, with gradient."""
    advantages: torch.Tensor
    """A per token (a per-sequence advantage already broadcast over T)."""
    mask: torch.Tensor
    """Completion mask as logp's dtype (1 = token counts)."""
    mu: torch.Tensor
    """Rollout log-probs log mu(y_t), detached."""
    mu_topk_logp: torch.Tensor | None = None
    """[B, T, K] rollout log-probs of mu's top-K ids (dppo top-K divergences only)."""
    pi_topk_logp: torch.Tensor | None = None
    """[B, T, K] current log-probs at the same ids (dppo top-K divergences only; used detached)."""


Objective = Callable[[ObjectiveInputs, PolicyLossConfig], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


@dataclass(frozen=True)
class PolicyObjective:
    """A registered per-token objective and the log-probs its importance ratio is taken against."""

    fn: Objective
    """(inputs, config) -> (per-token loss [B, T], diagnostics)."""
    ratio_against: Literal["old_logp", "mu"]
    """old_logp: pi/pi_old (PPO); mu: pi/mu (DPPO, DRPO compare against the rollout policy)."""
    sequence_level: bool
    """Whether GSPO's sequence-level ratio is defined for this objective."""


POLICY_LOSSES: Registry[PolicyObjective] = Registry("policy loss")
Aggregation = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | float | None", PolicyLossConfig], torch.Tensor]
AGGREGATIONS: Registry[Aggregation] = Registry("aggregation")


# ----------------------------------------------------------------------------------------------------------- helpers


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1 (0 if nothing is active). values, mask: the same shape."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of ``values`` where ``mask`` is 1 (0 if nothing is active)."""
    largest = values.masked_fill(mask <= 0, float("-inf")).max()
    return torch.where(torch.isfinite(largest), largest, torch.zeros_like(largest))  # no host sync on an empty mask


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from samples of pi: exp(ref - logp) - (ref - logp) - 1 (>= 0), [B, T]."""
    delta = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(delta) - delta - 1.0


def _detached(diagnostics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach() for key, value in diagnostics.items()}


# ------------------------------------------------------------------------------------------- step 1: importance ratio


def importance_log_ratio(
    logp: torch.Tensor, reference_logp: torch.Tensor, mask: torch.Tensor, level: Literal["token", "sequence"] = "token"
) -> torch.Tensor:
    """Log importance ratio, [B, T], with gradient through ``logp`` and clamped to [-20, 20].

    logp, reference_logp, mask: [B, T]. token: log rho_t = logp_t - reference_t. sequence (GSPO): one value per
    sequence, sum_t M_t log rho_t / sum_t M_t, broadcast over T, so every token of sequence i carries s_i and
    d s_i / d logp_t = s_i / |y_i|.
    """
    token_log_ratio = logp - reference_logp.detach()
    if level == "token":
        return token_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    if level == "sequence":
        lengths = mask.sum(dim=-1, keepdim=True).clamp_min(1.0)  # [B, 1]
        sequence_log_ratio = (token_log_ratio * mask).sum(dim=-1, keepdim=True) / lengths  # [B, 1]
        return sequence_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).expand_as(logp)
    raise ConfigError(f"importance_level: expected 'token' or 'sequence', got {level!r}")


# ---------------------------------------------------------------------------------------- step 2: per-token objective


def ppo_clip_objective(inputs: ObjectiveInputs, config: PolicyLossConfig) -> tuple[torch.Tensor, dict]:
    """-min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A), and with dual_clip c for A < 0: min(that, -c A).

    Where the clipped branch is the smaller one, it is selected alone (torch.where, not torch.min's tie split), so a
    clipped token has zero gradient; clip_fraction is the share of active tokens so clipped, dual-clip included.
    """
    ratio = torch.exp(inputs.log_ratio)
    advantages = inputs.advantages
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high) * advantages
    ratio_clipped = clipped < unclipped
    per_token = -torch.where(ratio_clipped, clipped, unclipped)
    clip_active = ratio_clipped
    if config.dual_clip is not None:
        floor = -config.dual_clip * advantages  # = c |A| where A < 0
        dual_clipped = (advantages < 0) & (per_token > floor)
        per_token = torch.where(dual_clipped, floor, per_token)
        clip_active = clip_active | dual_clipped
    return per_token, {"clip_fraction": masked_mean(clip_active.to(per_token.dtype), inputs.mask)}


def dppo_divergence(
    logp: torch.Tensor,
    mu: torch.Tensor,
    divergence: Literal["binary_tv", "binary_kl", "topk_tv", "topk_kl"],
    mu_topk_logp: torch.Tensor | None = None,
    pi_topk_logp: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPPO's divergence D(mu, pi) per token, [B, T], detached and in float64.

    logp, mu: [B, T] log-probs of the sampled token under pi and mu. binary_tv: |pi - mu|; binary_kl: the KL between
    the Bernoulli distributions (mu, 1 - mu) and (pi, 1 - pi). topk_*: mu_topk_logp, pi_topk_logp [B, T, K] are log mu
    and log pi at mu's top-K ids (the same ids, in the same order), plus one rest bucket 1 - sum of each;
    topk_tv = 1/2 (sum_K |mu_k - pi_k| + |mu_rest - pi_rest|), topk_kl = sum_K mu_k log(mu_k/pi_k) + rest term.
    """
    pi_prob = logp.detach().double().exp()
    mu_prob = mu.detach().double().exp()
    if divergence == "binary_tv":
        return (pi_prob - mu_prob).abs()
    if divergence == "binary_kl":
        pi_prob, mu_prob = pi_prob.clamp(PROB_EPS, 1 - PROB_EPS), mu_prob.clamp(PROB_EPS, 1 - PROB_EPS)
        return mu_prob * (mu_prob / pi_prob).log() + (1 - mu_prob) * ((1 - mu_prob) / (1 - pi_prob)).log()
    if divergence not in ("topk_tv", "topk_kl"):
        raise ConfigError(
            f"divergence: expected binary_tv, binary_kl, topk_tv or topk_kl, got {divergence!r}",
        )
    mu_topk = mu_topk_logp.detach().double().exp()  # [B, T, K]
    pi_topk = pi_topk_logp.detach().double().exp()  # [B, T, K]
    mu_rest = (1.0 - mu_topk.sum(dim=-1)).clamp_min(0.0)  # [B, T]
    pi_rest = (1.0 - pi_topk.sum(dim=-1)).clamp_min(0.0)
    if divergence == "topk_tv":
        return 0.5 * ((mu_topk - pi_topk).abs().sum(dim=-1) + (mu_rest - pi_rest).abs())
    topk_term = (mu_topk * (mu_topk.clamp_min(PROB_EPS) / pi_topk.clamp_min(PROB_EPS)).log()).sum(dim=-1)
    rest_term = mu_rest * (mu_rest.clamp_min(PROB_EPS) / pi_rest.clamp_min(PROB_EPS)).log()
    return topk_term + rest_term


def trust_region_keep(
    logp: torch.Tensor, mu: torch.Tensor, advantages: torch.Tensor, divergence: torch.Tensor, config: PolicyLossConfig
) -> torch.Tensor:
    """DPPO's token mask, [B, T] bool: False only where the token left the trust region in the harmful direction.

    Harmful = the way the advantage pushes: A > 0 with pi > mu and D > delta_high, or A < 0 with pi < mu and
    D > delta_low. A token outside the region on the other side keeps its gradient, which pulls it back.
    """
    pi_above_mu = logp.detach() > mu.detach()
    pi_below_mu = logp.detach() < mu.detach()
    harmful_up = (advantages > 0) & pi_above_mu & (divergence > config.delta_high)
    harmful_down = (advantages < 0) & pi_below_mu & (divergence > config.delta_low)
    return ~(harmful_up | harmful_down)


def dppo_objective(inputs: ObjectiveInputs, config: PolicyLossConfig) -> tuple[torch.Tensor, dict]:
    """-A sg(min(pi/mu, ratio_cap)) keep log pi: an importance-weighted REINFORCE with DPPO's trust-region mask.

    The gradient is -A min(pi/mu, c) keep d log pi; the value is a surrogate (not 0 on-policy). mask_fraction is the
    share of active tokens the trust region masks.
    """
    divergence = dppo_divergence(inputs.logp, inputs.mu, config.divergence, inputs.mu_topk_logp, inputs.pi_topk_logp)
    keep = trust_region_keep(inputs.logp, inputs.mu, inputs.advantages, divergence, config)
    weight = torch.exp(inputs.log_ratio.detach().clamp(max=math.log(config.ratio_cap)))
    per_token = -inputs.advantages * weight * keep.to(inputs.logp.dtype) * inputs.logp
    masked = (~keep).to(inputs.logp.dtype)
    return per_token, {
        "mask_fraction": masked_mean(masked, inputs.mask),
        "divergence_mean": masked_mean(divergence.to(inputs.logp.dtype), inputs.mask),
    }


def drpo_objective(inputs: ObjectiveInputs, config: PolicyLossConfig) -> tuple[torch.Tensor, dict]:
    """-J with J = rho~ A - |A| / (2 delta) mu(y) (rho~ - 1)^2, rho~ = pi/mu, delta = drpo_delta (probability units).

    dJ/dlog pi = A rho~ w with w = 1 - sign(A) (pi - mu) / delta: 0 at the boundary pi - mu = sign(A) delta, negative
    (corrective) beyond it. beyond_delta_fraction is the share of active tokens with |pi - mu| > delta, which shows
    whether the penalty binds at all (spec section 5.9).
    """
    ratio = torch.exp(inputs.log_ratio)
    mu_prob = inputs.mu.detach().exp()
    advantages = inputs.advantages
    objective = ratio * advantages - advantages.abs() / (2.0 * config.drpo_delta) * mu_prob * (ratio - 1.0) ** 2
    beyond = ((inputs.logp.detach().exp() - mu_prob).abs() > config.drpo_delta).to(inputs.logp.dtype)
    return -objective, {"beyond_delta_fraction": masked_mean(beyond, inputs.mask)}


POLICY_LOSSES.register("ppo_clip", PolicyObjective(ppo_clip_objective, ratio_against="old_logp", sequence_level=True))
POLICY_LOSSES.register("dppo", PolicyObjective(dppo_objective, ratio_against="mu", sequence_level=False))
POLICY_LOSSES.register("drpo", PolicyObjective(drpo_objective, ratio_against="mu", sequence_level=False))


# ------------------------------------------------------------------------------------------------ step 3: aggregation


@AGGREGATIONS.register("grpo")
def aggregate_grpo(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    num_active_tokens: torch.Tensor | float | None,
    config: PolicyLossConfig,
) -> torch.Tensor:
    """mean over sequences of each sequence's token mean (an empty sequence contributes 0 and still counts in B)."""
    per_sequence = (per_token * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)  # [B]
    return per_sequence.mean()


@AGGREGATIONS.register("bnpo")
def aggregate_bnpo(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    num_active_tokens: torch.Tensor | float | None,
    config: PolicyLossConfig,
) -> torch.Tensor:
    """Token mean over this micro-batch's active tokens."""
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)


@AGGREGATIONS.register("dapo")
def aggregate_dapo(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    num_active_tokens: torch.Tensor | float | None,
    config: PolicyLossConfig,
) -> torch.Tensor:
    """Token sum divided by the active tokens of the whole accumulated batch (``num_active_tokens``; default this
    batch's), so the micro-batch losses of one accumulated batch sum to its loss."""
    normaliser = (
        mask.sum()
        if num_active_tokens is None
        else torch.as_tensor(num_active_tokens, dtype=mask.dtype, device=mask.device)
    )
    return (per_token * mask).sum() / normaliser.clamp_min(1.0)


@AGGREGATIONS.register("dr_grpo")
def aggregate_dr_grpo(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    num_active_tokens: torch.Tensor | float | None,
    config: PolicyLossConfig,
) -> torch.Tensor:
    """Token sum divided by the constant B x max_completion_length (not by the padded T)."""
    if config.max_completion_length is None:
        raise ConfigError("max_completion_length: aggregation dr_grpo divides by B x max_completion_length: set it")
    return (per_token * mask).sum() / (per_token.shape[0] * config.max_completion_length)


# ----------------------------------------------------------------------------------------------------- the whole loss


def check_policy_loss_config(config: PolicyLossConfig, where: str = "policy_loss") -> PolicyObjective:
    """Look the loss and aggregation names up (an unknown one raises, listing the known ones) and check they combine;
    ``where`` prefixes the keys in messages. Returns the registered objective."""
    objective = POLICY_LOSSES.get(config.name, where=f"{where}.name")
    AGGREGATIONS.get(config.aggregation, where=f"{where}.aggregation")
    if config.importance_level == "sequence" and not objective.sequence_level:
        raise ConfigError(
            f"{where}.importance_level: 'sequence' (GSPO) is defined for ppo_clip only, not {config.name!r}; "
            "use importance_level: token"
        )
    return objective


def _check_shapes(logp: torch.Tensor, named: dict[str, torch.Tensor | None], advantages: torch.Tensor) -> None:
    if logp.dim() != 2:
        raise PolicyLossInputError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    for name, tensor in named.items():
        if tensor is not None and tensor.shape != logp.shape:
            raise PolicyLossInputError(
                f"{name} has shape {tuple(tensor.shape)} but logp has shape {tuple(logp.shape)}; "
                f"{name} must be [B, T] like logp"
            )
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise PolicyLossInputError(
            f"advantages has shape {tuple(advantages.shape)}; expected [B] = {tuple(logp.shape[:1])} or "
            f"[B, T] = {tuple(logp.shape)} like logp"
        )


def _check_topk(logp: torch.Tensor, mu_topk_logp, pi_topk_logp, divergence: str) -> None:
    if not divergence.startswith("topk"):
        return
    for name, tensor in (("mu_topk_logp", mu_topk_logp), ("pi_topk_logp", pi_topk_logp)):
        if tensor is None:
            raise PolicyLossInputError(f"divergence {divergence} needs {name} [B, T, K]; it was not given")
        if tensor.dim() != 3 or tensor.shape[:2] != logp.shape:
            raise PolicyLossInputError(
                f"{name} has shape {tuple(tensor.shape)}; expected [B, T, K] with [B, T] = {tuple(logp.shape)} (logp)"
            )
    if mu_topk_logp.shape != pi_topk_logp.shape:
        raise PolicyLossInputError(
            f"mu_topk_logp has shape {tuple(mu_topk_logp.shape)} but pi_topk_logp has {tuple(pi_topk_logp.shape)}; "
            "both are log-probs at the same top-K ids"
        )


def policy_loss(
    logp: torch.Tensor,
    mu: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: PolicyLossConfig,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    mu_topk_logp: torch.Tensor | None = None,
    pi_topk_logp: torch.Tensor | None = None,
    num_active_tokens: torch.Tensor | float | None = None,
) -> PolicyLossOutput:
    """The policy loss named by ``config``: (1) ratio, (2) per-token objective (+ beta k3), (3) aggregation.

    logp: [B, T] log pi(y_t) of the sampled tokens under the current policy (with gradient).
    mu: [B, T] rollout-engine log-probs of the same tokens (DPPO's and DRPO's reference).
    advantages: [B] (broadcast over T) or [B, T].
    mask: [B, T] bool or 0/1, 1 where a completion token counts.
    old_logp: [B, T] pi_old for ppo_clip's ratio; defaults to mu.
    ref_logp: [B, T] frozen reference log-probs, required when config.kl_beta > 0.
    mu_topk_logp, pi_topk_logp: [B, T, K] log mu and log pi at mu's top-K ids (dppo with topk_tv / topk_kl).
    num_active_tokens: dapo's normaliser, the active-token count of the whole accumulated batch (default:
        this batch's mask sum).
    """
    objective = check_policy_loss_config(config)
    _check_shapes(logp, {"mu": mu, "mask": mask, "old_logp": old_logp, "ref_logp": ref_logp}, advantages)
    if config.name == "dppo":
        _check_topk(logp, mu_topk_logp, pi_topk_logp, config.divergence)
    if config.kl_beta > 0 and ref_logp is None:
        raise PolicyLossInputError(
            f"kl_beta = {config.kl_beta} adds a KL to a reference model: pass ref_logp [B, T] (or set kl_beta: 0)"
        )
    mask = mask.to(logp.dtype)
    mu = mu.detach()
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)  # [B] -> [B, T]
    advantages = advantages.detach().to(logp.dtype)
    reference = mu if objective.ratio_against == "mu" or old_logp is None else old_logp.detach()

    # (1) importance ratio
    log_ratio = importance_log_ratio(logp, reference, mask, config.importance_level)
    # (2) per-token objective
    inputs = ObjectiveInputs(logp, log_ratio, advantages, mask, mu, mu_topk_logp, pi_topk_logp)
    per_token, diagnostics = objective.fn(inputs, config)
    if config.kl_beta > 0:
        kl = k3_kl(logp, ref_logp.detach())
        per_token = per_token + config.kl_beta * kl
        diagnostics["kl_ref"] = masked_mean(kl, mask)
    per_token = per_token * mask
    # (3) aggregation
    loss = AGGREGATIONS.get(config.aggregation)(per_token, mask, num_active_tokens, config)

    ratio = torch.exp(log_ratio.detach())
    token_log_ratio = (logp.detach() - reference).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    diagnostics["ratio_mean"] = masked_mean(ratio, mask)
    diagnostics["ratio_max"] = masked_max(ratio, mask)
    diagnostics["approx_kl"] = masked_mean(torch.exp(token_log_ratio) - 1.0 - token_log_ratio, mask)
    return PolicyLossOutput(loss=loss, per_token=per_token, diagnostics=_detached(diagnostics))
