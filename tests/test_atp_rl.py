"""ATP-Latent RL pieces: the Gaussian latent and stop-head policies against hand-computed log-probs, the decoded
steps, and the coherence reward on the hand cases of latent_rl_spec §6."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from latentlab.configs.rl import RewardConfig
from latentlab.errors import ConfigError, DataError
from latentlab.reasoning.atp_policy import ATPLatentPolicy, GaussianThoughtPolicy, gaussian_logp_per_dim
from latentlab.reasoning.cvae import CVAEConfig, LatentStepCVAE, decode_steps
from latentlab.reasoning.replay import recording_thoughts, replaying_thoughts
from latentlab.rl.atp import coherence, coherence_reward, decode_latent_steps, step_result
from latentlab.rl.rewards import REWARDS, score
from latentlab.rl.rollout import latent_rollout, recompute_latent

ATOL = 1e-6
LOG_2PI = math.log(2 * math.pi)
EOS = 0
Z = 4
PRIORS = ["learned", "standard_normal"]


def tiny_cvae(prior: str = "learned", per_step: int = 2, stop_head: bool = True, **options) -> LatentStepCVAE:
    torch.manual_seed(0)
    config = CVAEConfig(
        latent_dim=Z,
        thoughts_per_step=per_step,
        prior=prior,
        mlp_dim=16,
        text_embed_dim=8,
        text_dim=8,
        decoder_embed_dim=8,
        decoder_hidden_dim=16,
        stop_head=stop_head,
        **options,
    )
    return LatentStepCVAE(config, hidden_size=16, vocab_size=50)


def fix_gaussian(cvae: LatentStepCVAE, mu: float, logvar: float) -> None:
    """Make the text-free Gaussian constant: N(mu, exp(logvar)) in every dim, whatever the hidden state."""
    head = (cvae.prior if cvae.config.prior == "learned" else cvae.posterior).head.net[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([mu] * Z + [logvar] * Z))


def fix_stop(cvae: LatentStepCVAE, continue_logit: float, stop_logit: float) -> None:
    """Make the stop head's logits constant."""
    with torch.no_grad():
        cvae.stop[-1].weight.zero_()
        cvae.stop[-1].bias.copy_(torch.tensor([continue_logit, stop_logit]))


# ---------------------------------------------------------------- the Gaussian latent


def test_per_dim_log_density_by_hand():
    z = torch.ones(1, Z)
    at_zero = gaussian_logp_per_dim(z, torch.zeros(1, Z), torch.zeros(1, Z))
    torch.testing.assert_close(at_zero, torch.tensor([-0.5 * (LOG_2PI + 1.0)]), atol=ATOL, rtol=0)
    shifted = gaussian_logp_per_dim(z, torch.ones(1, Z), torch.zeros(1, Z))
    torch.testing.assert_close(shifted - at_zero, torch.tensor([0.5]), atol=ATOL, rtol=0)  # log-ratio of N(1,1)/N(0,1)
    wide = gaussian_logp_per_dim(z, torch.zeros(1, Z), torch.full((1, Z), math.log(4.0)))
    torch.testing.assert_close(wide, torch.tensor([-0.5 * (LOG_2PI + math.log(4.0) + 0.25)]), atol=ATOL, rtol=0)


