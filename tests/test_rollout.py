"""Group rollouts: prompt-major order, masks by hand, mu against its teacher-forced recompute, top-k / top-p sampling."""

from __future__ import annotations

import math

import pytest
import torch

from latentlab.configs.rl import PolicyLossConfig
from latentlab.errors import ConfigError, DataError
from latentlab.reasoning.thoughts import filter_logits, generate_from_ids, next_token
from latentlab.rl.policy_loss import dppo_divergence, policy_loss
from latentlab.rl.rollout import (
    concat_rollouts,
    mismatch,
    recompute_logprobs,
    recompute_with_topk,
    rollout,
    select_rows,
)
from tests.test_thoughts import tiny_model, tiny_tokenizer

ATOL = 1e-5
PROMPTS = [[14, 15, 6, 16, 7], [14, 15, 9], [2, 20, 21, 22, 3, 11, 12]]  # ragged, so left padding is exercised
G, T, PAD = 3, 6, 1
NO_EOS = 10_000  # an id the model never emits: every row runs the whole budget


@pytest.fixture(params=["gpt2", "llama"])
def model(request):
    return tiny_model(request.param, len(tiny_tokenizer()))


def sample(model, seed=0, **kwargs):
    options = {"max_new_tokens": T, "eos_id": NO_EOS, "pad_id": PAD, "temperature": 1.0} | kwargs
    return rollout(model, PROMPTS, G, generator=torch.Generator().manual_seed(seed), **options)


# ---------------------------------------------------------------- order, masks, determinism


def test_groups_are_prompt_major(model):
    greedy = sample(model, temperature=0.0)
    for p, prompt in enumerate(PROMPTS):
        alone = generate_from_ids(model, [prompt], 0, T, eos_id=NO_EOS, eot_id=None, pad_id=PAD)
        for g in range(G):
            assert greedy.completion_ids[p * G + g].tolist() == alone.generated_ids[0].tolist()
    # sampled: the same draws as generating the repeated prompt list p0 p0 p0 p1 ... by hand
    sampled = sample(model, seed=4)
    repeated = [prompt for prompt in PROMPTS for _ in range(G)]
    by_hand = generate_from_ids(
        model, repeated, 0, T, eos_id=NO_EOS, eot_id=None, pad_id=PAD, temperature=1.0,
        generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert torch.equal(sampled.completion_ids, by_hand.generated_ids)
    assert sampled.num_prompts == len(PROMPTS) and sampled.group_size == G
    assert sampled.completion_ids.shape == sampled.mask.shape == sampled.logprobs.shape == (len(PROMPTS) * G, T)


def test_mask_lengths_and_truncation_by_hand_on_a_forced_eos(model):
    free = sample(model, seed=1)  # no EOS: the tokens every row draws over the whole budget
    assert free.mask.all() and free.truncated.all() and free.lengths.tolist() == [T] * len(PROMPTS) * G
    rows = free.completion_ids.tolist()
    eos = rows[0][2]  # force an EOS at position <= 2 of row 0: rows stop at different positions, some never
    stopped = sample(model, seed=1, eos_id=eos)  # same seed: the same draws up to each row's first EOS
    expected_lengths = [row.index(eos) + 1 if eos in row else T for row in rows]
    assert any(eos not in row for row in rows) and any(eos in row for row in rows)
    assert stopped.lengths.tolist() == expected_lengths
    assert stopped.truncated.tolist() == [eos not in row for row in rows]
    for i, (row, length) in enumerate(zip(rows, expected_lengths)):
        assert stopped.mask[i].tolist() == [j < length for j in range(T)]
        assert stopped.completion_ids[i].tolist() == row[:length] + [PAD] * (T - length)
        assert stopped.token_ids[i] == (row[: length - 1] if eos in row else row)  # EOS itself is not a token
    m = stopped.mask
    torch.testing.assert_close(stopped.logprobs[m], free.logprobs[m], atol=0, rtol=0)
    assert (stopped.logprobs[~m] == 0).all() and (stopped.logprobs[m] < 0).all()
    assert stopped.completion_lengths == expected_lengths


def test_same_seed_same_rollouts_and_another_seed_differs(model):
    first, again, other = sample(model, seed=7), sample(model, seed=7), sample(model, seed=8)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.logprobs, again.logprobs)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    # G samples of one prompt are not copies of each other
    assert not torch.equal(first.completion_ids[0], first.completion_ids[1])


