"""SofT-GRPO's soft-thinking policy: the training density on the spec's hand case, its clamp and min_logp mask, the
rollout's Gumbel-softmax weights against a hand computation, the noisy exit, latent rollouts recomputed exactly on a
2-layer GPT-2, and the config's checks."""

from __future__ import annotations

import math

import pytest
import torch

from latentlab.configs.common import FieldError
from latentlab.configs.soft_thinking import SoftThinkingConfig
from latentlab.errors import ConfigError
from latentlab.reasoning.latent_sft import gumbel_log_density, soft_token_log_density
from latentlab.reasoning.replay import replaying_thoughts
from latentlab.reasoning.sampling import gumbel_noise
from latentlab.reasoning.soft_thinking import (
    SoftThinkingPolicy,
    end_of_thinking_id,
    renormalised_log_probs,
    soft_thinking_log_density,
    thinking_completion_ids,
)
from latentlab.reasoning.thoughts import completion_batch, thought_forward
from latentlab.rl.rollout import latent_rollout, recompute_latent
from tests.test_thoughts import tiny_model, tiny_tokenizer

DEFAULTS = SoftThinkingConfig()
CLAMP = (DEFAULTS.clamp_low, DEFAULTS.clamp_high)


def policy_setup(**overrides):
    tokenizer = tiny_tokenizer()
    model = tiny_model("gpt2", len(tokenizer))
    end_id = end_of_thinking_id(tokenizer, DEFAULTS.end_text)
    return model, tokenizer, SoftThinkingPolicy(model, SoftThinkingConfig(**overrides), end_id)


def density(log_p_hat, scores, min_logp=DEFAULTS.min_logp):
    return soft_thinking_log_density(log_p_hat, scores, *CLAMP, min_logp)


# ---------------------------------------------------------------- the training density


def test_spec_hand_case_density_and_gradient():
    """latent_rl_spec.md §6: K = 2, recovered noise [0.5, -0.2], no mask (both log p^ > -3)."""
    log_p_hat = torch.tensor([[0.75, 0.25]]).log().requires_grad_(True)
    scores = log_p_hat.detach() + torch.tensor([[0.5, -0.2]])
    value = density(log_p_hat, scores)
    assert gumbel_log_density(torch.tensor([0.5, -0.2])).tolist() == pytest.approx([-1.10653, -1.02140], abs=1e-5)
    assert float(value) == pytest.approx(-1.06397, abs=1e-5)
    (grad,) = torch.autograd.grad(value.sum(), log_p_hat)
    assert grad[0].tolist() == pytest.approx([0.19673, -0.11070], abs=1e-5)
    # inside the clamp and unmasked it is Latent-GRPO's mean density of the same recovered noise
    assert torch.allclose(value, soft_token_log_density(scores - log_p_hat.detach()), atol=1e-6, rtol=0)


def test_clamp_sets_the_value_and_cuts_the_gradient():
    log_p_hat = torch.tensor([[0.75, 0.25]]).log().requires_grad_(True)
    scores = log_p_hat.detach() + torch.tensor([[3.5, 0.5]])  # 3.5 is past clamp_high = 3
    value = density(log_p_hat, scores)
    expected = (gumbel_log_density(torch.tensor(3.0)) + gumbel_log_density(torch.tensor(0.5))) / 2
    assert float(value) == pytest.approx(float(expected), abs=1e-6)
    (grad,) = torch.autograd.grad(value.sum(), log_p_hat)
    assert grad[0].tolist() == pytest.approx([0.0, (1 - math.exp(-0.5)) / 2], abs=1e-6)