def test_per_dim_mean_does_not_grow_with_the_latent_dim():
    torch.manual_seed(0)
    z, mu, logvar = torch.randn(3, Z), torch.randn(3, Z), torch.randn(3, Z)
    doubled = gaussian_logp_per_dim(*(torch.cat([t, t], dim=-1) for t in (z, mu, logvar)))
    torch.testing.assert_close(doubled, gaussian_logp_per_dim(z, mu, logvar), atol=ATOL, rtol=0)
    summed = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(gaussian_logp_per_dim(z, mu, logvar) * Z, summed, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prior", PRIORS)
def test_text_free_gaussian_is_what_inference_reads(prior):
    cvae = tiny_cvae(prior, inference="mean")
    hidden = torch.randn(3, 16)
    thought_fn, trace = cvae.inference_hook()
    fed = thought_fn(0, hidden)
    mu, _ = cvae.text_free_distribution(hidden)
    torch.testing.assert_close(trace.z[0], mu, atol=0, rtol=0)
    torch.testing.assert_close(fed, cvae.to_thought(mu), atol=0, rtol=0)


@pytest.mark.parametrize("prior", PRIORS)
def test_draw_logp_is_log_prob_and_its_gradient_reaches_the_gaussian_head(prior):
    cvae = tiny_cvae(prior)
    policy = GaussianThoughtPolicy(cvae)
    hidden = torch.randn(3, 16)
    with torch.no_grad():
        drawn = policy.draw(0, hidden, torch.Generator().manual_seed(1))
    again = policy.draw(0, hidden, torch.Generator().manual_seed(1))
    torch.testing.assert_close(again.sample["z"], drawn.sample["z"], atol=0, rtol=0)  # the generator's noise
    assert drawn.fed.shape == (3, 16) and drawn.logp.shape == (3,) and drawn.sample["z"].shape == (3, Z)
    torch.testing.assert_close(drawn.fed, cvae.to_thought(drawn.sample["z"]), atol=ATOL, rtol=0)
    hidden.requires_grad_(True)
    recomputed = policy.log_prob(0, hidden, drawn.fed, drawn.sample)
    torch.testing.assert_close(recomputed, drawn.logp, atol=ATOL, rtol=0)
    recomputed.sum().backward()
    head = cvae.prior if prior == "learned" else cvae.posterior
    assert all(p.grad is not None for p in head.parameters()) and any(p.grad.abs().sum() > 0 for p in head.parameters())
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert all(p.grad is None for p in cvae.to_thought.parameters())  # the replayed thought is not scored
    if prior == "learned":
        assert all(p.grad is None for p in cvae.posterior.parameters())


def test_log_ratio_through_the_policy_by_hand():
    cvae = tiny_cvae()
    policy = GaussianThoughtPolicy(cvae)
    hidden, z = torch.randn(2, 16), torch.ones(2, Z)
    fix_gaussian(cvae, mu=0.0, logvar=0.0)
    old = policy.log_prob(0, hidden, cvae.to_thought(z), {"z": z})
    torch.testing.assert_close(old, torch.full((2,), -0.5 * (LOG_2PI + 1.0)), atol=ATOL, rtol=0)
    fix_gaussian(cvae, mu=1.0, logvar=0.0)
    new = policy.log_prob(0, hidden, cvae.to_thought(z), {"z": z})
    torch.testing.assert_close(new - old, torch.full((2,), 0.5), atol=ATOL, rtol=0)  # the sum would give 0.5 * Z


# ---------------------------------------------------------------- the stop head


def test_stop_decision_log_probs_by_hand():
    """At a step start: log P(continue) added to the Gaussian's; at the stop slot log P(stop) alone; between step
    starts no decision."""
    cvae = tiny_cvae(per_step=2)
    fix_stop(cvae, continue_logit=math.log(3.0), stop_logit=0.0)  # P(stop) = 1/4, P(continue) = 3/4
    policy = ATPLatentPolicy(cvae)
    hidden, z = torch.randn(2, 16), torch.randn(2, Z)
    gaussian = policy.gaussian.log_prob(0, hidden, cvae.to_thought(z), {"z": z})
    stop = torch.tensor([1.0, 0.0])
    at_start = policy.log_prob(0, hidden, cvae.to_thought(z), {"z": z, "stop": stop})
    expected = torch.stack([torch.tensor(math.log(0.25)), gaussian[1] + math.log(0.75)])
    torch.testing.assert_close(at_start, expected, atol=ATOL, rtol=0)
    between = policy.log_prob(1, hidden, cvae.to_thought(z), {"z": z, "stop": torch.zeros(2)})
    torch.testing.assert_close(between, gaussian, atol=ATOL, rtol=0)
    with pytest.raises(ConfigError, match="'z' and 'stop'"):
        policy.log_prob(0, hidden, cvae.to_thought(z), {"z": z})


def test_stop_sampler_stops_only_at_step_starts_and_its_record_is_recomputed():
    cvae = tiny_cvae(per_step=3).eval()
    fix_stop(cvae, 0.0, 0.0)  # P(stop) = 1/2 at each step start
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50, n_positions=64, bos_token_id=EOS, eos_token_id=EOS)
    ).eval()
    policy = ATPLatentPolicy(cvae)
    prefixes = [[1 + i % 7, 2 + i % 5, 9] for i in range(12)]
    rolled = latent_rollout(
        model, prefixes, 4, policy, n_slots=7, eot_id=49, max_new_tokens=2, eos_id=EOS,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    stopped_at = rolled.thought_mask.sum(1)
    assert set(stopped_at.tolist()) <= {0, 3, 6, 7} and len(set(stopped_at.tolist())) >= 3  # 7: used every slot
    acted = rolled.action_mask
    assert torch.equal(acted.sum(1), torch.where(stopped_at < 7, stopped_at + 1, stopped_at))
    out = recompute_latent(model, policy, rolled, prefixes, temperature=1.0)
    torch.testing.assert_close(out.thought_logp[acted], rolled.thoughts.logp[acted], atol=ATOL, rtol=0)
    stop_rows = stopped_at < 7
    stop_slot_logp = out.thought_logp[stop_rows, stopped_at[stop_rows]]
    torch.testing.assert_close(stop_slot_logp, torch.full_like(stop_slot_logp, math.log(0.5)), atol=ATOL, rtol=0)
    torch.nn.init.normal_(cvae.stop[-1].weight)  # a head that reads z again
    recompute_latent(model, policy, rolled, prefixes, temperature=1.0).thought_logp.sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in cvae.stop.parameters())