# ---------------------------------------------------------------- top-k / top-p


def test_top_k_one_and_a_tiny_top_p_are_greedy(model):
    greedy = sample(model, temperature=0.0)
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}):
        filtered = sample(model, seed=5, **kwargs)
        assert torch.equal(filtered.completion_ids, greedy.completion_ids), kwargs
        # a one-token distribution: mu = log 1 = 0; the unfiltered T = 1 log-prob is greedy's record
        assert (filtered.logprobs == 0).all()
        torch.testing.assert_close(filtered.tempered_logprobs, greedy.logprobs, atol=ATOL, rtol=0)


def test_defaults_draw_the_plain_temperature_samples(model):
    plain = sample(model, seed=2, temperature=0.7)
    off = sample(model, seed=2, temperature=0.7, top_k=0, top_p=1.0)
    assert torch.equal(plain.completion_ids, off.completion_ids) and torch.equal(plain.logprobs, off.logprobs)
    assert torch.equal(plain.tempered_logprobs, plain.logprobs)
    # next_token's draw with the filters off is exactly the original Gumbel-max of logits / T
    logits = torch.randn(5, 40)
    uniform = torch.rand(logits.shape, generator=torch.Generator().manual_seed(9)).clamp_(1e-10, 1.0)
    original = (logits / 0.7 - torch.log(-torch.log(uniform))).argmax(dim=-1)
    assert torch.equal(next_token(logits, 0.7, torch.Generator().manual_seed(9)), original)


def test_filter_logits_by_hand():
    scores = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda **kw: torch.isfinite(filter_logits(scores, **kw)).tolist()  # noqa: E731
    assert kept() == [True] * 4
    assert kept(top_k=3) == [True, True, True, False]
    assert kept(top_p=0.7) == [True, True, False, False]  # mass before: 0, 0.5, 0.8, 0.95
    assert kept(top_p=0.9) == [True, True, True, False]
    assert kept(top_p=1e-9) == [True, False, False, False]
    # top-k first, then top-p on the renormalised rest (0.625, 0.375): 0.625 >= 0.6 drops the second
    assert kept(top_k=2, top_p=0.6) == [True, False, False, False]
    assert kept(top_k=2, top_p=0.7) == [True, True, False, False]
    ties = torch.tensor([1.0, 2.0, 2.0, 0.0])
    assert torch.isfinite(filter_logits(ties, top_k=1)).tolist() == [False, True, True, False]  # ties at k kept


def test_top_p_samples_the_renormalised_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(20000, 4)
    drawn = next_token(logits, 1.0, torch.Generator().manual_seed(0), top_p=0.7)
    freq = torch.bincount(drawn, minlength=4).float() / len(drawn)
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0)


def test_recorded_logprobs_are_of_the_filtered_distribution(model):
    filtered = sample(model, seed=3, temperature=0.7, top_k=5, top_p=0.8, top_k_logprobs=6)
    m = filtered.mask
    # renormalised over fewer tokens, each chosen token's mu is at least its unfiltered tempered log-prob
    assert (filtered.logprobs[m] >= filtered.tempered_logprobs[m] - 1e-6).all()
    assert (filtered.logprobs[m] > filtered.tempered_logprobs[m]).any()
    # at most 5 tokens survive: the 6th top log-prob is -inf, and the kept ones sum to probability 1
    assert torch.isinf(filtered.top_logprobs[..., 5][m]).all()
    torch.testing.assert_close(filtered.top_logprobs[m].exp().sum(-1), torch.ones(int(m.sum())), atol=1e-5, rtol=0)
    assert filtered.top_ids.shape == filtered.top_logprobs.shape == (len(PROMPTS) * G, T, 6)


