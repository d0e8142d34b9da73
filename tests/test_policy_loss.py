"""Policy losses against hand-computed values and gradients (spec section 6) and against the documented formulas.

The 4-sample group: rewards [1, 0, 0, 1], lengths [2, 3, 1, 2] (8 tokens), on-policy so rho = 1 and d rho/d log pi = 1.
Gradients come from autograd and are compared with atol=1e-5, rtol=0.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from latentlab.configs.rl import PolicyLossConfig
from latentlab.errors import ConfigError
from latentlab.registry import RegistryError
from latentlab.rl.policy_loss import (
    AGGREGATIONS,
    POLICY_LOSSES,
    PolicyLossInputError,
    check_policy_loss_config,
    dppo_divergence,
    importance_log_ratio,
    policy_loss,
)

TOL = {"atol": 1e-5, "rtol": 0.0}
DT = torch.float64
LENGTHS = [2, 3, 1, 2]
HALF_SQRT3 = 0.8660254037844386  # 0.5 / unbiased std sqrt(1/3) of [1, 0, 0, 1]
GROUP_ADVANTAGES = [HALF_SQRT3, -HALF_SQRT3, -HALF_SQRT3, HALF_SQRT3]
DR_GRPO_ADVANTAGES = [0.5, -0.5, -0.5, 0.5]  # r - mean, no std


def close(actual, expected) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=DT), torch.as_tensor(expected, dtype=DT), **TOL)


def group(length: int = 3, seed: int = 0):
    """The spec's group on-policy: logp (leaf with grad), mu = logp's values, mask [4, length]."""
    generator = torch.Generator().manual_seed(seed)
    values = -0.1 - torch.rand(4, length, generator=generator, dtype=DT)
    mask = torch.arange(length)[None, :] < torch.tensor(LENGTHS)[:, None]
    return values.clone().requires_grad_(True), values.clone(), mask


def run(logp, mu, advantages, mask, **config_fields):
    """policy_loss and its gradient with respect to logp."""
    extra = {
        k: config_fields.pop(k) for k in ("old_logp", "ref_logp", "mu_topk_logp", "pi_topk_logp") if k in config_fields
    }
    extra["num_active_tokens"] = config_fields.pop("num_active_tokens", None)
    out = policy_loss(logp, mu, torch.as_tensor(advantages, dtype=DT), mask, PolicyLossConfig(**config_fields), **extra)
    (grad,) = torch.autograd.grad(out.loss, logp)
    return out, grad


def single_token(pi: float, mu: float):
    """One sequence of one token with probability pi now and mu at rollout: (logp leaf, mu log-prob, mask)."""
    logp = torch.tensor([[math.log(pi)]], dtype=DT, requires_grad=True)
    return logp, torch.tensor([[math.log(mu)]], dtype=DT), torch.ones(1, 1, dtype=torch.bool)


# ------------------------------------------------------------------------------- the 4-sample group (spec section 6)

GROUP_GRADIENTS = {
    "grpo": (GROUP_ADVANTAGES, [-0.10825, 0.07217, 0.21651, -0.10825]),  # -A_i / (|y_i| G)
    "bnpo": (GROUP_ADVANTAGES, [-0.10825, 0.10825, 0.10825, -0.10825]),  # -A_i / 8
    "dapo": (GROUP_ADVANTAGES, [-0.10825, 0.10825, 0.10825, -0.10825]),
    "dr_grpo": (DR_GRPO_ADVANTAGES, [-0.03125, 0.03125, 0.03125, -0.03125]),  # -(r_i - 0.5) / (4 * L_max 4)
}


@pytest.mark.parametrize("aggregation", sorted(GROUP_GRADIENTS))
def test_group_on_policy_loss_is_zero_and_token_gradients_are_the_hand_values(aggregation):
    advantages, per_sample = GROUP_GRADIENTS[aggregation]
    logp, mu, mask = group()
    out, grad = run(logp, mu, advantages, mask, aggregation=aggregation, max_completion_length=4)
    close(out.loss, 0.0)
    expected = torch.tensor(per_sample, dtype=DT)[:, None] * mask
    close(grad, expected)
    close(out.diagnostics["ratio_mean"], 1.0)
    close(out.diagnostics["clip_fraction"], 0.0)
    close(out.diagnostics["approx_kl"], 0.0)


def test_per_sequence_advantages_broadcast_like_per_token_ones():
    logp, mu, mask = group()
    off_policy = mu - 0.1
    by_sequence, grad_sequence = run(logp, mu, GROUP_ADVANTAGES, mask, old_logp=off_policy)
    per_token = torch.tensor(GROUP_ADVANTAGES, dtype=DT)[:, None].expand(4, 3)
    by_token, grad_token = run(logp, mu, per_token, mask, old_logp=off_policy)
    close(by_sequence.loss, by_token.loss)
    close(grad_sequence, grad_token)


# ---------------------------------------------------------------------------------------------------------- clipping


@pytest.mark.parametrize(
    ("ratio", "clip_high", "clipped"),
    [(1.25, 0.2, True), (1.25, 0.28, False), (1.3, 0.2, True), (1.3, 0.28, True), (1.1, 0.2, False)],
)
def test_positive_advantage_upper_clip_and_clip_higher(ratio, clip_high, clipped):
    logp, mu, mask = single_token(0.4 * ratio, 0.4)
    out, grad = run(logp, mu, [1.0], mask, aggregation="bnpo", clip_high=clip_high)
    if clipped:
        close(out.loss, -(1 + clip_high))
        close(grad, [[0.0]])
    else:
        close(out.loss, -ratio)
        close(grad, [[-ratio]])  # -rho A / N with N = 1
    close(out.diagnostics["clip_fraction"], float(clipped))


@pytest.mark.parametrize(
    ("ratio", "dual_clip", "loss", "grad"),
    [
        (0.7, None, 0.8 * 0.5, 0.0),  # clipped at 1 - 0.2: -clip(rho) A = 0.8 |A|
        (1.5, None, 1.5 * 0.5, 1.5 * 0.5),  # A < 0 is not clipped above: gradient -rho A
        (1.5, 3.0, 1.5 * 0.5, 1.5 * 0.5),  # 1.5 |A| < 3 |A|: dual-clip inactive
        (4.0, None, 4.0 * 0.5, 4.0 * 0.5),
        (4.0, 3.0, 3.0 * 0.5, 0.0),  # dual-clip: loss 3 |A|, zero gradient
    ],
)
def test_negative_advantage_clip_and_dual_clip(ratio, dual_clip, loss, grad):
    logp, mu, mask = single_token(0.2 * ratio, 0.2)
    out, gradient = run(logp, mu, [-0.5], mask, aggregation="bnpo", dual_clip=dual_clip)
    close(out.loss, loss)
    close(gradient, [[grad]])
    close(out.diagnostics["clip_fraction"], float(grad == 0.0))


def test_ppo_ratio_is_taken_against_old_logp_which_defaults_to_mu():
    logp, mu, mask = single_token(0.5, 0.5)
    out, _ = run(logp, mu, [1.0], mask, old_logp=mu - math.log(1.1))
    close(out.diagnostics["ratio_mean"], 1.1)
    close(out.diagnostics["approx_kl"], 1.1 - 1 - math.log(1.1))
    out, _ = run(logp, mu - math.log(1.1), [1.0], mask)
    close(out.diagnostics["ratio_mean"], 1.1)


# -------------------------------------------------------------------------------------------------------------- GSPO


def test_gspo_sequence_ratio_and_gradient_weight():
    # sequence 0: token log-ratios [0.2, 0.0] -> s = e^0.1; sequence 1: one token, log-ratio -0.1 (padded to T = 2)
    mu = torch.log(torch.tensor([[0.3, 0.6], [0.5, 0.9]], dtype=DT))
    logp = (mu + torch.tensor([[0.2, 0.0], [-0.1, 0.7]], dtype=DT)).requires_grad_(True)
    mask = torch.tensor([[True, True], [True, False]])
    out, grad = run(logp, mu, [1.0, -1.0], mask, importance_level="sequence")
    s0, s1 = math.exp(0.1), math.exp(-0.1)
    close(s0, 1.10517)
    close(out.diagnostics["ratio_mean"], (2 * s0 + s1) / 3)
    close(out.loss, (-s0 + s1) / 2)  # grpo: mean over the G = 2 sequences of -s_i A_i
    close(grad, [[-s0 / 2 / 2, -s0 / 2 / 2], [s1 / 1 / 2, 0.0]])  # -A_i s_i / |y_i| / G


def test_gspo_clips_the_whole_sequence_where_a_token_ratio_would_pass():
    mu = torch.log(torch.tensor([[0.3, 0.6]], dtype=DT))
    logp = (mu + torch.tensor([[0.5, 0.0]], dtype=DT)).requires_grad_(True)  # s = e^0.25 = 1.284 > 1.2
    mask = torch.ones(1, 2, dtype=torch.bool)
    out, grad = run(logp, mu, [1.0], mask, importance_level="sequence")
    close(out.loss, -1.2)
    close(grad, [[0.0, 0.0]])
    _, token_grad = run(logp, mu, [1.0], mask)
    close(token_grad, [[0.0, -0.5]])  # the second token (rho = 1) keeps its gradient at token level


def test_sequence_log_ratio_ignores_padding():
    logp = torch.tensor([[0.2, 5.0]], dtype=DT)
    log_ratio = importance_log_ratio(
        logp, torch.zeros(1, 2, dtype=DT), torch.tensor([[1.0, 0.0]], dtype=DT), "sequence"
    )
    close(log_ratio, [[0.2, 0.2]])


# -------------------------------------------------------------------------------------------------------------- DPPO

DPPO_TV_CASES = [
    # (mu, pi, A, kept): masked only when D > 0.15 in the direction A pushes
    (1e-5, 1e-3, 1.0, True),  # rho = 100, PPO would clip; D = 0.001 stays inside
    (0.99, 0.80, -1.0, False),  # D = 0.19, pi < mu with A < 0: harmful
    (0.99, 0.80, 1.0, True),  # A > 0 pulls it back up
    (0.9, 0.5, -1.0, False),
    (0.5, 0.8, 1.0, False),  # D = 0.3, pi > mu with A > 0: harmful
    (0.5, 0.8, -1.0, True),  # A < 0 pulls it back down
    (0.5, 0.6, 1.0, True),  # D = 0.1 inside the region
    (0.5, 0.4, -1.0, True),
]


@pytest.mark.parametrize(("mu_prob", "pi_prob", "advantage", "kept"), DPPO_TV_CASES)
def test_dppo_binary_tv_masks_only_the_harmful_direction(mu_prob, pi_prob, advantage, kept):
    logp, mu, mask = single_token(pi_prob, mu_prob)
    out, grad = run(logp, mu, [advantage], mask, name="dppo", aggregation="bnpo", ratio_cap=1e4)
    rho = pi_prob / mu_prob
    close(grad, [[-advantage * rho if kept else 0.0]])  # kept: -A rho d log pi
    close(out.loss, -advantage * rho * math.log(pi_prob) if kept else 0.0)
    close(out.diagnostics["mask_fraction"], 0.0 if kept else 1.0)
    close(dppo_divergence(logp, mu, "binary_tv"), [[abs(pi_prob - mu_prob)]])


def test_dppo_keeps_a_rare_token_that_ppo_clips_and_caps_its_weight():
    logp, mu, mask = single_token(1e-3, 1e-5)
    _, ppo_grad = run(logp, mu, [1.0], mask, aggregation="bnpo")
    close(ppo_grad, [[0.0]])
    _, dppo_grad = run(logp, mu, [1.0], mask, name="dppo", aggregation="bnpo")  # ratio_cap 10
    close(dppo_grad, [[-10.0]])


@pytest.mark.parametrize(
    ("mu_prob", "pi_prob", "kl", "advantage", "kept"),
    [(0.99, 0.80, 0.18100, -1.0, False), (1e-5, 1e-3, 0.000944, 1.0, True), (0.9, 0.5, 0.36806, -1.0, False)],
)
def test_dppo_binary_kl_values_and_mask(mu_prob, pi_prob, kl, advantage, kept):
    logp, mu, mask = single_token(pi_prob, mu_prob)
    close(dppo_divergence(logp, mu, "binary_kl"), [[kl]])
    fields = {"name": "dppo", "divergence": "binary_kl", "delta_low": 0.05, "delta_high": 0.05, "aggregation": "bnpo"}
    out, grad = run(logp, mu, [advantage], mask, ratio_cap=1e4, **fields)
    close(grad, [[-advantage * pi_prob / mu_prob if kept else 0.0]])


def topk_case(pi_at_ids):
    """mu's top-2 probabilities [0.5, 0.3] (rest 0.2); the sampled token is id 0; pi at the same ids."""
    mu_topk = torch.log(torch.tensor([[[0.5, 0.3]]], dtype=DT))
    pi_topk = torch.log(torch.tensor([[pi_at_ids]], dtype=DT))
    logp = pi_topk[..., 0].clone().requires_grad_(True)
    return logp, mu_topk[..., 0].clone(), mu_topk, pi_topk


