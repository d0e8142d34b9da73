"""LLaVA checkpoints on tiny random ones saved locally (issue 16): the language model as the compressor's or the
generator's causal LM, LLaVA's projector in front of a pretrained tower (frozen by default, shapes checked), the
patch features it reads, and one training step + a WebQA evaluation of the tiny WebQA twin on LLaVA models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentlab.backbones import byte_tokenizer, hidden_size, input_embeddings, load_causal_lm
from latentlab.configs import BackboneConfig, VisionConfig, load_config
from latentlab.data.schema import read_qa
from latentlab.data.webqa import convert_webqa
from latentlab.errors import ConfigError, ModelLoadError
from latentlab.llava import drop_unusable_chat_template
from latentlab.memory.checkpoint import load_model, vision_spec
from latentlab.memory.evaluate import evaluate
from latentlab.memory.vision import VisionEncoder, build_tower
from latentlab.training import fit
from tests.conftest import REPO

TINY_WEBQA = REPO / "paper_configs/tiny/latent_memory_webqa.yaml"
FIXTURE = REPO / "tests/fixtures/webqa"
VIT_NAME = "latentlab-test-llava-vit"
"""A tiny ViT registered with open_clip under a name, so that it can have a `pretrained` weights file."""
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
"""The shape of a LLaVA processor's template: it reads content lists and drops a plain-string content."""