def test_renormalised_log_probs_use_the_recorded_ids_only():
    logits = torch.tensor([[1.0, 0.0, 2.0, -1.0]])
    ids = torch.tensor([[2, 0]])
    p0, p2 = math.exp(1.0), math.exp(2.0)  # the full-vocabulary normaliser cancels
    expected = [math.log(p2 / (p0 + p2) + 1e-6), math.log(p0 / (p0 + p2) + 1e-6)]
    assert renormalised_log_probs(logits.gather(-1, ids))[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_min_logp_mask_and_the_all_masked_guard():
    log_p_hat = renormalised_log_probs(torch.tensor([[0.0, 0.0, -5.0]]))
    assert float(log_p_hat[0, 2]) < -3  # p^ = e^-5 / (2 + e^-5): masked
    scores = log_p_hat + torch.tensor([[0.5, -0.2, 1.0]])
    assert float(density(log_p_hat, scores)) == pytest.approx(-1.06397, abs=1e-5)  # the third does not count
    assert float(density(log_p_hat, scores, min_logp=-6.0)) == pytest.approx(
        float(gumbel_log_density(torch.tensor([0.5, -0.2, 1.0])).mean()), abs=1e-5
    )
    # log p^ = log 0.5 < -0.5 for both: no candidate passes, so both count
    half = torch.tensor([[0.5, 0.5]]).log()
    assert float(density(half, half + torch.tensor([[0.5, -0.2]]), min_logp=-0.5)) == pytest.approx(-1.06397, abs=1e-5)


# ---------------------------------------------------------------- the rollout's draw


def test_draw_matches_a_hand_computation_and_log_prob():
    """One row by hand: tempered top-5, top-p 0.5, clamped Gumbel noise, scores, weights at tau_g, the mixture."""
    model, _, policy = policy_setup(top_p=0.5, temperature=0.7)
    hidden = torch.randn(3, model.config.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        draw = policy.draw(0, hidden, torch.Generator().manual_seed(7))
        logits = (model.get_output_embeddings()(hidden).float() / 0.7)[0].tolist()
    top = sorted(range(len(logits)), key=lambda i: -logits[i])[:5]
    probs = [math.exp(logits[i]) for i in top]
    probs = [p / sum(probs) for p in probs]
    kept = [sum(probs[:j]) < 0.5 for j in range(5)]
    tilde = [p if k else 0.0 for p, k in zip(probs, kept)]
    tilde = [p / sum(tilde) for p in tilde]
    assert 0 < sum(kept) < 5  # top-p dropped a candidate: its p~ is 0
    noise = gumbel_noise((3, 5), torch.Generator().manual_seed(7)).clamp(*CLAMP)[0].tolist()
    scores = [math.log(p + 1e-6) + g for p, g in zip(tilde, noise)]
    order = sorted(range(5), key=lambda j: -scores[j])
    ids, scores = [top[j] for j in order], [scores[j] for j in order]
    weights = [math.exp(s / 0.1) for s in scores]
    weights = [w / sum(weights) for w in weights]
    assert draw.sample["ids"][0].tolist() == ids
    assert draw.sample["scores"][0].tolist() == pytest.approx(scores, abs=1e-5)
    assert (draw.sample["scores"][0] / 0.1).softmax(-1).tolist() == pytest.approx(weights, abs=1e-5)
    embedding = model.get_input_embeddings().weight.detach()
    fed = sum(w * embedding[i] for w, i in zip(weights, ids))
    assert torch.allclose(draw.fed[0], fed, atol=1e-5, rtol=0)
    assert bool(policy.stop_fn(0)[0]) == (ids[0] == policy.end_id)
    # the recorded log-density is the training one on the same hidden state
    recomputed = policy.log_prob(0, hidden, draw.fed, draw.sample)
    assert torch.allclose(recomputed, draw.logp, atol=1e-5, rtol=0)


def test_seeded_draws_repeat_and_min_p_drops_candidates():
    model, _, policy = policy_setup(min_p=0.9, temperature=0.05)
    hidden = torch.randn(16, model.config.n_embd, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = policy.draw(0, hidden, torch.Generator().manual_seed(2))
        again = policy.draw(0, hidden, torch.Generator().manual_seed(2))
        other = policy.draw(0, hidden, torch.Generator().manual_seed(3))
        _, probs = policy.candidates(policy.logits(hidden))
    assert torch.equal(first.fed, again.fed) and torch.equal(first.logp, again.logp)
    assert torch.equal(first.sample["ids"], again.sample["ids"])
    assert not torch.equal(first.sample["scores"], other.sample["scores"])
    assert bool((probs == 0).any()) and torch.allclose(probs.sum(-1), torch.ones(16))
    kept = probs > 0
    assert bool((probs[kept] >= 0.9 * probs.amax(-1, keepdim=True).expand_as(probs)[kept] - 1e-6).all())
    assert torch.allclose(policy.log_prob(0, hidden, first.fed, first.sample), first.logp, atol=1e-5, rtol=0)


def test_exit_is_the_noisy_top_weight_id():
    """Two candidates tie at p = 0.5 on the same hidden state: the noise decides, row by row, whether thinking ends."""
    model, _, policy = policy_setup()
    direction = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(4))
    rival = 5
    with torch.no_grad():
        model.get_output_embeddings().weight[[policy.end_id, rival]] = direction * 50
        draw = policy.draw(0, direction.expand(64, -1), torch.Generator().manual_seed(5))
    stop = policy.stop_fn(0)
    assert torch.equal(stop, draw.sample["ids"][:, 0] == policy.end_id)
    assert 0 < int(stop.sum()) < 64  # the un-noised argmax is one id for every row: an un-noised exit is all or none
    assert set(draw.sample["ids"][:, 0].tolist()) == {policy.end_id, rival}
    # the exit record is scored as the discrete end token (SofT-GRPO's one-hot exit record)
    end_logp = policy.logits(direction.expand(64, -1)).log_softmax(-1)[:, policy.end_id]
    assert torch.allclose(draw.logp[stop], end_logp[stop], atol=1e-6, rtol=0)
    assert not torch.allclose(draw.logp[~stop], end_logp[~stop], atol=1e-3)


# ---------------------------------------------------------------- rollouts


def test_latent_rollout_recomputes_mu_exactly():
    model, tokenizer, policy = policy_setup()
    with torch.no_grad():  # make the end of thinking likely enough that some chains end early and some do not
        head = model.get_output_embeddings().weight
        head[policy.end_id] = head[policy.end_id] * 40
    prompts = [[4, 5, 2], [6, 2]]
    rolled = latent_rollout(
        model,
        prompts,
        4,
        policy,
        n_slots=4,
        eot_id=policy.end_id,
        max_new_tokens=5,
        eos_id=0,
        pad_id=1,
        temperature=0.7,
        generator=torch.Generator().manual_seed(0),
    )
    used = rolled.thought_mask.bool()
    assert bool(used.any()) and bool(rolled.exited.any()) and not bool(rolled.exited.all())
    out = recompute_latent(model, policy, rolled, prompts, temperature=0.7, flip=torch.ones(8, dtype=torch.bool))
    assert torch.allclose(out.thought_logp[used], rolled.thoughts.logp[used], atol=1e-5, rtol=0)
    assert torch.allclose(out.token_logp, rolled.tempered_logprobs, atol=1e-5, rtol=0)
    ratio = torch.exp(out.thought_logp[used] - rolled.thoughts.logp[used])
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)
    # the exit slot (the first masked slot of a row that exited) is recomputed exactly too, should a caller count it
    rows_prompts = [p for p in prompts for _ in range(4)]
    batch = completion_batch(rows_prompts, rolled.completion_ids, rolled.mask, rolled.thought_mask, rolled.eot_id, 1)
    thought_fn, trace = replaying_thoughts(policy, rolled.thoughts)
    with torch.no_grad():
        thought_forward(model, batch, thought_fn=thought_fn)
    rows = rolled.exited.nonzero().squeeze(-1)
    slots = rolled.thought_mask.sum(dim=1)[rows]
    assert torch.equal(rolled.thoughts.sample["ids"][rows, slots, 0], torch.full_like(rows, policy.end_id))
    assert torch.allclose(trace.stacked()[rows, slots], rolled.thoughts.logp[rows, slots], atol=1e-5, rtol=0)
    # the completion text: recorded thinking tokens, the end token, then the generated tokens
    texts = thinking_completion_ids(rolled.thoughts.sample["ids"], rolled.thought_mask, policy.end_id, rolled.token_ids)
    for i, ids in enumerate(texts):
        n = int(used[i].sum())
        assert ids[:n] == rolled.thoughts.sample["ids"][i, :n, 0].tolist()
        assert ids[n] == policy.end_id and ids[n + 1 :] == rolled.token_ids[i]
    assert "###" in tokenizer.decode(texts[0])


# ---------------------------------------------------------------- configs and set-up errors


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("top_k", 0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("min_p", 1.0),
        ("temperature", 0.0),
        ("gumbel_temperature", -0.1),
        ("noise_factor", -1.0),
        ("noise_factor", math.inf),
        ("clamp_low", 0.5),
        ("clamp_high", 0.0),
        ("min_logp", 0.0),
        ("max_thinking", 0),
        ("end_text", " "),
    ],
)
def test_config_rejects_bad_values_naming_the_field(key, value):
    with pytest.raises(FieldError, match=key) as caught:
        SoftThinkingConfig(**{key: value})
    assert caught.value.key == key


def test_end_of_thinking_id_and_policy_set_up_errors():
    tokenizer = tiny_tokenizer()
    assert end_of_thinking_id(tokenizer, "###") == tokenizer.convert_tokens_to_ids("###")
    assert end_of_thinking_id(tokenizer, "### 4") == tokenizer.convert_tokens_to_ids("###")
    with pytest.raises(ConfigError, match="end_text"):
        end_of_thinking_id(tokenizer, " ")
    model = tiny_model("gpt2", len(tokenizer))
    with pytest.raises(ConfigError, match="top_k"):
        SoftThinkingPolicy(model, SoftThinkingConfig(top_k=10_000), 3)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        SoftThinkingPolicy(model, DEFAULTS, len(tokenizer))
    with pytest.raises(ConfigError, match="before draw"):
        SoftThinkingPolicy(model, DEFAULTS, 3).stop_fn(0)