@pytest.mark.parametrize(
    ("pi_at_ids", "tv", "kl"),
    [
        ([0.4, 0.4], 0.1, 0.025267),  # rest 0.2 vs 0.2: 0.5 ln(0.5/0.4) + 0.3 ln(0.3/0.4)
        ([0.2, 0.3], 0.3, 0.274887),  # rest 0.2 vs 0.5: 0.5 ln 2.5 + 0.2 ln 0.4
        ([0.4, 0.2], 0.2, 0.094582),  # rest 0.2 vs 0.4: 0.5 ln 1.25 + 0.3 ln 1.5 + 0.2 ln 0.5
    ],
)
def test_dppo_topk_divergences_by_hand(pi_at_ids, tv, kl):
    logp, mu, mu_topk, pi_topk = topk_case(pi_at_ids)
    close(dppo_divergence(logp, mu, "topk_tv", mu_topk, pi_topk), [[tv]])
    close(dppo_divergence(logp, mu, "topk_kl", mu_topk, pi_topk), [[kl]])


def test_dppo_topk_tv_masks_where_the_binary_tv_keeps():
    # pi(y) = 0.4 < mu(y) = 0.5 with A < 0: binary TV 0.1 <= 0.15 keeps; top-K TV 0.2 > 0.15 masks
    logp, mu, mu_topk, pi_topk = topk_case([0.4, 0.2])
    mask = torch.ones(1, 1, dtype=torch.bool)
    binary, binary_grad = run(logp, mu, [-1.0], mask, name="dppo", aggregation="bnpo")
    close(binary_grad, [[0.8]])  # -A rho = 0.4 / 0.5
    topk, topk_grad = run(
        logp, mu, [-1.0], mask, name="dppo", divergence="topk_tv", mu_topk_logp=mu_topk, pi_topk_logp=pi_topk
    )
    close(topk_grad, [[0.0]])
    close(topk.diagnostics["mask_fraction"], 1.0)


