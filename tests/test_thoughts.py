"""Continuous thoughts: the KV-cached path against a recompute-everything reference, batch invariance, generation."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from latentlab.data.schema import CoTExample
from latentlab.errors import ConfigError
from latentlab.reasoning.curriculum import IGNORE_INDEX, CurriculumConfig, LayoutVocab, build_layout
from latentlab.reasoning.thoughts import (
    ThoughtBatch,
    ThoughtTokens,
    add_thought_tokens,
    collate_layouts,
    generate_from_ids,
    generate_with_thoughts,
    thought_forward,
)

WORDS = (
    ["<eos>", "<pad>", "\n", "###"]
    + [str(i) for i in range(10)]
    + ["what", "is", "plus", "times", "then", "so", "the", "answer", "a", "b", "c"]
)
ATOL = 1e-5


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<eos>"))
    # split on spaces and keep "\n" as a token of its own, as the curriculum's separators need
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(" ", behavior="removed"), pre_tokenizers.Split("\n", behavior="isolated")]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")


def tiny_model(arch: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    if arch == "gpt2":
        config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab_size, n_positions=128, **ids)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab_size,
            max_position_embeddings=128,
            **ids,
        )
        model = LlamaForCausalLM(config)
    return model.eval()  # no dropout: the two paths must be comparable


@pytest.fixture(params=["gpt2", "llama"])
def setup(request):
    tokenizer = tiny_tokenizer()
    model = tiny_model(request.param, len(tokenizer))
    tokens = add_thought_tokens(tokenizer, model)
    vocab = LayoutVocab.from_tokenizer(tokenizer, tokens.bot_id, tokens.thought_id, tokens.eot_id)
    return model, tokenizer, tokens, vocab


EXAMPLES = [
    CoTExample("short", "what is 2", ["2 plus 1 is 3"], "3"),
    CoTExample("long", "what is 2 plus 3 times 4 then 5", ["3 times 4 is 12", "2 plus 12 is 14", "14 plus 5"], "19"),
    CoTExample("mid", "what is 7 times 2", ["7 times 2 is 14", "so 14"], "14"),
]


def layouts_at(vocab: LayoutVocab, stage: int, examples=EXAMPLES, pad: bool = True):
    config = CurriculumConfig(thoughts_per_step=1, max_latent_stage=3, pad_latent_to_max=pad)
    return [build_layout(example, stage, config, vocab) for example in examples]


# ---------------------------------------------------------------- recompute-everything reference


def full_hidden(model, embeds, mask):
    """One full forward (no cache); last-layer hidden states [B, T, H] and logits [B, T, V]."""
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def reference_forward(model, batch: ThoughtBatch):
    """Thoughts by re-running the whole prefix for each one, then one full forward over the whole sequence."""
    embed = model.get_input_embeddings()
    embeds, mask = embed(batch.prefix_ids), batch.prefix_mask
    thoughts = []
    for index in range(batch.n_thoughts):
        hidden, _ = full_hidden(model, embeds, mask)
        thoughts.append(hidden[:, -1])
        embeds = torch.cat([embeds, hidden[:, -1:]], dim=1)
        mask = torch.cat([mask, batch.thought_mask[:, index : index + 1]], dim=1)
    embeds = torch.cat([embeds, embed(batch.suffix_ids)], dim=1)
    mask = torch.cat([mask, batch.suffix_mask], dim=1)
    _, logits = full_hidden(model, embeds, mask)
    start = batch.prefix_ids.shape[1] + batch.n_thoughts - 1  # the column that predicts suffix token 0
    suffix_logits = logits[:, start : start + batch.suffix_ids.shape[1]]
    labels = batch.suffix_labels
    loss = torch.nn.functional.cross_entropy(suffix_logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
    contexts = torch.stack(thoughts, dim=1) if thoughts else None
    return suffix_logits, contexts, loss


def test_layout_batch_is_padded_as_documented(setup):
    _, tokenizer, tokens, vocab = setup
    batch = collate_layouts(layouts_at(vocab, 2), pad_id=tokenizer.pad_token_id)
    assert (batch.prefix_ids[:, -1] == tokens.bot_id).all()  # <bot> in one column
    assert (batch.suffix_ids[:, 0] == tokens.eot_id).all()
    assert batch.prefix_mask[0, 0] == 0 and batch.prefix_mask[1].all()  # the short question is left-padded
    assert batch.suffix_mask[1].all() and batch.suffix_mask[0, -1] == 0  # the short language part right-padded
    assert batch.n_thoughts == 2 and batch.thought_mask.all()  # the 1-step row's count is padded to the batch max


@pytest.mark.parametrize("stage", [1, 4])
def test_cached_path_matches_full_recompute(setup, stage):
    model, tokenizer, _, vocab = setup
    batch = collate_layouts(layouts_at(vocab, stage), pad_id=tokenizer.pad_token_id)
    out = thought_forward(model, batch, return_logits=True)
    ref_logits, ref_contexts, ref_loss = reference_forward(model, batch)
    real = batch.suffix_mask.bool()
    torch.testing.assert_close(out.logits[real], ref_logits[real], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.thought_contexts, ref_contexts, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.thought_inputs, out.thought_contexts, atol=0, rtol=0)
    torch.testing.assert_close(out.loss, ref_loss, atol=ATOL, rtol=0)
    assert out.n_label_tokens == int((batch.suffix_labels != IGNORE_INDEX).sum())
    assert out.thought_contexts.shape == (3, batch.n_thoughts, 64)


def test_gradient_flows_through_the_chain_of_thoughts(setup):
    model, tokenizer, _, vocab = setup
    batch = collate_layouts(layouts_at(vocab, 2), pad_id=tokenizer.pad_token_id)
    weight = model.get_input_embeddings().weight

    def embedding_grad(loss):
        model.zero_grad()
        loss.backward()
        return weight.grad.clone()

    fed = []

    def keep(index, hidden):
        hidden.retain_grad()
        fed.append(hidden)
        return hidden

    cached = embedding_grad(thought_forward(model, batch).loss)
    reference = embedding_grad(reference_forward(model, batch)[2])
    torch.testing.assert_close(cached, reference, atol=ATOL, rtol=0)
    embedding_grad(thought_forward(model, batch, thought_fn=keep).loss)
    assert fed[0].grad.abs().sum() > 0  # the language loss reaches the first thought...
    detached = embedding_grad(thought_forward(model, batch, thought_fn=lambda i, h: h.detach()).loss)
    question_rows = batch.prefix_ids[batch.prefix_mask.bool()].unique()
    # ...and through it the question's embeddings: cutting the chain changes their gradient
    assert (cached[question_rows] - detached[question_rows]).abs().max() > 1e-6


def test_row_does_not_change_when_batched_with_longer_rows(setup):
    model, tokenizer, _, vocab = setup
    alone = thought_forward(model, collate_layouts(layouts_at(vocab, 2, EXAMPLES[:1]), 1), return_logits=True)
    mixed = thought_forward(model, collate_layouts(layouts_at(vocab, 2), 1), return_logits=True)
    width = alone.logits.shape[1]
    torch.testing.assert_close(mixed.logits[0, :width], alone.logits[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(mixed.thought_contexts[0], alone.thought_contexts[0], atol=ATOL, rtol=0)


def test_masked_thought_slots_leave_a_shorter_row_unchanged(setup):
    model, tokenizer, _, vocab = setup
    layouts = layouts_at(vocab, 3, pad=False)  # 1, 3 and 2 thoughts
    assert [layout.n_thoughts for layout in layouts] == [1, 3, 2]
    mixed = thought_forward(model, collate_layouts(layouts, 1, mask_unused_thoughts=True), return_logits=True)
    for row, layout in enumerate(layouts):
        alone = thought_forward(model, collate_layouts([layout], 1), return_logits=True)
        width, n = alone.logits.shape[1], layout.n_thoughts
        torch.testing.assert_close(mixed.logits[row, :width], alone.logits[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(mixed.thought_contexts[row, :n], alone.thought_contexts[0], atol=ATOL, rtol=0)


def test_add_thought_tokens_is_idempotent(setup):
    model, tokenizer, tokens, _ = setup
    size, weights = len(tokenizer), model.get_input_embeddings().weight.detach().clone()
    assert add_thought_tokens(tokenizer, model) == tokens
    assert len(tokenizer) == size and torch.equal(model.get_input_embeddings().weight, weights)
    assert tokenizer.decode([tokens.bot_id, 5, tokens.thought_id, tokens.eot_id], skip_special_tokens=True) == "1"
    assert isinstance(tokens, ThoughtTokens) and len({tokens.bot_id, tokens.thought_id, tokens.eot_id}) == 3


def test_init_from_text_copies_the_mean_embedding_once():
    tokenizer = tiny_tokenizer()
    model = tiny_model("llama", len(tokenizer))
    tokens = add_thought_tokens(tokenizer, model, init_from_text="plus times")
    source = tokenizer("plus times", add_special_tokens=False)["input_ids"]
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        expected = matrix[source].mean(0).detach()
        for token in (tokens.bot_id, tokens.thought_id, tokens.eot_id):
            torch.testing.assert_close(matrix[token].detach(), expected, atol=0, rtol=0)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokens.bot_id] += 1.0  # "trained" since
    trained = model.get_input_embeddings().weight.detach().clone()
    add_thought_tokens(tokenizer, model, init_from_text="plus times")
    assert torch.equal(model.get_input_embeddings().weight, trained)


def test_gradient_checkpointing_is_refused_instead_of_silently_dropping_the_cache(setup):
    model, tokenizer, _, vocab = setup
    # transformers 5 renamed gradient checkpointing to activation checkpointing
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        thought_forward(model, collate_layouts(layouts_at(vocab, 2), pad_id=1))


# ---------------------------------------------------------------- generation


@torch.no_grad()
def naive_greedy(model, prefix, n_thoughts, eot_id, eos_id, max_new_tokens, thought_fn=None):
    """One row, no padding, no cache: re-run everything for every thought and every token."""
    embed = model.get_input_embeddings()
    embeds = embed(torch.tensor([prefix]))
    mask = lambda: torch.ones(1, embeds.shape[1], dtype=torch.long)  # noqa: E731
    for index in range(n_thoughts):
        hidden = full_hidden(model, embeds, mask())[0][:, -1]
        fed = hidden if thought_fn is None else thought_fn(index, hidden)
        embeds = torch.cat([embeds, fed[:, None]], dim=1)
    embeds = torch.cat([embeds, embed(torch.tensor([[eot_id]]))], dim=1)
    tokens = []
    for _ in range(max_new_tokens):
        token = int(full_hidden(model, embeds, mask())[1][0, -1].argmax())
        if token == eos_id:
            break
        tokens.append(token)
        embeds = torch.cat([embeds, embed(torch.tensor([[token]]))], dim=1)
    return tokens


def test_generation_matches_naive_loop_and_counts_tokens(setup):
    model, tokenizer, tokens, vocab = setup
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)]
    first = generate_from_ids(model, prefixes, 2, 6, eos_id=vocab.eos_id, eot_id=tokens.eot_id, pad_id=1)
    # an EOS the random model does emit: the token row 0 generates third, so lengths differ between rows
    eos = first.token_ids[0][2]
    result = generate_from_ids(model, prefixes, 2, 6, eos_id=eos, eot_id=tokens.eot_id, pad_id=1)
    again = generate_from_ids(model, prefixes, 2, 6, eos_id=eos, eot_id=tokens.eot_id, pad_id=1)
    assert result.token_ids == again.token_ids
    torch.testing.assert_close(result.thought_inputs, again.thought_inputs, atol=0, rtol=0)
    for row, prefix in enumerate(prefixes):
        assert result.token_ids[row] == naive_greedy(model, prefix, 2, tokens.eot_id, eos, 6)
    assert result.token_ids[0] == first.token_ids[0][: first.token_ids[0].index(eos)]
    assert result.n_language_tokens == [len(t) for t in result.token_ids] and result.n_language_tokens[0] <= 2
    assert result.n_latent_tokens == [2, 2, 2]


def test_generation_thought_hook_and_per_row_counts(setup):
    model, tokenizer, tokens, vocab = setup
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)]
    offset = torch.linspace(-1, 1, 64)
    seen = []

    def perturb(index, hidden):
        seen.append((index, tuple(hidden.shape)))
        return hidden + (index + 1) * offset

    result = generate_from_ids(
        model, prefixes, [1, 3, 2], 5, eos_id=vocab.eos_id, eot_id=tokens.eot_id, thought_fn=perturb
    )
    assert [i for i, _ in seen] == [0, 1, 2] and seen[0][1] == (3, 64)
    assert result.n_latent_tokens == [1, 3, 2]
    for row, (prefix, n) in enumerate(zip(prefixes, [1, 3, 2])):
        assert result.token_ids[row] == naive_greedy(model, prefix, n, tokens.eot_id, vocab.eos_id, 5, perturb)


def test_shuffled_thoughts_feed_each_row_the_next_rows_thought(setup):
    from latentlab.reasoning.module import shuffled_thoughts

    model, _, tokens, vocab = setup
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)]
    plain = generate_from_ids(model, prefixes, 2, 3, eos_id=vocab.eos_id, eot_id=tokens.eot_id)
    shuffled = generate_from_ids(
        model, prefixes, 2, 3, eos_id=vocab.eos_id, eot_id=tokens.eot_id, thought_fn=shuffled_thoughts(None)
    )
    # slot 0 is fed from the question alone, so row i gets exactly row i+1's first thought
    torch.testing.assert_close(shuffled.thought_inputs[:, 0], plain.thought_inputs[[1, 2, 0], 0])
    assert not torch.allclose(shuffled.thought_inputs[:, 0], plain.thought_inputs[:, 0])


def test_stop_fn_ends_a_row_like_a_shorter_thought_count(setup):
    """A row stopped at slot 2 of 4 generates exactly what it generates with 2 thoughts; the other row is untouched."""
    model, _, tokens, vocab = setup
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)][:2]
    calls = []

    def stop_first_row_at_two(index):
        calls.append(index)
        return torch.tensor([index == 2, False])

    stopped = generate_from_ids(
        model, prefixes, 4, 6, eos_id=vocab.eos_id, eot_id=tokens.eot_id, stop_fn=stop_first_row_at_two
    )
    plain = generate_from_ids(model, prefixes, [2, 4], 6, eos_id=vocab.eos_id, eot_id=tokens.eot_id)
    assert calls == [0, 1, 2, 3]
    assert stopped.n_latent_tokens == [2, 4]
    assert stopped.token_ids == plain.token_ids


def test_generate_with_thoughts_formats_questions_as_in_training(setup):
    model, tokenizer, tokens, vocab = setup
    questions = [example.question for example in EXAMPLES]
    result = generate_with_thoughts(model, tokenizer, questions, n_thoughts=2, max_new_tokens=4)
    prefixes = [layout.prefix_ids for layout in layouts_at(vocab, 0)]
    by_ids = generate_from_ids(model, prefixes, 2, 4, eos_id=vocab.eos_id, eot_id=tokens.eot_id)
    assert result.token_ids == by_ids.token_ids
    assert result.texts == tokenizer.batch_decode(by_ids.token_ids, skip_special_tokens=True)
    assert all(isinstance(text, str) for text in result.texts)