# ---------------------------------------------------------------- recompute and mismatch


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recompute_matches_mu_at_the_rollout_temperature(model, temperature):
    eos = sample(model, seed=6).completion_ids[0, 1].item()  # some rows stop early: padding is exercised
    rolled = sample(model, seed=6, eos_id=eos, temperature=temperature)
    assert not rolled.mask.all()
    pi = recompute_logprobs(model, rolled, PROMPTS, temperature)
    assert pi.shape == rolled.logprobs.shape and pi.dtype == torch.float32
    torch.testing.assert_close(pi, rolled.logprobs, atol=ATOL, rtol=0)
    stats = mismatch(rolled.logprobs, pi, rolled.mask)
    assert stats["log_ratio"].shape == (len(PROMPTS) * G,)
    assert float(stats["mean_abs_prob_diff"]) < ATOL and float(stats["log_ratio"].abs().max()) < 1e-4
    # scored at another temperature the ratio is not 1 (spec 5.3)
    other = recompute_logprobs(model, rolled, PROMPTS, temperature + 0.3)
    assert float(mismatch(rolled.logprobs, other, rolled.mask)["mean_abs_prob_diff"]) > 1e-3


def test_recompute_of_a_filtered_rollout(model):
    rolled = sample(model, seed=6, temperature=0.7, top_k=4, top_p=0.9)
    unfiltered = recompute_logprobs(model, rolled, PROMPTS, 0.7)
    torch.testing.assert_close(unfiltered, rolled.tempered_logprobs, atol=ATOL, rtol=0)
    filtered = recompute_logprobs(model, rolled, PROMPTS, 0.7, top_k=4, top_p=0.9)
    torch.testing.assert_close(filtered, rolled.logprobs, atol=ATOL, rtol=0)