# -------------------------------------------------------------------------------------------------------------- DRPO


@pytest.mark.parametrize(
    ("pi_prob", "advantage", "dj_dlogpi"),
    [(0.6, 1.0, 0.6), (0.8, 1.0, -0.8), (0.6, -1.0, -1.8), (0.4, -1.0, -0.4), (0.5, 1.0, 1.0), (0.5, -0.7, -0.7)],
)
def test_drpo_gradient_values(pi_prob, advantage, dj_dlogpi):
    logp, mu, mask = single_token(pi_prob, 0.5)
    out, grad = run(logp, mu, [advantage], mask, name="drpo", drpo_delta=0.2, aggregation="bnpo")
    close(grad, [[-dj_dlogpi]])  # the loss is -J
    rho = pi_prob / 0.5
    close(out.loss, -(rho * advantage - abs(advantage) / 0.4 * 0.5 * (rho - 1) ** 2))


def test_drpo_weight_is_continuous_and_zero_at_the_boundary():
    def weight(pi_prob, advantage):
        logp, mu, mask = single_token(pi_prob, 0.5)
        _, grad = run(logp, mu, [advantage], mask, name="drpo", drpo_delta=0.2, aggregation="bnpo")
        return -grad.item() / (advantage * pi_prob / 0.5)  # w = (dJ/dlog pi) / (A rho)

    for advantage, boundary in ((1.0, 0.7), (-1.0, 0.3)):
        close(weight(boundary, advantage), 0.0)
        below, above = weight(boundary - 1e-4, advantage), weight(boundary + 1e-4, advantage)
        close(abs(below - above), 2e-4 / 0.2)  # w is linear in pi with slope -sign(A) / delta: no jump
        assert min(below, above) < 0 < max(below, above)