def test_without_a_stop_head_every_chain_runs_its_slots():
    cvae = tiny_cvae(stop_head=False)
    policy = ATPLatentPolicy(cvae)
    draw = policy.draw(0, torch.randn(3, 16), torch.Generator().manual_seed(0))
    assert not policy.stop_fn(0).any() and torch.equal(draw.sample["stop"], torch.zeros(3))
    with pytest.raises(ConfigError, match="before draw"):
        ATPLatentPolicy(cvae).stop_fn(0)


def test_replayed_gaussian_log_probs_match_the_rollout():
    cvae = tiny_cvae()
    policy = GaussianThoughtPolicy(cvae)
    thought_fn, recorder = recording_thoughts(policy, torch.Generator().manual_seed(3))
    hiddens = [torch.randn(2, 16) for _ in range(4)]
    for index, hidden in enumerate(hiddens):
        thought_fn(index, hidden)
    recorded = recorder.recorded()
    replay_fn, trace = replaying_thoughts(policy, recorded)
    for index, hidden in enumerate(hiddens):
        torch.testing.assert_close(replay_fn(index, hidden), recorded.fed[:, index], atol=0, rtol=0)
    torch.testing.assert_close(trace.stacked(), recorded.logp, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- decoding the latents


class Names:
    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(f"t{token}" for token in row) for row in rows]


def test_decode_latent_steps_reads_the_used_steps_of_each_row():
    cvae = tiny_cvae(per_step=2)
    z = torch.randn(3, 6, Z, requires_grad=True)
    texts = decode_latent_steps(cvae, z, torch.tensor([6, 3, 0]), EOS, Names(), max_len=5)
    assert [len(row) for row in texts] == [3, 1, 0]
    grouped = cvae.group(z)  # [B, K, c, Z]
    assert texts[0] == decode_steps(cvae.decoder, grouped[0], EOS, max_len=5, tokenizer=Names())
    assert texts[1] == decode_steps(cvae.decoder, grouped[1, :1], EOS, max_len=5, tokenizer=Names())
    assert decode_latent_steps(cvae, z, torch.tensor([0, 1, 0]), EOS, Names()) == [[], [], []]
    with pytest.raises(DataError, match=r"n_used must be \[3\] counts in \[0, 6\]"):
        decode_latent_steps(cvae, z, torch.tensor([7, 0, 0]), EOS, Names())