def test_recompute_has_gradients(model):
    rolled = sample(model, seed=0, temperature=0.8)
    pi = recompute_logprobs(model, rolled, PROMPTS, 0.8)
    assert pi.requires_grad
    (pi * rolled.mask).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_recompute_at_topk_ids_is_the_tempered_log_softmax_there(model):
    eos = sample(model, seed=6).completion_ids[0, 1].item()  # some rows stop early: padding is exercised
    rolled = sample(model, seed=6, eos_id=eos, temperature=0.7, top_k_logprobs=4)
    assert not rolled.mask.all()
    vocab = len(tiny_tokenizer())
    ids = torch.randint(0, vocab, rolled.top_ids.shape, generator=torch.Generator().manual_seed(0))  # any ids
    out = recompute_with_topk(model, rolled, PROMPTS, 0.7, topk_ids=ids)
    assert out.topk_logp.shape == ids.shape and out.topk_logp.requires_grad
    torch.testing.assert_close(out.logp, recompute_logprobs(model, rolled, PROMPTS, 0.7), atol=0, rtol=0)
    with torch.no_grad():  # by hand: each row alone, unpadded, through the plain forward
        for i in range(rolled.completion_ids.shape[0]):
            prompt, length = PROMPTS[i // G], int(rolled.lengths[i])
            full = torch.tensor([prompt + rolled.completion_ids[i, :length].tolist()])
            logits = model(full).logits[0, len(prompt) - 1 : len(prompt) - 1 + length]  # the columns predicting y
            expected = (logits / 0.7).log_softmax(-1).gather(-1, ids[i, :length])
            torch.testing.assert_close(out.topk_logp[i, :length], expected, atol=ATOL, rtol=0)
    assert (out.topk_logp[~rolled.mask] == 0).all()
    assert recompute_with_topk(model, rolled, PROMPTS, 0.7).topk_logp is None
    # at mu's own top-K ids and with no filter, pi before any update is mu
    at_mu = recompute_with_topk(model, rolled, PROMPTS, 0.7, topk_ids=rolled.top_ids).topk_logp
    torch.testing.assert_close(at_mu, rolled.top_logprobs, atol=ATOL, rtol=0)
    with pytest.raises(DataError, match="topk_ids"):
        recompute_with_topk(model, rolled, PROMPTS, 0.7, topk_ids=ids[:, :, 0])


def test_topk_divergence_of_a_filtered_rollout_is_finite(model):
    """mu's top-K list after a top-k filter holds -inf; the divergences and DPPO's loss must stay finite."""
    rolled = sample(model, seed=3, temperature=0.7, top_k=3, top_k_logprobs=6)
    m = rolled.mask
    assert torch.isinf(rolled.top_logprobs[m][:, 3:]).all()
    for divergence in ("topk_tv", "topk_kl"):
        pi = recompute_with_topk(model, rolled, PROMPTS, 0.7, topk_ids=rolled.top_ids)
        assert torch.isfinite(pi.topk_logp).all()  # pi is the unfiltered recompute
        value = dppo_divergence(pi.logp, rolled.tempered_logprobs, divergence, rolled.top_logprobs, pi.topk_logp)
        assert torch.isfinite(value).all() and (value >= -1e-12).all(), divergence
        assert (value[m] > 1e-3).any(), divergence  # the filtered mu is not the unfiltered pi
        config = PolicyLossConfig(name="dppo", divergence=divergence)
        advantages = torch.linspace(-1, 1, m.shape[0])
        mu = rolled.tempered_logprobs
        out = policy_loss(
            pi.logp, mu, advantages, m, config, mu_topk_logp=rolled.top_logprobs, pi_topk_logp=pi.topk_logp
        )
        out.loss.backward()
        assert math.isfinite(float(out.loss)) and math.isfinite(float(out.diagnostics["mask_fraction"]))
        grads = [param.grad for param in model.parameters() if param.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        model.zero_grad()


def test_concat_and_select_rows_keep_every_field_in_order(model):
    first, second = sample(model, seed=1, top_k_logprobs=2), sample(model, seed=2, top_k_logprobs=2)
    joined = concat_rollouts([first, second])
    n = first.completion_ids.shape[0]
    assert joined.completion_ids.shape == (2 * n, T) and joined.token_ids == first.token_ids + second.token_ids
    rows = torch.arange(n, 2 * n)
    back = select_rows(joined, rows)
    for name in ("completion_ids", "mask", "lengths", "truncated", "logprobs", "tempered_logprobs", "top_logprobs"):
        assert torch.equal(getattr(back, name), getattr(second, name)), name
    assert torch.equal(back.top_ids, second.top_ids) and back.token_ids == second.token_ids
    assert concat_rollouts([first]) is first
    with pytest.raises(DataError, match="temperature"):
        concat_rollouts([first, sample(model, seed=2, temperature=0.5, top_k_logprobs=2)])
    with pytest.raises(DataError, match="top-K"):
        concat_rollouts([first, sample(model, seed=2)])


def test_mismatch_by_hand():
    mu = torch.tensor([[math.log(0.5), math.log(0.25), 0.0], [math.log(0.8), 0.0, 0.0]])
    pi = torch.tensor([[math.log(0.4), math.log(0.25), -5.0], [math.log(0.6), -7.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    stats = mismatch(mu, pi, mask)
    torch.testing.assert_close(stats["mean_abs_prob_diff"], torch.tensor((0.1 + 0.0 + 0.2) / 3))
    torch.testing.assert_close(stats["max_abs_prob_diff"], torch.tensor(0.2))
    ratio = torch.tensor([math.log(0.4 / 0.5), math.log(0.6 / 0.8)])
    torch.testing.assert_close(stats["log_ratio"], ratio)
    torch.testing.assert_close(stats["log_ratio_mean"], ratio.mean())
    torch.testing.assert_close(stats["log_ratio_std"], ratio.std())
    torch.testing.assert_close(stats["token_log_ratio_mean"], ratio.sum() / 3)
    with pytest.raises(DataError):
        mismatch(mu, pi[:, :2], mask)


def test_bad_options_are_refused(model):
    with pytest.raises(ConfigError, match="top_p"):
        sample(model, top_p=0.0)
    with pytest.raises(ConfigError, match="top_k"):
        sample(model, top_k=-1)
    with pytest.raises(ConfigError, match="group_size"):
        rollout(model, PROMPTS, 0, max_new_tokens=T, eos_id=NO_EOS)
    with pytest.raises(DataError, match="no tokens"):
        rollout(model, [[3], []], 2, max_new_tokens=T, eos_id=NO_EOS)
    rolled = sample(model)
    with pytest.raises(DataError, match="prompts"):
        recompute_logprobs(model, rolled, PROMPTS[:2], 1.0)