def test_drpo_reports_the_share_beyond_delta():
    mu = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=DT))
    logp = torch.log(torch.tensor([[0.6, 0.8, 0.25, 0.9]], dtype=DT)).requires_grad_(True)
    mask = torch.tensor([[True, True, True, False]])
    out, _ = run(logp, mu, [1.0], mask, name="drpo", drpo_delta=0.2)
    close(out.diagnostics["beyond_delta_fraction"], 2 / 3)  # 0.8 and 0.25 of the three active tokens


# --------------------------------------------------------------------------------------- aggregation and accumulation


def test_dr_grpo_loss_does_not_change_when_the_padding_grows():
    logp, mu, mask = group(length=3)
    old = mu + 0.05 * torch.arange(3, dtype=DT)
    short, short_grad = run(
        logp, mu, DR_GRPO_ADVANTAGES, mask, old_logp=old, aggregation="dr_grpo", max_completion_length=4
    )
    pad = torch.full((4, 5), -3.0, dtype=DT)
    long_logp = torch.cat([logp.detach(), pad], dim=1).requires_grad_(True)
    long_mask = torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], dim=1)
    long_old, long_mu = torch.cat([old, pad - 1], dim=1), torch.cat([mu, pad + 1], dim=1)
    padded, padded_grad = run(
        long_logp,
        long_mu,
        DR_GRPO_ADVANTAGES,
        long_mask,
        old_logp=long_old,
        aggregation="dr_grpo",
        max_completion_length=4,
    )
    assert short.loss.abs() > 1e-3
    close(padded.loss, short.loss)
    close(padded_grad[:, :3], short_grad)
    close(padded_grad[:, 3:], torch.zeros(4, 5))