def save_tiny_llava(folder: Path, hidden: int, seed: int) -> Path:
    """A random LlavaForConditionalGeneration (2-layer Llama of ``hidden``, 2-layer CLIP of width 32) + tokenizer."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = byte_tokenizer()
    text = LlamaConfig(
        vocab_size=len(tokenizer) + 1,  # + LLaVA's <image> token
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=len(tokenizer))
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """Two tiny LLaVA checkpoints (compressor: hidden 64, generator: hidden 48) and a named tiny ViT with weights."""
    import open_clip

    tmp = tmp_path_factory.mktemp("llava")
    model_config = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
        "text_cfg": {"context_length": 8, "vocab_size": 16, "width": 8, "heads": 1, "layers": 1},
    }
    (tmp / f"{VIT_NAME}.json").write_text(json.dumps(model_config))
    open_clip.add_model_config(tmp / f"{VIT_NAME}.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model(VIT_NAME).state_dict(), tmp / "vit.pt")
    return {
        "compressor": save_tiny_llava(tmp / "llava-7b", hidden=64, seed=0),
        "generator": save_tiny_llava(tmp / "llava-13b", hidden=48, seed=1),
        "vit_weights": tmp / "vit.pt",
        "tmp": tmp,
    }


def llava_vision(llava, **changes) -> VisionConfig:
    fields = {
        "model": VIT_NAME,
        "pretrained": str(llava["vit_weights"]),
        "projector_from": str(llava["compressor"]),
        "patch_features": "penultimate",
        "pooled_token": False,
    }
    return VisionConfig(**(fields | changes))


# --------------------------------------------------------------------------- the language model


def test_a_llava_checkpoint_loads_as_its_language_model(llava):
    from transformers import LlavaForConditionalGeneration

    loaded = load_causal_lm(BackboneConfig(model=str(llava["compressor"]), precision="fp32"))
    vlm = LlavaForConditionalGeneration.from_pretrained(llava["compressor"], dtype=torch.float32).eval()
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and hidden_size(loaded.model) == 64
    assert not any("vision" in n or "projector" in n for n, _ in loaded.model.named_parameters())
    assert input_embeddings(loaded.model).weight.shape == (len(loaded.tokenizer) + 1, 64)
    ids = torch.tensor([[5, 17, 33, 2, 90]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, vlm(input_ids=ids).logits, atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_a_llava_checkpoint_missing_a_language_weight_is_named(llava, tmp_path):
    broken = shutil.copytree(llava["compressor"], tmp_path / "broken")
    weights = load_file(broken / "model.safetensors")
    del weights["language_model.model.norm.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"compressor.backbone.model.*missing: model\.norm\.weight"):
        load_causal_lm(BackboneConfig(model=str(broken), precision="fp32"), key="compressor.backbone.model")


def test_a_chat_template_for_content_lists_is_dropped_and_a_string_one_kept():
    processor_like = byte_tokenizer()
    processor_like.chat_template = LLAVA_CHAT_TEMPLATE
    drop_unusable_chat_template(processor_like)
    assert processor_like.chat_template is None  # prompts fall back to BOS system\nUSER: ...\nASSISTANT:
    chatml = byte_tokenizer()
    drop_unusable_chat_template(chatml)
    assert chatml.chat_template is not None


# --------------------------------------------------------------------------- the projector and the tower


def test_the_projector_is_llavas_own_and_frozen_unless_asked(llava):
    from transformers import LlavaForConditionalGeneration

    own = LlavaForConditionalGeneration.from_pretrained(llava["compressor"]).model.multi_modal_projector
    frozen = VisionEncoder(llava_vision(llava), hidden=64)
    for mine, theirs in ((frozen.projector[0], own.linear_1), (frozen.projector[2], own.linear_2)):
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)
    assert not any(p.requires_grad for p in frozen.parameters())  # tower and projector, as the reference's
    trained = VisionEncoder(llava_vision(llava, projector_frozen=False, pooled_token=True), hidden=64)
    assert torch.equal(trained.projector[0].weight, own.linear_1.weight)
    assert all(p.requires_grad for p in trained.projector.parameters())
    assert all(p.requires_grad for p in trained.pooled_projector.parameters())  # new: always trained


def test_the_projector_is_read_from_the_shard_that_holds_it(llava, tmp_path):
    from transformers import LlavaForConditionalGeneration

    vlm = LlavaForConditionalGeneration.from_pretrained(llava["compressor"])
    vlm.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded/model.safetensors.index.json").exists()
    encoder = VisionEncoder(llava_vision(llava, projector_from=str(tmp_path / "sharded")), hidden=64)
    assert torch.equal(encoder.projector[2].weight, vlm.model.multi_modal_projector.linear_2.weight)


def test_a_projector_of_other_shape_names_both_shapes(llava):
    with pytest.raises(ConfigError, match=r"projector_from.*linear_1\.weight is \[64, 32\].*projector's is \[48, 32\]"):
        VisionEncoder(llava_vision(llava), hidden=48)


def test_projector_from_a_checkpoint_that_is_not_llava_is_refused(llava, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match=r"'llama' checkpoint; expected a LLaVA one"):
        VisionEncoder(llava_vision(llava, projector_from=str(tmp_path)), hidden=64)
    with pytest.raises(ConfigError, match=r"projector_from.*not found"):
        VisionEncoder(llava_vision(llava, projector_from=str(tmp_path / "absent")), hidden=64)


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"projector": "linear"}, "projector_from", "set projector: mlp"),
        ({"pretrained": None}, "projector_from", "set pretrained"),
        ({"projector_from": None, "projector_frozen": True}, "projector_frozen", "cannot be frozen"),
    ],
)
def test_projector_settings_that_cannot_take_effect_are_errors(changes, key, message):
    paper = {"model": "ViT-B-32-quickgelu", "pretrained": "openai", "projector_from": "llava-hf/llava-1.5-7b-hf"}
    overrides = {f"compressor.vision.{k}": v for k, v in (paper | changes).items()}
    with pytest.raises(ConfigError, match=rf"latent_memory_webqa\.yaml.*compressor\.vision\.{key}.*{message}"):
        load_config(TINY_WEBQA, overrides)


@pytest.mark.parametrize(("flag", "part"), [("frozen", "vision_tower"), ("projector_frozen", "vision_projector")])
def test_a_part_set_to_train_but_left_out_of_train_parts_is_an_error(flag, part):
    parts = ["compress_lora", "query_lora", "memory_slot", "retrieval_head", "projector"]
    with pytest.raises(ConfigError, match=rf"compressor.vision.{flag}.*leaves out {part}"):
        load_config(TINY_WEBQA, {f"compressor.vision.{flag}": False, "compressor.train_parts": parts})


def test_penultimate_features_are_the_second_last_blocks_patches(llava):
    encoder = VisionEncoder(llava_vision(llava), hidden=64)
    pixels = torch.randn(2, 3, 32, 32)
    tower = encoder.tower
    with torch.no_grad():
        x = tower._embeds(pixels)
        for block in tower.transformer.resblocks[:-1]:
            x = block(x)
        pooled, tokens = encoder.features(pixels)
        final_pooled, _ = tower(pixels)
    assert tokens.shape == (2, 16, 32)
    torch.testing.assert_close(tokens, x[:, 1:], atol=1e-6, rtol=0)  # class token dropped, no ln_post
    torch.testing.assert_close(pooled, final_pooled, atol=1e-6, rtol=0)  # the pooled embedding is the tower's own
    one_block = {
        "embed_dim": 8,
        "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 16, "layers": 1, "head_width": 8},
    }
    with pytest.raises(ConfigError, match=r"patch_features.*at least 2 blocks"):
        build_tower(VisionConfig(model=one_block, patch_features="penultimate"))


def test_openai_weights_on_a_gelu_tower_are_refused_before_any_download():
    with pytest.raises(ConfigError, match=r"QuickGELU.*set model: ViT-L-14-336-quickgelu"):
        build_tower(VisionConfig(model="ViT-L-14-336", pretrained="openai"))


def test_the_vision_record_names_a_llava_projector_only_when_set(llava):
    plain = load_config(TINY_WEBQA)
    assert set(vision_spec(plain)) == {
        "model",
        "pretrained",
        "image_size",
        "projector",
        "pooled_token",
        "patch_features",
    }
    paper = load_config(REPO / "paper_configs/latent_memory/webqa_llava7b_llava13b.yaml")
    spec = vision_spec(paper)
    assert spec["projector_from"] == "llava-hf/llava-1.5-7b-hf" and spec["projector_trained"] is False


# --------------------------------------------------------------------------- end to end


def test_the_tiny_webqa_twin_trains_and_evaluates_on_llava_models(llava, tmp_path):
    """One step on the converted fixture with LLaVA compressor and generator, LLaVA's frozen projector in front of a
    pretrained tower; then a WebQA-accuracy evaluation of the run."""
    convert_webqa(FIXTURE / "WebQA_train_val.json", FIXTURE / "imgs.tsv", tmp_path / "webqa")
    overrides = {
        "compressor.backbone.model": str(llava["compressor"]),
        "generator.backbone.model": str(llava["generator"]),
        "compressor.key_dim": 32,
        "compressor.vision.model": VIT_NAME,
        "compressor.vision.pretrained": str(llava["vit_weights"]),
        "compressor.vision.projector_from": str(llava["compressor"]),
        "data.train": str(tmp_path / "webqa/train.jsonl"),
        "data.val": str(tmp_path / "webqa/val.jsonl"),
        "trainer.max_steps": 1,
        "trainer.progress_bar": False,
        "generator.max_new_tokens": 4,
        "loss.distill_tokens": 4,
        "eval.methods": ["latent", "no_retrieval"],
        "output_dir": str(tmp_path / "runs"),
    }
    config = load_config(TINY_WEBQA, overrides)
    result = fit(config, run_name="llava")
    stored = torch.load(result.run_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any(".vision.projector." in k or ".vision.tower." in k for k in stored)  # frozen: rebuilt from config
    assert any(".compress." in k and "lora_" in k for k in stored)
    model = load_model(result.run_dir, config)
    pool = read_qa(tmp_path / "webqa/val.jsonl")[0].evidence
    assert any(item.image for item in pool) and any(not item.image for item in pool)
    with torch.no_grad():
        latents = model.compressor.encode_items(pool)
    assert latents.shape == (len(pool), 64) and torch.isfinite(latents).all()
    evaluated = evaluate(config, checkpoint=result.run_dir, out_dir=tmp_path / "results")
    assert [row["method"] for row in evaluated.rows] == ["latent", "no_retrieval"]
    assert all(0.0 <= row["webqa_accuracy"] <= 1.0 for row in evaluated.rows)
    assert "webqa_accuracy" in evaluated.columns and "f1" not in evaluated.columns
    assert {row["group"] for row in evaluated.by_type} >= {"YesNo", "number", "Others"}
