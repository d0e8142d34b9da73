"""Seams for RL on continuous thoughts: recorded token log-probs, recorded and replayed thoughts, the new cache API."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn
from transformers.utils import generic as hf_generic

from latentlab.backbones import load_causal_lm
from latentlab.memory.generator import Generator
from latentlab.memory.prompting import LATENT, Prompt, pack_prompts
from latentlab.reasoning.curriculum import IGNORE_INDEX
from latentlab.reasoning.thoughts import (
    ThoughtDraw,
    generate_from_ids,
    generate_with_thoughts,
    label_logprobs,
    recording_thoughts,
    replaying_thoughts,
    rollout_batch,
    thought_forward,
)
from tests.test_thoughts import EXAMPLES, layouts_at, setup, tiny_model, tiny_tokenizer  # noqa: F401 - setup: the shared fixture

ATOL = 1e-5


class GaussianThoughts(nn.Module):
    """A toy policy: thought ~ N(hidden + shift, sigma^2 I); its log-density is that of the thought fed."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.shift = nn.Parameter(torch.linspace(-0.1, 0.1, hidden_size))
        self.log_sigma = nn.Parameter(torch.tensor(0.0))

    def _logp(self, hidden: Tensor, fed: Tensor) -> Tensor:
        normal = torch.distributions.Normal(hidden + self.shift, self.log_sigma.exp())
        return normal.log_prob(fed).sum(dim=-1)

    def draw(self, index: int, hidden: Tensor, generator: torch.Generator | None) -> ThoughtDraw:
        noise = torch.randn(hidden.shape, generator=generator)
        fed = hidden + self.shift + self.log_sigma.exp() * noise
        return ThoughtDraw(fed, self._logp(hidden, fed), {"noise": noise})

    def log_prob(self, index: int, hidden: Tensor, fed: Tensor, sample: dict[str, Tensor]) -> Tensor:
        return self._logp(hidden, fed)


# ---------------------------------------------------------------- recorded token log-probs


def test_greedy_records_logprobs_without_changing_a_token(setup):
    model, _, tokens, vocab = setup
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)]
    first = generate_from_ids(model, prefixes, 2, 6, eos_id=vocab.eos_id, eot_id=tokens.eot_id, pad_id=1)
    eos = first.token_ids[0][2]  # an EOS the random model emits, so rows stop at different lengths
    plain = generate_from_ids(model, prefixes, 2, 6, eos_id=eos, eot_id=tokens.eot_id, pad_id=1)
    rich = generate_from_ids(
        model, prefixes, 2, 6, eos_id=eos, eot_id=tokens.eot_id, pad_id=1, top_k_logprobs=4, return_logits=True
    )
    assert rich.token_ids == plain.token_ids and rich.n_language_tokens == plain.n_language_tokens
    assert torch.equal(rich.thought_inputs, plain.thought_inputs)
    assert torch.equal(rich.chosen_logprobs, plain.chosen_logprobs)
    b, t = len(prefixes), 6
    assert rich.chosen_logprobs.shape == rich.token_mask.shape == rich.generated_ids.shape == (b, t)
    assert rich.top_logprobs.shape == rich.top_ids.shape == (b, t, 4) and rich.logits.shape[:2] == (b, t)
    assert plain.top_logprobs is None and plain.logits is None
    mask = rich.token_mask
    # the mask covers the tokens and the EOS that ended them; everything after is padding
    stopped = torch.tensor([eos in row for row in rich.generated_ids.tolist()])
    assert mask.sum(dim=1).tolist() == [n + int(s) for n, s in zip(rich.n_language_tokens, stopped)]
    assert rich.generated_ids[0, len(rich.token_ids[0])] == eos and mask[0, len(rich.token_ids[0])]
    assert (rich.chosen_logprobs[~mask] == 0).all() and (rich.top_logprobs[~mask] == 0).all()
    assert (rich.top_ids[~mask] == eos).all() and (rich.logits[~mask] == 0).all()
    assert torch.isfinite(rich.chosen_logprobs).all() and (rich.chosen_logprobs[mask] < 0).all()
    # greedy: the chosen token is the top-1 of log_softmax(logits) (T = 1), and the record is that distribution's
    assert torch.equal(rich.top_ids[..., 0][mask], rich.generated_ids[mask])
    torch.testing.assert_close(rich.top_logprobs[..., 0][mask], rich.chosen_logprobs[mask], atol=0, rtol=0)
    torch.testing.assert_close(
        rich.logits.log_softmax(-1).gather(-1, rich.generated_ids[..., None])[..., 0][mask],
        rich.chosen_logprobs[mask],
        atol=ATOL,
        rtol=0,
    )
    assert (rich.top_logprobs[..., :-1] >= rich.top_logprobs[..., 1:]).all()
    assert rich.thought_mask.tolist() == [[1, 1]] * b


