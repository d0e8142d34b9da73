"""The embedded SmolLM2-135M-Instruct end to end (marked slow; still in CI): loading, prompts, generation."""

import pytest
import torch

from latentlab.backbones import load_causal_lm
from latentlab.memory.generator import Generator
from latentlab.memory.prompting import PromptBuilder, pack_prompts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_causal_lm("smollm2-135m-instruct")


def test_label_token_costs_measured(smollm2):
    tok = smollm2.tokenizer
    assert len(tok("\nLatent context 1: ", add_special_tokens=False)["input_ids"]) == 8
    builder = PromptBuilder(tok, "You are a helpful assistant.", "paper")
    paper = builder.latent("Where?", 5)
    compact = PromptBuilder(tok, "You are a helpful assistant.", "compact").latent("Where?", 5)
    assert paper.num_latents == compact.num_latents == 5
    # paper labels: 7 tokens for the first label, 8 for the others, plus one latent each
    assert paper.context_tokens == 7 + 4 * 8 + 5
    assert compact.context_tokens < paper.context_tokens / 4


def test_generator_answers_from_raw_context(smollm2):
    generator = Generator(smollm2.model, smollm2.tokenizer)
    builder = PromptBuilder(smollm2.tokenizer, "Answer the question concisely based on the provided context.")
    prompts = [
        builder.text("Where was Tavrin Oskel born?", ["Tavrin Oskel was born in Korvale."]),
        builder.text("What is the capital of France?", []),
    ]
    packed = pack_prompts(prompts, generator.embed, padding_side="left", pad_id=smollm2.tokenizer.pad_token_id)
    with torch.no_grad():
        answers = generator.decode(generator.greedy(packed, max_new_tokens=16))
    assert "Korvale" in answers[0]
    assert "Paris" in answers[1]


def test_left_padded_batch_matches_single(smollm2):
    generator = Generator(smollm2.model, smollm2.tokenizer)
    builder = PromptBuilder(smollm2.tokenizer, "Answer briefly.")
    long_prompt = builder.text("Which city is mentioned?", ["A long passage " * 20 + "about Oslo."])
    short_prompt = builder.text("What is 2 plus 2?", [])
    pad = smollm2.tokenizer.pad_token_id
    with torch.no_grad():
        alone = generator.greedy(pack_prompts([short_prompt], generator.embed, padding_side="left", pad_id=pad), 8)
        both = generator.greedy(
            pack_prompts([long_prompt, short_prompt], generator.embed, padding_side="left", pad_id=pad), 8
        )
    assert both[1] == alone[0]
