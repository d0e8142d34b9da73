"""The vision path on a tiny random open_clip ViT: patch tokens, the projector into H, open_clip's preprocessing,
config checks that name the key, and image loading whose errors name the item, the file and the line."""

import re
import struct
import zlib

import pytest
import torch
from PIL import Image

from latentlab.configs import VisionConfig, load_config
from latentlab.data.schema import Evidence, read_corpus
from latentlab.errors import ConfigError, DataError
from latentlab.memory.vision import ImageEmbedHead, VisionEncoder, build_tower, load_image, screen_images
from tests.conftest import REPO, TINY_VIT

TINY_YAML = REPO / "paper_configs/tiny/latent_memory_multimodal.yaml"


def encoder(**changes) -> VisionEncoder:
    torch.manual_seed(0)
    return VisionEncoder(VisionConfig(model=TINY_VIT, **changes), hidden=40)


def test_tiny_tower_returns_pooled_and_patch_tokens():
    tower = build_tower(VisionConfig(model=TINY_VIT))
    pooled, tokens = tower.visual(torch.randn(3, 3, 32, 32))
    assert pooled.shape == (3, 24) and tokens.shape == (3, 16, 32)  # (32 / 8)^2 patches of width 32
    assert (tower.pooled_dim, tower.token_dim, tower.num_patches) == (24, 32, 16)


@pytest.mark.parametrize("projector", ["linear", "mlp"])
@pytest.mark.parametrize("pooled_token", [True, False])
def test_projector_maps_patches_and_pooled_token_to_h(projector, pooled_token):
    vision = encoder(projector=projector, pooled_token=pooled_token)
    pooled, tokens = vision.features(torch.randn(2, 3, 32, 32))
    prefix = vision.prefix(pooled, tokens)
    assert prefix.shape == (2, 16 + int(pooled_token), 40) and vision.prefix_tokens == prefix.shape[1]
    if pooled_token:  # the first position is the pooled embedding's own projection
        torch.testing.assert_close(prefix[:, 0], vision.pooled_projector(pooled), atol=1e-6, rtol=0)
    torch.testing.assert_close(prefix[:, -16:], vision.projector(tokens), atol=1e-6, rtol=0)


def test_image_size_resizes_the_tower_and_the_transform(tmp_path):
    vision = encoder(image_size=48)
    Image.new("RGB", (100, 60), (255, 0, 0)).save(tmp_path / "wide.png")
    pixels = vision.pixels([Evidence("w", image=str(tmp_path / "wide.png"))])
    assert pixels.shape == (1, 3, 48, 48) and vision.num_patches == 36


def test_resize_mode_squash_keeps_the_whole_of_a_wide_picture(tmp_path):
    # Left third red, the rest blue: the default crops the middle (all blue), squash keeps the red third.
    wide = Image.new("RGB", (96, 32), (0, 0, 255))
    wide.paste((255, 0, 0), (0, 0, 32, 32))
    wide.save(tmp_path / "wide.png")
    item = [Evidence("w", image=str(tmp_path / "wide.png"))]
    cropped, squashed = encoder().pixels(item)[0], encoder(resize_mode="squash").pixels(item)[0]
    assert squashed.shape == cropped.shape == (3, 32, 32)
    assert cropped[0, :, 0].max() < 0 < squashed[0, :, 0].min()  # red channel at the left edge: only squash has it
    with pytest.raises(ConfigError, match="resize_mode"):
        load_config(
            REPO / "paper_configs/tiny/latent_memory_multimodal.yaml", {"compressor.vision.resize_mode": "stretch"}
        )


def test_preprocessing_is_open_clips_own_and_converts_to_rgb(tmp_path):
    import open_clip

    vision = encoder()
    Image.new("L", (20, 20), 128).save(tmp_path / "grey.png")
    Image.new("P", (40, 30)).save(tmp_path / "palette.png")
    items = [Evidence("g", image=str(tmp_path / "grey.png")), Evidence("p", image=str(tmp_path / "palette.png"))]
    pixels = vision.pixels(items)
    assert pixels.shape == (2, 3, 32, 32)
    expected = open_clip.image_transform(32, is_train=False)(Image.new("RGB", (20, 20), (128, 128, 128)))
    torch.testing.assert_close(pixels[0], expected, atol=1e-6, rtol=0)


def test_trained_random_tower_and_gradients():
    vision = encoder()
    assert vision.trains_tower and all(p.requires_grad for p in vision.tower.parameters())
    pooled, tokens = vision.features(torch.randn(2, 3, 32, 32))
    vision.prefix(pooled, tokens).sum().backward()
    assert all(p.grad is not None for p in vision.projector.parameters())
    assert vision.tower.conv1.weight.grad is not None
    head = ImageEmbedHead(40, 24)
    assert head(torch.randn(5, 40)).shape == (5, 24)