def test_dapo_normaliser_is_the_accumulated_batch_token_count():
    logp, mu, mask = group(length=3)
    old = mu - 0.1 * torch.arange(1, 4, dtype=DT)  # off-policy so the loss is not 0
    full, full_grad = run(logp, mu, GROUP_ADVANTAGES, mask, old_logp=old, aggregation="dapo")
    total = int(mask.sum())
    summed, grads = torch.zeros((), dtype=DT), []
    for rows in (slice(0, 2), slice(2, 4)):
        part = logp.detach()[rows].clone().requires_grad_(True)
        out, grad = run(
            part,
            mu[rows],
            GROUP_ADVANTAGES[rows],
            mask[rows],
            old_logp=old[rows],
            num_active_tokens=total,
            aggregation="dapo",
        )
        summed, grads = summed + out.loss, grads + [grad]
    assert full.loss.abs() > 1e-3
    close(summed, full.loss)
    close(torch.cat(grads), full_grad)
    bnpo_parts = [
        run(
            logp.detach()[r].clone().requires_grad_(True),
            mu[r],
            GROUP_ADVANTAGES[r],
            mask[r],
            old_logp=old[r],
            aggregation="bnpo",
        )[0].loss
        for r in (slice(0, 2), slice(2, 4))
    ]
    assert abs(float(sum(bnpo_parts)) / 2 - float(full.loss)) > 1e-3  # a local token mean changes with the split


