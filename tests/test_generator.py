"""The frozen generator reading a shared prefix from its key/value cache gives the logits of the full prompt."""

import pytest
import torch

from latentlab.backbones import load_causal_lm
from latentlab.memory.generator import Generator
from latentlab.memory.prompting import LATENT, Prompt, common_prefix, pack_prompts


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_split_prefix_matches_full_prompt_and_keeps_latent_gradients(arch):
    torch.manual_seed(0)
    loaded = load_causal_lm({"tiny": {"arch": arch, "layers": 2, "hidden": 64, "heads": 4}})
    generator = Generator(loaded.model, loaded.tokenizer)
    system = [5, 6, 7, 8, 9]
    prompts = [Prompt(system + [11, LATENT, 12, 13], 5, 7), Prompt(system + [11, LATENT, LATENT, 14], 5, 8)]
    replies = [[20, 21], [22, 23, 24]]
    latents = torch.randn(3, 64, requires_grad=True)
    full = pack_prompts(prompts, generator.embed, latents, replies)
    split = pack_prompts(prompts, generator.embed, latents, replies, split_prefix=True)
    assert split.prefix_ids == (5, 6, 7, 8, 9, 11)  # stops at the first latent slot
    assert split.inputs_embeds.shape[1] == full.inputs_embeds.shape[1] - 6
    assert torch.equal(split.continuation_targets, full.continuation_targets)
    expected, got = generator.continuation_logits(full), generator.continuation_logits(split)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    # the cached prefix is reused (a second batch size too) and gradients still reach every latent
    again = pack_prompts(prompts[:1], generator.embed, latents[:1], replies[:1], split_prefix=True)
    assert torch.allclose(generator.continuation_logits(again), expected[:2], atol=1e-5)
    got.sum().backward()
    assert latents.grad is not None and bool((latents.grad.abs().sum(dim=1) > 0).all())


def test_split_prefix_is_for_right_padding_and_greedy_refuses_it():
    loaded = load_causal_lm({"tiny": {"arch": "llama", "layers": 2, "hidden": 64, "heads": 4}})
    generator = Generator(loaded.model, loaded.tokenizer)
    prompts = [Prompt([5, 6, 7], 0, 0), Prompt([5, 6, 8, 9], 0, 0)]
    with pytest.raises(ValueError, match="right padding"):
        pack_prompts(prompts, generator.embed, padding_side="left", split_prefix=True)
    with pytest.raises(ValueError, match="without split_prefix"):
        generator.greedy(pack_prompts(prompts, generator.embed, split_prefix=True), 2)


def test_common_prefix_leaves_every_row_a_token():
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]], max_len=2) == [1, 2]
    assert common_prefix([[1, 2], [1, 3]], max_len=5) == [1]
    assert common_prefix([[LATENT, 2], [LATENT, 2]], max_len=5) == []