# ---------------------------------------------------------------- coherence

CHAIN = ["<<3*4=12>>", "<<12+5=17>>", "<<17*2=34>>"]


def test_step_result_reads_both_step_formats():
    assert step_result("<<3*4=12>>") == "12" and step_result("3*4=12") == "12" and step_result("<<3*4=12") == "12"
    assert step_result(" 3 * 4 = 12 >> and more") == "12" and step_result("<<a=b=7>>") == "7"
    assert step_result("<<3*4=>>") is None and step_result("<<3*4>>") is None and step_result("") is None


def test_coherence_hand_cases():
    assert coherence(CHAIN, "34") == 1.0
    assert coherence([*CHAIN[:2], "<<16*2=32>>"], "34") == pytest.approx(1 / 3, abs=1e-12)
    assert coherence([], "34") == 1.0
    assert coherence(["<<3*4=12>>", "<<12+5>>", "<<17*2=34>>"], "34") == pytest.approx(2 / 3, abs=1e-12)
    # an empty result is a substring of everything: the reference counts it, here it never counts
    assert coherence(["<<3*4=>>", "<<12+5=17>>"], "17") == 0.5
    assert coherence(["<<17*2=>>"], "34") == 0.0
    assert coherence(["3*4=12", "12+5=17"], "17") == 1.0  # the bracket-free form


def test_coherence_matches_whole_numbers_only():
    # plain substrings would score 1.0: "2" is in "<<3*4=12>>"
    assert coherence(["<<1+1=2>>", "<<3*4=12>>"], "12") == 0.5
    assert coherence(["<<1+1=2>>", "<<3*4=12>>"], "120") == 0.0
    assert coherence(["<<2*2=4>>", "<<0.4*2=0.8>>"], "0.8") == 0.5  # "4" is not in "0.4"
    assert coherence(["<<6/4=1.5>>", "<<1.5*2=3>>"], "3") == 1.0
    assert coherence(["<<9-6=3>>", "<<5-3=2>>"], "2") == 1.0  # an operand after an operator counts
    assert coherence(["<<17*2=34>>"], "34.0") == 1.0  # the same number as the answer


def test_coherence_reward_is_registered():
    assert REWARDS.get("coherence") is coherence_reward
    completions = ["so ### 34", "### 32", "### 34"]
    decoded = [CHAIN, [*CHAIN[:2], "<<16*2=32>>"], [*CHAIN[:2], "<<16*2=32>>"]]
    plain = coherence_reward(["q"] * 3, completions, decoded_steps=decoded)
    assert plain == pytest.approx([1.0, 1.0 / 3 + 1.0 / 3, 1.0 / 3], abs=1e-12)  # row 1's last result 32 = answer
    with pytest.raises(DataError, match="needs a column 'decoded_steps'"):
        coherence_reward(["q"], ["### 1"])
    with pytest.raises(DataError, match=r"decoded_steps\[1\] is 'x'; expected a list of step texts"):
        coherence_reward(["q"] * 2, ["### 1"] * 2, decoded_steps=[[], "x"])


def test_reference_total_through_score_with_the_answer_as_gate():
    """r = acc + 0.5 * format + 0.1 * coherence * acc: reward.gates {coherence: answer}."""
    completions = ["### 34", "### 32", "### 34"]
    decoded = [CHAIN, [*CHAIN[:2], "<<16*2=32>>"], [*CHAIN[:2], "<<16*2=32>>"]]
    gold = ["34"] * 3
    weights = {"answer": 1.0, "format": 0.5, "coherence": 0.1}
    config = RewardConfig(weights=weights, gates={"coherence": "answer"})
    total, _, valid = score(["q"] * 3, completions, config, answer=gold, decoded_steps=decoded)
    assert valid.all()
    torch.testing.assert_close(total, torch.tensor([1.6, 0.5, 1.5 + 0.1 / 3]), atol=1e-6, rtol=0)