def test_k3_kl_to_the_reference_is_added_per_token_before_aggregation():
    logp, mu, mask = single_token(0.25, 0.25)
    ref = logp.detach() + math.log(2.0)  # ref - logp = log 2
    out, grad = run(logp, mu, [0.0], mask, kl_beta=0.1, ref_logp=ref, aggregation="bnpo")
    k3 = 2.0 - math.log(2.0) - 1.0
    close(out.diagnostics["kl_ref"], k3)
    close(out.loss, 0.1 * k3)
    close(grad, [[0.1 * (1.0 - 2.0)]])  # d k3 / d logp = 1 - exp(ref - logp)


# ------------------------------------------------------ agreement with the formulas as TRL's and verl's docs state them


def off_policy_batch(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    mu = torch.log(torch.rand(4, 5, generator=generator, dtype=DT) * 0.9 + 0.05)
    logp = (mu + 0.4 * torch.randn(4, 5, generator=generator, dtype=DT)).clamp(max=-1e-3).requires_grad_(True)
    old = mu + 0.1 * torch.randn(4, 5, generator=generator, dtype=DT)
    ref = mu + 0.3 * torch.randn(4, 5, generator=generator, dtype=DT)
    advantages = torch.tensor([1.2, -0.7, 0.3, -1.5], dtype=DT)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 3, 1, 4])[:, None]
    return logp, mu, old, ref, advantages, mask


def reference_check(reference_loss, **config_fields):
    """policy_loss on the off-policy batch equals ``reference_loss(logp, mu, old, ref, A, lengths)``, value and grad."""
    logp, mu, old, ref, advantages, mask = off_policy_batch()
    fields = {"old_logp": old, "ref_logp": ref} | config_fields
    out, grad = run(logp, mu, advantages, mask, **fields)
    ours_logp = logp.detach().clone().requires_grad_(True)
    expected = reference_loss(ours_logp, mu, old, ref, advantages.tolist(), mask.sum(-1).tolist())
    (expected_grad,) = torch.autograd.grad(expected, ours_logp)
    close(out.loss, expected)
    close(grad, expected_grad)


def trl_clipped(lp, old, a, eps_low=0.2, eps_high=0.2):
    # TRL docs: min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A), ratio = exp(log pi - log pi_old)
    ratio = torch.exp(lp - old)
    return torch.min(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)


def trl_k3(lp, ref):
    # TRL docs: D_KL = pi_ref / pi - log(pi_ref / pi) - 1
    return torch.exp(ref - lp) - (ref - lp) - 1


def test_grpo_with_kl_matches_trl_doc_formula():
    # L = -1/G sum_i 1/|o_i| sum_t [min(...) - beta D_KL]
    def trl(lp, mu, old, ref, adv, lengths):
        terms = []
        for i, n in enumerate(lengths):
            token = [trl_clipped(lp[i, t], old[i, t], adv[i]) - 0.04 * trl_k3(lp[i, t], ref[i, t]) for t in range(n)]
            terms.append(sum(token) / n)
        return -sum(terms) / len(lengths)

    reference_check(trl, kl_beta=0.04)


def test_dapo_and_bnpo_match_trl_doc_formula():
    # DAPO / BNPO: L = -1/(sum_i |o_i|) sum_i sum_t min(...), with clip-higher eps_high = 0.28
    def trl(lp, mu, old, ref, adv, lengths):
        token = [trl_clipped(lp[i, t], old[i, t], adv[i], 0.2, 0.28) for i, n in enumerate(lengths) for t in range(n)]
        return -sum(token) / sum(lengths)

    reference_check(trl, aggregation="dapo", clip_high=0.28)
    reference_check(trl, aggregation="bnpo", clip_high=0.28)