def test_sampled_logprobs_are_of_the_tempered_distribution(setup):
    model, _, tokens, vocab = setup
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)]

    def sample(**kwargs):
        generator = torch.Generator().manual_seed(3)
        return generate_from_ids(
            model,
            prefixes,
            1,
            5,
            eos_id=vocab.eos_id,
            eot_id=tokens.eot_id,
            temperature=0.7,
            generator=generator,
            **kwargs,
        )

    plain, rich = sample(), sample(top_k_logprobs=3, return_logits=True)
    assert rich.token_ids == plain.token_ids  # recording draws no extra random numbers
    mask = rich.token_mask
    tempered = (rich.logits / 0.7).log_softmax(-1)
    picked = tempered.gather(-1, rich.generated_ids[..., None])[..., 0]
    torch.testing.assert_close(picked[mask], rich.chosen_logprobs[mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(tempered.topk(3, dim=-1).values[mask], rich.top_logprobs[mask], atol=ATOL, rtol=0)


def test_generate_with_thoughts_carries_the_records(setup):
    model, tokenizer, _, _ = setup
    questions = [example.question for example in EXAMPLES]
    result = generate_with_thoughts(model, tokenizer, questions, n_thoughts=1, max_new_tokens=3, top_k_logprobs=2)
    assert result.chosen_logprobs.shape == (3, 3) and result.top_ids.shape == (3, 3, 2)


# ---------------------------------------------------------------- recorded and replayed thoughts


def rollout(model, tokens, vocab, policy, temperature=0.0):
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)]
    thought_fn, recorder = recording_thoughts(policy, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    result = generate_from_ids(
        model,
        prefixes,
        [1, 3, 2],
        5,
        eos_id=vocab.eos_id,
        eot_id=tokens.eot_id,
        pad_id=1,
        thought_fn=thought_fn,
        temperature=temperature,
        generator=generator,
        return_logits=True,
    )
    return prefixes, result, recorder.recorded()


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_replayed_forward_reproduces_the_rollout(setup, temperature):
    """(a) Fed the recorded thoughts, the training forward gives the rollout's logits and token log-probs."""
    model, _, tokens, vocab = setup
    policy = GaussianThoughts(model.config.hidden_size)
    prefixes, result, recorded = rollout(model, tokens, vocab, policy, temperature)
    assert recorded.fed.shape == (3, 3, 64) and recorded.logp.shape == (3, 3)
    assert recorded.sample["noise"].shape == (3, 3, 64)
    assert torch.equal(recorded.fed, result.thought_inputs)  # the hook recorded what was fed
    assert result.thought_mask.tolist() == [[1, 0, 0], [1, 1, 1], [1, 1, 0]]

    batch = rollout_batch(prefixes, result, tokens.eot_id, pad_id=1)
    thought_fn, _ = replaying_thoughts(policy, recorded)
    out = thought_forward(model, batch, thought_fn=thought_fn, return_logits=True)
    torch.testing.assert_close(out.thought_inputs, recorded.fed, atol=0, rtol=0)
    mask = result.token_mask
    torch.testing.assert_close(out.logits[:, 1:][mask], result.logits[mask], atol=ATOL, rtol=0)
    head = model.get_output_embeddings()
    logp = label_logprobs(head, out.predictor_hidden, batch.suffix_labels, temperature or 1.0)[:, 1:]
    torch.testing.assert_close(logp[mask], result.chosen_logprobs[mask], atol=ATOL, rtol=0)
    assert (batch.suffix_labels[:, 0] == IGNORE_INDEX).all() and (logp[~mask] == 0).all()


def test_replayed_log_density_matches_the_rollout_and_has_gradients(setup):
    """(b) The replay recomputes the hook's log-density exactly, and it trains the policy and the reasoner."""
    model, _, tokens, vocab = setup
    policy = GaussianThoughts(model.config.hidden_size)
    prefixes, result, recorded = rollout(model, tokens, vocab, policy)
    thought_fn, trace = replaying_thoughts(policy, recorded)
    out = thought_forward(model, rollout_batch(prefixes, result, tokens.eot_id, pad_id=1), thought_fn=thought_fn)
    logp = trace.stacked()
    assert logp.shape == (3, 3) and logp.requires_grad
    torch.testing.assert_close(logp, recorded.logp, atol=ATOL, rtol=0)
    # the noise the policy drew is what separates the fed thought from its mean
    torch.testing.assert_close(
        recorded.fed - out.thought_contexts.detach() - policy.shift.detach(),
        recorded.sample["noise"],
        atol=ATOL,
        rtol=0,
    )
    model.zero_grad()
    (logp * result.thought_mask).sum().backward()
    assert policy.log_sigma.grad is not None and policy.log_sigma.grad.abs() > 0
    assert policy.shift.grad is not None and policy.shift.grad.abs().sum() > 0
    embedding = model.get_input_embeddings().weight  # through the recomputed hidden states, into the reasoner
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0
    # micro-batches of rollouts replay the same rows
    sub = recorded.rows([2, 0])
    assert torch.equal(sub.fed, recorded.fed[[2, 0]]) and torch.equal(
        sub.sample["noise"], recorded.sample["noise"][[2, 0]]
    )


def test_replay_refuses_a_forward_that_does_not_fit_the_recording(setup):
    from latentlab.errors import ConfigError

    model, _, tokens, vocab = setup
    policy = GaussianThoughts(model.config.hidden_size)
    prefixes, result, recorded = rollout(model, tokens, vocab, policy)
    thought_fn, _ = replaying_thoughts(policy, recorded.rows([0, 1]))
    with pytest.raises(ConfigError, match="replayed thoughts"):
        thought_forward(model, rollout_batch(prefixes, result, tokens.eot_id, pad_id=1), thought_fn=thought_fn)


# ---------------------------------------------------------------- the cache argument of transformers 5.24


@pytest.fixture
def no_deprecated_cache_name(monkeypatch):
    """FutureWarnings (the deprecated ``past_key_values=`` kwarg) raise; reading ``out.past_key_values`` is logged
    once per process by transformers, so its logger is watched directly."""
    logged: list[str] = []
    logger = hf_generic.logger
    monkeypatch.setattr(logger, "warning_once", lambda message, *a, **k: logged.append(str(message)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        yield logged
    assert not [m for m in logged if "past_key_values" in m], logged


def test_thought_paths_use_the_cache_argument(setup, no_deprecated_cache_name):
    model, tokenizer, tokens, vocab = setup
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)]
    generate_from_ids(model, prefixes, 2, 3, eos_id=vocab.eos_id, eot_id=tokens.eot_id, pad_id=1)
    from latentlab.reasoning.thoughts import collate_layouts

    thought_forward(model, collate_layouts(layouts_at(vocab, 2), pad_id=1)).loss.backward()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generator_uses_the_cache_argument(arch, no_deprecated_cache_name):
    torch.manual_seed(0)
    loaded = load_causal_lm({"tiny": {"arch": arch, "layers": 2, "hidden": 64, "heads": 4}})
    generator = Generator(loaded.model, loaded.tokenizer)
    prompts = [Prompt([5, 6, 7, 11, LATENT, 12], 4, 5), Prompt([5, 6, 7, 11, LATENT, 14, 15], 4, 5)]
    latents = torch.randn(2, 64)
    split = pack_prompts(prompts, generator.embed, latents, [[20, 21], [22]], split_prefix=True)
    assert split.prefix_ids  # the prefix is read from the cache
    generator.continuation_logits(split)
    generator.answer(prompts, 3, latents)