def test_frozen_by_default_only_when_pretrained():
    assert VisionConfig(model="ViT-B-32").trains_tower
    assert not VisionConfig(model="ViT-B-32", pretrained="openai").trains_tower
    assert VisionConfig(model="ViT-B-32", pretrained="openai", frozen=False).trains_tower


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"frozen": True}, "frozen", "randomly initialised tower cannot be frozen"),
        ({"model": {**TINY_VIT, "text_cfg": {}}}, "model.text_cfg", "only the vision tower"),
        ({"model": {"vision_cfg": {}}}, "model.embed_dim", "positive integer"),
        ({"model": TINY_VIT, "pretrained": "openai"}, "pretrained", "needs an open_clip model name"),
        ({"image_size": 0}, "image_size", ">= 1"),
        ({"projector": "conv"}, "projector", "'linear' | 'mlp'"),
    ],
)
def test_vision_config_errors_name_the_key(changes, key, message):
    overrides = {f"compressor.vision.{k}": v for k, v in changes.items()}
    with pytest.raises(ConfigError, match=rf"latent_memory_multimodal\.yaml.*compressor\.vision\.{key}.*{message}"):
        load_config(TINY_YAML, overrides)


def test_unknown_vision_key_names_the_dotted_key_and_suggests():
    with pytest.raises(ConfigError, match=r"key 'compressor\.vision\.pretrain'.*did you mean 'compressor\.vision"):
        load_config(TINY_YAML, {"compressor.vision.pretrain": "openai"})


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "patch_szie": 8}},
            r"vision_cfg\.patch_szie.*patch_size",
        ),
        ("ViT-B-3", r"unknown open_clip model 'ViT-B-3'.*ViT-B-32"),
        ("RN50", "returns no patch tokens"),
    ],
)
def test_tower_errors_name_the_key(model, message):
    with pytest.raises(ConfigError, match=rf"compressor\.vision.*{message}"):
        build_tower(VisionConfig(model=model))


# --------------------------------------------------------------------------- loading images


def _zero_width_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 0, 5, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _bad_images(folder):
    """name -> (file bytes or None for a missing file, expected message)."""
    noise = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    noise.save(folder / "whole.png")
    whole = (folder / "whole.png").read_bytes()
    Image.new("F", (4, 4)).save(folder / "float.tif")
    return {
        "missing.png": (None, "no such file"),
        "truncated.png": (whole[: len(whole) // 2], "truncated or damaged"),
        "undecodable.png": (b"this is not an image at all", "not an image file pillow can decode"),
        "float.tif": ((folder / "float.tif").read_bytes(), "unsupported mode 'F'"),
        "zero.png": (_zero_width_png(), r"zero-size picture \(0x5 pixels"),
    }


@pytest.mark.parametrize("name", ["missing.png", "truncated.png", "undecodable.png", "float.tif", "zero.png"])
def test_each_bad_image_names_item_file_and_line_and_leaves_the_file(tmp_path, name):
    data, message = _bad_images(tmp_path)[name]
    if data is not None:
        (tmp_path / name).write_bytes(data)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "t", "text": "A fact."}\n{"id": "img-7", "image": "' + name + '", "title": "T"}\n')
    item = read_corpus(corpus)[1]
    assert item.image == str(tmp_path / name) and item.where == f"{corpus}:2"
    with pytest.raises(DataError) as caught:
        load_image(item)
    text = str(caught.value)
    assert f"{corpus}:2" in text and "'img-7'" in text and str(tmp_path / name) in text
    assert re.search(message, text), text
    if data is not None:
        assert (tmp_path / name).read_bytes() == data  # nothing is rewritten
    else:
        assert not (tmp_path / name).exists()


def test_a_good_image_loads_as_rgb_and_screening_keeps_order(tmp_path):
    Image.new("RGBA", (7, 5), (1, 2, 3, 4)).save(tmp_path / "ok.png")
    good = Evidence("ok", image=str(tmp_path / "ok.png"))
    picture = load_image(good)
    assert picture.mode == "RGB" and picture.size == (7, 5)
    text = Evidence("t", text="A fact.")
    bad = Evidence("bad", image=str(tmp_path / "nope.png"), where="c.jsonl:3")
    kept, skipped = screen_images([text, bad, good])
    assert kept == [text, good]
    assert skipped == [
        {"id": "bad", "image": str(tmp_path / "nope.png"), "where": "c.jsonl:3", "error": skipped[0]["error"]}
    ]
    assert skipped[0]["error"].startswith("c.jsonl:3: evidence 'bad': image")