def test_dr_grpo_matches_trl_doc_formula():
    # Dr.GRPO: L = -1/(G L_max) sum_i sum_t min(...)
    def trl(lp, mu, old, ref, adv, lengths):
        token = [trl_clipped(lp[i, t], old[i, t], adv[i]) for i, n in enumerate(lengths) for t in range(n)]
        return -sum(token) / (len(lengths) * 7)

    reference_check(trl, aggregation="dr_grpo", max_completion_length=7)


def test_gspo_matches_trl_doc_formula():
    # GSPO: s_i = (pi(o_i) / pi_old(o_i))^(1/|o_i|) = exp(1/|o_i| sum_t log ratio); L = -1/G sum_i min(s A, clip(s) A)
    def trl(lp, mu, old, ref, adv, lengths):
        terms = []
        for i, n in enumerate(lengths):
            s = torch.exp(sum(lp[i, t] - old[i, t] for t in range(n)) / n)
            terms.append(torch.min(s * adv[i], torch.clamp(s, 0.95, 1.05) * adv[i]))
        return -sum(terms) / len(lengths)

    reference_check(trl, importance_level="sequence", clip_low=0.05, clip_high=0.05)


def test_dual_clip_matches_verl_doc_formula():
    # verl: pg = max(-A ratio, -A clip(ratio)); where A < 0: pg = min(pg, -A c); token-mean
    def verl(lp, mu, old, ref, adv, lengths):
        token = []
        for i, n in enumerate(lengths):
            for t in range(n):
                ratio = torch.exp(lp[i, t] - old[i, t])
                pg = torch.max(-adv[i] * ratio, -adv[i] * torch.clamp(ratio, 0.8, 1.2))
                token.append(torch.min(pg, torch.tensor(-adv[i] * 1.3, dtype=DT)) if adv[i] < 0 else pg)
        return sum(token) / sum(lengths)

    reference_check(verl, aggregation="bnpo", dual_clip=1.3)


def test_dppo_tv_matches_the_stable_rl_formula():
    # DPPO: loss_t = -A sg(min(exp(clamp(log pi - log mu, max 20)), c)) mask_t log pi, mask = not (harmful & |pi-mu|>d)
    def stable_rl(lp, mu, old, ref, adv, lengths):
        token = []
        for i, n in enumerate(lengths):
            for t in range(n):
                pi_p, mu_p = float(torch.exp(lp[i, t])), math.exp(float(mu[i, t]))
                harmful = (adv[i] > 0 and pi_p - mu_p > 0.1) or (adv[i] < 0 and pi_p - mu_p < -0.1)
                weight = min(math.exp(min(float(lp[i, t] - mu[i, t]), 20.0)), 1.2)
                token.append(-adv[i] * weight * (0.0 if harmful else 1.0) * lp[i, t])
        return sum(token) / sum(lengths)

    fields = {"name": "dppo", "aggregation": "dapo", "delta_low": 0.1, "delta_high": 0.1, "ratio_cap": 1.2}
    reference_check(stable_rl, **fields)


def test_drpo_matches_the_spec_formula():
    # DRPO: J_t = rho A - |A| / (2 delta) mu (rho - 1)^2 with rho = pi / mu; minimise -J, seq-mean-token-mean
    def spec(lp, mu, old, ref, adv, lengths):
        terms = []
        for i, n in enumerate(lengths):
            j = 0.0
            for t in range(n):
                rho = torch.exp(lp[i, t] - mu[i, t])
                j = j + rho * adv[i] - abs(adv[i]) / (2 * 0.15) * torch.exp(mu[i, t]) * (rho - 1) ** 2
            terms.append(-j / n)
        return sum(terms) / len(lengths)

    reference_check(spec, name="drpo", drpo_delta=0.15)


# ----------------------------------------------------------------------------------- every loss x every aggregation


