"""Model loading from every kind of spec (no download) and the errors for bad specs."""

import pytest
import torch

from latentlab.backbones import attach_adapters, load_causal_lm
from latentlab.configs import BackboneConfig, LoraSpec
from latentlab.errors import ConfigError, ModelLoadError


def test_tiny_llama_and_gpt2():
    for arch in ("llama", "gpt2"):
        loaded = load_causal_lm({"tiny": {"arch": arch, "layers": 2, "hidden": 32, "heads": 2}})
        assert loaded.model.config.num_hidden_layers == 2
        assert not any(p.requires_grad for p in loaded.model.parameters())
        ids = loaded.tokenizer("hi there", return_tensors="pt")["input_ids"]
        assert loaded.model(ids).logits.shape[-1] == len(loaded.tokenizer)


def test_local_directory_round_trip(tmp_path):
    loaded = load_causal_lm({"tiny": {"layers": 2, "hidden": 32, "heads": 2}})
    loaded.model.save_pretrained(tmp_path / "m")
    loaded.tokenizer.save_pretrained(tmp_path / "m")
    again = load_causal_lm(str(tmp_path / "m"))
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(again.model(ids).logits, loaded.model(ids).logits, atol=1e-6, rtol=0)


def test_precision_switch():
    loaded = load_causal_lm(BackboneConfig(model={"tiny": {"layers": 1, "hidden": 32, "heads": 2}}, precision="bf16"))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_bad_specs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys \\['layer'\\]"):
        load_causal_lm({"tiny": {"layer": 2}})
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_causal_lm({"gguf": str(tmp_path / "missing.gguf")})
    with pytest.raises(ModelLoadError, match="local model directory not found"):
        load_causal_lm(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="could not load 'no-such-org/no-such-model'"):
        load_causal_lm("no-such-org/no-such-model")


def test_lora_target_typo_lists_modules():
    loaded = load_causal_lm({"tiny": {"layers": 1, "hidden": 32, "heads": 2}})
    with pytest.raises(ConfigError, match="q_proj"):
        attach_adapters(loaded.model, {"compress": LoraSpec(target_modules=["qq_proj"])})
