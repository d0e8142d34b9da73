"""ATP-Latent CVAE: KL and ELBO against hand-computed values, modules, decoding, and the hook into thought_forward."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from latentlab.errors import ConfigError
from latentlab.reasoning.cvae import (
    LOGVAR_MAX,
    LOGVAR_MIN,
    CVAEConfig,
    LatentStepCVAE,
    StepDecoder,
    StepPosterior,
    StepPrior,
    StepTextEncoder,
    beta_schedule,
    decode_steps,
    elbo_loss,
    gaussian_kl,
    reparameterize,
    stop_loss,
    stop_targets,
)
from latentlab.reasoning.thoughts import ThoughtBatch, generate_from_ids, thought_forward

EOS = 0


def test_kl_of_unit_shifted_gaussian_against_standard_normal_is_half():
    kl = gaussian_kl(torch.tensor([[1.0]]), torch.tensor([[0.0]]))
    torch.testing.assert_close(kl, torch.tensor([0.5]), atol=1e-7, rtol=0)


def test_kl_against_a_non_standard_prior():
    # q = N(1, 2), p = N(0.5, 4): 0.5 * (ln 4 - ln 2 + (2 + 0.25) / 4 - 1) = 0.5 * (ln 2 - 0.4375)
    kl = gaussian_kl(
        torch.tensor([1.0]), torch.tensor([math.log(2.0)]), torch.tensor([0.5]), torch.tensor([math.log(4.0)])
    )
    torch.testing.assert_close(kl, torch.tensor(0.5 * (math.log(2.0) - 0.4375)), atol=1e-7, rtol=0)
    assert abs(kl.item() - 0.1278236) < 1e-6


def test_kl_sums_over_the_latent_dim_and_keeps_leading_dims():
    mu_q = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [1, 2, 2]
    kl = gaussian_kl(mu_q, torch.zeros_like(mu_q))
    torch.testing.assert_close(kl, torch.tensor([[0.5, 2.0]]), atol=1e-7, rtol=0)


def test_kl_is_zero_for_identical_distributions_and_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    torch.testing.assert_close(gaussian_kl(mu, logvar, mu, logvar), torch.zeros(3, 4), atol=1e-6, rtol=0)
    mu_p, logvar_p = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * logvar_p).exp())
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar, mu_p, logvar_p), expected, atol=1e-5, rtol=0)


def test_elbo_arithmetic():
    recon, kl = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])
    torch.testing.assert_close(elbo_loss(recon, kl, beta=0.5), torch.tensor(4.0))  # mean(2.5, 5.5)
    torch.testing.assert_close(elbo_loss(recon, kl, beta=0.0), torch.tensor(3.0))
    torch.testing.assert_close(elbo_loss(recon, kl, beta=0.5, mask=torch.tensor([1, 0])), torch.tensor(2.5))


def test_beta_warmup_is_linear_then_constant():
    assert [beta_schedule(step, 0.2, 100) for step in (0, 25, 50, 100, 1000)] == pytest.approx(
        [0.0, 0.05, 0.1, 0.2, 0.2]
    )
    assert beta_schedule(0, 0.2, 0) == 0.2


def test_reparameterize_has_the_right_moments_and_gradients():
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(4.0)], requires_grad=True)
    z = reparameterize(mu.expand(20000, 2), logvar.expand(20000, 2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0]), atol=0.05, rtol=0)
    eps = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))  # the same draw
    sigma = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(z, torch.tensor([1.0, -2.0]) + sigma * eps, atol=1e-6, rtol=0)
    z.sum().backward()
    # d(sum z)/d mu_j = number of rows; d(sum z)/d logvar_j = sum_i 0.5 * sigma_j * eps_ij
    torch.testing.assert_close(mu.grad, torch.tensor([20000.0, 20000.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(logvar.grad, 0.5 * sigma * eps.sum(0), atol=1e-3, rtol=0)


def test_priors_and_posterior_shapes():
    context, text = torch.randn(3, 16), torch.randn(3, 8)
    mu, logvar = StepPrior(16, 4, "standard_normal")(context)
    assert torch.equal(mu, torch.zeros(3, 4)) and torch.equal(logvar, torch.zeros(3, 4))
    # The head's last layer set by hand: its first Z outputs are mu, the last Z the log-variance, clamped.
    bias = torch.tensor([1.0, 2.0, 3.0, 4.0, -20.0, 0.0, 20.0, 5.0])
    expected_logvar = torch.tensor([LOGVAR_MIN, 0.0, LOGVAR_MAX, 5.0]).expand(3, 4)
    prior = StepPrior(16, 4, "learned")
    posterior = StepPosterior(16, 4, text_dim=8)
    for head in (prior.head, posterior.head):
        with torch.no_grad():
            head.net[-1].weight.zero_()
            head.net[-1].bias.copy_(bias)
    for mu, logvar in (prior(context), posterior(context, text)):
        torch.testing.assert_close(mu, torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(3, 4), atol=0, rtol=0)
        torch.testing.assert_close(logvar, expected_logvar, atol=0, rtol=0)
    assert posterior.head.net[0].in_features == 16 + 8  # the posterior reads the context and the step text
    with pytest.raises(ValueError):
        StepPosterior(16, 4, text_dim=8)(context)
    with pytest.raises(ConfigError, match="cvae.prior"):
        StepPrior(16, 4, "uniform")


def test_text_encoder_ignores_padding_after_a_step():
    torch.manual_seed(0)
    encoder = StepTextEncoder(vocab_size=12, embed_dim=8, text_dim=8)
    short = encoder(torch.tensor([[3, 4]]), torch.tensor([2]))
    padded = encoder(torch.tensor([[3, 4, 9, 9], [5, 6, 7, 8]]), torch.tensor([2, 4]))
    torch.testing.assert_close(padded[:1], short, atol=1e-6, rtol=0)
    assert torch.equal(encoder(torch.tensor([[9, 9]]), torch.tensor([0])), torch.zeros(1, 8))


def test_decoder_nll_matches_a_token_by_token_reference():
    torch.manual_seed(0)
    decoder = StepDecoder(vocab_size=10, latent_dim=3, latents_per_step=2, embed_dim=8, hidden_dim=16)
    z = torch.randn(2, 2, 3)
    steps, lengths = torch.tensor([[4, 5, 6], [7, 1, 1]]), torch.tensor([3, 1])
    nll = decoder.nll(z, steps, lengths, EOS)
    for row in range(2):
        target = steps[row, : lengths[row]].tolist() + [EOS]
        cond, state = decoder._condition(z[row : row + 1])
        current, total = decoder.start.view(1, 1, -1), 0.0
        for token in target:
            logits, state = decoder._run(current, cond, state)
            total -= logits[0, -1].log_softmax(-1)[token]
            current = decoder.embed(torch.tensor([[token]]))
        torch.testing.assert_close(nll[row], total, atol=1e-5, rtol=0)
    empty = decoder.nll(z[:1], steps[:1], torch.tensor([0]), EOS)  # an empty step: EOS only
    cond, state = decoder._condition(z[:1])
    logits, _ = decoder._run(decoder.start.view(1, 1, -1), cond, state)
    torch.testing.assert_close(empty[0], -logits[0, -1].log_softmax(-1)[EOS], atol=1e-6, rtol=0)


def test_decode_steps_recovers_memorised_steps_from_their_latents():
    torch.manual_seed(0)
    decoder = StepDecoder(vocab_size=10, latent_dim=4, latents_per_step=1, embed_dim=16, hidden_dim=32)
    z = torch.tensor([[[3.0, 0, 0, 0]], [[0, 0, -3.0, 0]], [[0, 3.0, 0, 3.0]]])  # [3, c=1, Z]
    steps, lengths = torch.tensor([[4, 5, 6], [7, 8, 0], [0, 0, 0]]), torch.tensor([3, 2, 0])
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-2)
    for _ in range(150):
        optimizer.zero_grad()
        decoder.nll(z, steps, lengths, EOS).sum().backward()
        optimizer.step()
    assert decode_steps(decoder, z, EOS, max_len=6) == [[4, 5, 6], [7, 8], []]
    nested = decode_steps(decoder, z[:2].unsqueeze(0), EOS, max_len=6)  # [B=1, K=2, c, Z]
    assert nested == [[[4, 5, 6], [7, 8]]]

    class Names:
        def batch_decode(self, rows, skip_special_tokens=True):
            return [" ".join(f"t{token}" for token in row) for row in rows]

    assert decode_steps(decoder, z, EOS, max_len=6, tokenizer=Names()) == ["t4 t5 t6", "t7 t8", ""]
    assert decode_steps(decoder, z[:1], EOS, max_len=2) == [[4, 5]]  # truncated at max_len


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="cvae.inference"):
        CVAEConfig(inference="mode")
    with pytest.raises(ConfigError, match="cvae.prior"):
        CVAEConfig(prior="flat")


# ---------------------------------------------------------------- wired into the reasoner


def reasoner_batch():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=20, n_positions=64)).eval()
    batch = ThoughtBatch(
        prefix_ids=torch.tensor([[1, 2, 3, 17], [0, 0, 4, 17]]),
        prefix_mask=torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]]),
        thought_mask=torch.ones(2, 4, dtype=torch.long),
        suffix_ids=torch.tensor([[19, 5, 6, EOS], [19, 7, EOS, 0]]),
        suffix_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        suffix_labels=torch.tensor([[-100, 5, 6, EOS], [-100, 7, EOS, -100]]),
    )
    # K = 2 steps per row (c = 2 thoughts each); row 1's second step is empty (target: EOS only)
    step_ids = torch.tensor([[[8, 9, 10], [11, 12, 0]], [[13, 14, 0], [0, 0, 0]]])
    lengths = torch.tensor([[3, 2], [2, 0]])
    return model, batch, step_ids, lengths


@pytest.mark.parametrize("prior", ["learned", "standard_normal"])
def test_cvae_trains_through_the_thought_hook(prior):
    model, batch, step_ids, lengths = reasoner_batch()
    cvae = LatentStepCVAE(
        CVAEConfig(
            latent_dim=6,
            thoughts_per_step=2,
            prior=prior,
            mlp_dim=16,
            text_embed_dim=8,
            text_dim=8,
            decoder_embed_dim=8,
            decoder_hidden_dim=16,
        ),
        hidden_size=32,
        vocab_size=20,
    )
    text = cvae.encode_steps(step_ids, lengths)
    assert (text is None) == (prior == "standard_normal")
    thought_fn, trace = cvae.training_hook(text, torch.Generator().manual_seed(0))
    out = thought_forward(model, batch, thought_fn=thought_fn)
    recon, kl = cvae.step_losses(trace, step_ids, lengths, EOS)
    assert recon.shape == kl.shape == (2, 2)
    stack = trace.stack
    z = stack(trace.z)  # [B, n = K * c, Z]: step k of a row is decoded from its slots k*c .. k*c + c - 1
    for b in range(2):
        for k in range(2):
            alone = cvae.decoder.nll(
                z[b : b + 1, 2 * k : 2 * k + 2], step_ids[b, k : k + 1], lengths[b, k : k + 1], EOS
            )
            torch.testing.assert_close(recon[b, k], alone[0], atol=1e-5, rtol=0)
    slot_kl = gaussian_kl(stack(trace.mu_q), stack(trace.logvar_q), stack(trace.mu_p), stack(trace.logvar_p))
    torch.testing.assert_close(kl, slot_kl.view(2, 2, 2).sum(-1), atol=1e-6, rtol=0)
    if prior == "standard_normal":
        torch.testing.assert_close(kl, gaussian_kl(stack(trace.mu_q), stack(trace.logvar_q)).view(2, 2, 2).sum(-1))
    torch.testing.assert_close(out.thought_inputs, cvae.to_thought(stack(trace.z)), atol=1e-6, rtol=0)
    (out.loss + elbo_loss(recon, kl, beta_schedule(10, 1.0, 100))).backward()
    for module in (cvae.posterior, cvae.decoder, cvae.to_thought, model.transformer.wte):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), module
    if prior == "learned":
        assert any(p.grad.abs().sum() > 0 for p in cvae.prior.parameters())
        assert any(p.grad.abs().sum() > 0 for p in cvae.text_encoder.parameters())


@pytest.mark.parametrize("prior", ["learned", "standard_normal"])
def test_inference_with_the_mean_is_deterministic_and_decodable(prior):
    model, batch, _, _ = reasoner_batch()
    cvae = LatentStepCVAE(CVAEConfig(latent_dim=6, thoughts_per_step=2, prior=prior, mlp_dim=16), 32, 20).eval()
    runs = []
    for _ in range(2):
        thought_fn, trace = cvae.inference_hook()
        result = generate_from_ids(model, [[1, 2, 3, 17], [4, 17]], 4, 3, eos_id=EOS, eot_id=19, thought_fn=thought_fn)
        z = cvae.group(trace.stack(trace.z))  # [B, K, c, Z]
        runs.append((result.token_ids, z, decode_steps(cvae.decoder, z, EOS, max_len=4)))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1]) and runs[0][2] == runs[1][2]
    assert runs[0][1].shape == (2, 2, 2, 6) and len(runs[0][2]) == 2 and len(runs[0][2][0]) == 2
    sampled_fn, sampled = LatentStepCVAE(
        CVAEConfig(latent_dim=6, thoughts_per_step=2, inference="sample"), 32, 20
    ).inference_hook()
    sampled_fn(0, torch.zeros(2, 32))
    sampled_fn(1, torch.zeros(2, 32))
    assert not torch.equal(sampled.z[0], sampled.z[1])  # same context, two different draws


def test_stop_targets_and_loss_by_hand():
    """Step starts 0, 2, 4 of 6 slots (c = 2): decisions count up to the first stop."""
    targets, valid = stop_targets(torch.tensor([2, 4, 6, 0]), n_slots=6, per_step=2)
    assert targets.tolist() == [[0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 1]]
    assert valid.tolist() == [[True, True, False], [True, True, True], [True, True, True], [True, False, False]]
    logits = torch.zeros(4, 3, 2)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0)])  # p(stop) = 3/4 where the target is stop
    loss = stop_loss(logits, targets, valid)
    expected = (8 * math.log(2.0) + (-math.log(0.75))) / 9  # 9 valid decisions, 8 of them at p = 1/2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