@pytest.mark.parametrize("aggregation", AGGREGATIONS.names())
@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_every_loss_with_every_aggregation_is_finite_and_masks_padding(name, aggregation):
    logp, mu, old, ref, advantages, mask = off_policy_batch()
    logp32 = logp.detach().float().requires_grad_(True)
    config = PolicyLossConfig(name=name, aggregation=aggregation, max_completion_length=5, kl_beta=0.01)
    out = policy_loss(logp32, mu.float(), advantages.float(), mask, config, old_logp=old.float(), ref_logp=ref.float())
    out.loss.backward()
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert torch.all(out.per_token[~mask] == 0) and torch.all(logp32.grad[~mask] == 0)
    own = {"ppo_clip": "clip_fraction", "dppo": "mask_fraction", "drpo": "beyond_delta_fraction"}[name]
    assert {own, "approx_kl", "ratio_mean", "ratio_max", "kl_ref"} <= set(out.diagnostics)
    assert all(value.dim() == 0 and not value.requires_grad for value in out.diagnostics.values())


# ------------------------------------------------------------------------------------------------------------ errors


def test_unknown_loss_or_aggregation_names_raise_listing_the_known_ones():
    logp, mu, mask = group()
    with pytest.raises(RegistryError, match=re.escape("unknown policy loss 'ppo' (known: ppo_clip, dppo, drpo)")):
        policy_loss(logp, mu, torch.zeros(4), mask, PolicyLossConfig(name="ppo"))
    with pytest.raises(RegistryError, match=re.escape("unknown aggregation 'mean' (known: grpo, bnpo, dapo, dr_grpo)")):
        check_policy_loss_config(PolicyLossConfig(aggregation="mean"), where="rl.yaml: policy_loss")
    with pytest.raises(RegistryError, match=re.escape("rl.yaml: policy_loss.aggregation")):
        check_policy_loss_config(PolicyLossConfig(aggregation="mean"), where="rl.yaml: policy_loss")


def test_sequence_level_with_a_token_trust_region_is_a_config_error():
    with pytest.raises(ConfigError, match="importance_level: 'sequence'.*ppo_clip only, not 'dppo'"):
        check_policy_loss_config(PolicyLossConfig(name="dppo", importance_level="sequence"))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"mu": torch.zeros(4, 2)}, r"mu has shape \(4, 2\) but logp has shape \(4, 3\)"),
        ({"mask": torch.ones(3, 3)}, r"mask has shape \(3, 3\) but logp has shape \(4, 3\)"),
        ({"advantages": torch.zeros(3)}, r"advantages has shape \(3,\); expected \[B\] = \(4,\)"),
        ({"old_logp": torch.zeros(4, 4)}, r"old_logp has shape \(4, 4\)"),
        ({"ref_logp": torch.zeros(4)}, r"ref_logp has shape \(4,\)"),
    ],
)
def test_shape_mismatches_name_the_tensors(bad, message):
    logp, mu, mask = group()
    inputs = {"logp": logp, "mu": mu, "advantages": torch.zeros(4, dtype=DT), "mask": mask} | bad
    with pytest.raises(PolicyLossInputError, match=message):
        policy_loss(config=PolicyLossConfig(), **inputs)


def test_missing_inputs_the_config_asks_for_are_named():
    logp, mu, mask = group()
    advantages = torch.zeros(4, dtype=DT)
    with pytest.raises(PolicyLossInputError, match=r"kl_beta = 0.001 .* pass ref_logp"):
        policy_loss(logp, mu, advantages, mask, PolicyLossConfig(kl_beta=0.001))
    topk = PolicyLossConfig(name="dppo", divergence="topk_kl")
    with pytest.raises(PolicyLossInputError, match=r"topk_kl needs mu_topk_logp \[B, T, K\]"):
        policy_loss(logp, mu, advantages, mask, topk)
    with pytest.raises(PolicyLossInputError, match=r"pi_topk_logp has shape \(4, 2, 5\); expected \[B, T, K\]"):
        policy_loss(
            logp, mu, advantages, mask, topk, mu_topk_logp=torch.zeros(4, 3, 5), pi_topk_logp=torch.zeros(4, 2, 5)
        )
