"""The image path in front of the compressor: an open_clip vision tower, its own preprocessing, and a projector of
its patch tokens into the compressor's input embeddings (optionally LLaVA's own); image loading (pillow) with errors
naming item, file, line.

``image_prefix`` is the `image` evidence encoder (``latentlab.memory.evidence.ENCODERS``): projected pooled token and
patch tokens, then the title's token embeddings; the compressor appends its memory slot as it does for text.
"""

from __future__ import annotations

import difflib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from latentlab.backbones import input_embeddings
from latentlab.configs import VisionConfig
from latentlab.data.schema import Evidence
from latentlab.errors import ConfigError, DataError

KEY = "compressor.vision"

SUPPORTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
"""Pillow modes that convert to RGB without losing what the picture shows (not 16-bit or float images)."""

_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP"}
"""Leading bytes of the formats whose damaged files are named as such (truncated, not "not an image")."""

_TEXT_TOWER = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}
"""The smallest text tower ``open_clip.CLIP`` accepts: a custom config builds one and keeps only ``visual``."""


# --------------------------------------------------------------------------- loading images


def _png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when ``head`` is not the start of a PNG."""
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or len(head) < 24:
        return None
    return struct.unpack(">II", head[16:24])


def load_image(item: Evidence) -> Image.Image:
    """The RGB picture of an image item; a missing, truncated or undecodable file, a zero-size picture or a mode
    outside ``SUPPORTED_MODES`` is a DataError naming the item, the file and (``item.where``) the JSONL line."""
    where = f"{item.where}: " if item.where else ""
    path = Path(item.image or "")

    def fail(problem: str) -> DataError:
        return DataError(f"{where}evidence '{item.id}': image {path}: {problem}")

    if not item.image:
        raise fail("the item has no image path")
    if not path.is_file():
        raise fail("no such file" if not path.exists() else "not a file (expected an image file)")
    with path.open("rb") as handle:
        head = handle.read(32)
    size = _png_size(head)
    if size is not None and 0 in size:
        raise fail(f"zero-size picture ({size[0]}x{size[1]} pixels; expected at least 1x1)")
    kind = next((name for magic, name in _SIGNATURES.items() if head.startswith(magic)), None)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WebP"
    try:
        with Image.open(path) as picture:
            if 0 in picture.size:
                raise fail(f"zero-size picture ({picture.size[0]}x{picture.size[1]} pixels; expected at least 1x1)")
            if picture.mode not in SUPPORTED_MODES:
                raise fail(
                    f"unsupported mode '{picture.mode}' (expected one of {', '.join(SUPPORTED_MODES)}; save it as "
                    "8-bit RGB)"
                )
            picture.load()
            return picture.convert("RGB")
    except UnidentifiedImageError:
        if kind is not None:
            raise fail(f"a {kind} file that cannot be decoded (truncated or damaged?)") from None
        raise fail("not an image file pillow can decode (expected PNG, JPEG, GIF, BMP or WebP)") from None
    except Image.DecompressionBombError as err:
        raise fail(f"too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise fail(f"cannot be decoded ({err}; truncated or damaged?)") from None


def screen_images(items: Sequence[Evidence]) -> tuple[list[Evidence], list[dict[str, Any]]]:
    """(the items whose images load, and one record per image that does not: id, image, where, error)."""
    good, bad = [], []
    for item in items:
        if item.image:
            try:
                load_image(item)
            except DataError as err:
                bad.append({"id": item.id, "image": item.image, "where": item.where, "error": str(err)})
                continue
        good.append(item)
    return good, bad


# --------------------------------------------------------------------------- the tower


@dataclass
class Tower:
    """A built open_clip vision tower and what the projector needs to know of it."""

    visual: nn.Module
    transform: Any
    """open_clip's evaluation transform: resize, crop, tensor, normalise with the tower's own mean and std."""
    pooled_dim: int
    token_dim: int
    num_patches: int


def _check_vit(vision_cfg: dict, key: str) -> None:
    if vision_cfg.get("timm_model_name") or isinstance(vision_cfg.get("layers"), (list, tuple)):
        raise ConfigError(
            f"key '{key}': a timm or ResNet tower returns no patch tokens; use a ViT open_clip model (ViT-B-32, ...)"
        )


def _custom_clip(model: dict, image_size: int | None):
    import open_clip

    known = {f.name for f in fields(open_clip.CLIPVisionCfg)} - {"output_tokens"}
    vision_cfg = dict(model["vision_cfg"])
    for name in vision_cfg:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"key '{KEY}.model.vision_cfg.{name}': not an open_clip CLIPVisionCfg field{hint}")
    _check_vit(vision_cfg, f"{KEY}.model.vision_cfg")
    if image_size is not None:
        vision_cfg["image_size"] = image_size
    try:
        return open_clip.CLIP(
            embed_dim=model["embed_dim"],
            vision_cfg={**vision_cfg, "output_tokens": True},
            text_cfg=_TEXT_TOWER,
            quick_gelu=bool(model.get("quick_gelu", False)),
        )
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ConfigError(f"key '{KEY}.model': open_clip cannot build this vision tower ({err})") from None


def _named_clip(name: str, pretrained: str | None, image_size: int | None):
    import open_clip

    base = open_clip.get_model_config(name)
    if base is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        raise ConfigError(
            f"key '{KEY}.model': unknown open_clip model {name!r}"
            + (f" (did you mean {', '.join(map(repr, close))}?)" if close else " (see open_clip.list_models())")
        )
    _check_vit(base["vision_cfg"], f"{KEY}.model")
    tag = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    if tag and bool(tag.get("quick_gelu", False)) != bool(base.get("quick_gelu", False)):
        # open_clip only warns; a tower whose activation differs from its weights' gives other features, silently.
        wanted = f"{name}-quickgelu" if tag.get("quick_gelu") else name.removesuffix("-quickgelu")
        raise ConfigError(
            f"key '{KEY}.model': the {pretrained!r} weights of {name!r} were trained with "
            f"{'QuickGELU' if tag.get('quick_gelu') else 'GELU'}, which this model config does not use; "
            f"set model: {wanted}"
        )
    vision_cfg = {**base["vision_cfg"], "output_tokens": True}
    if image_size is not None:
        vision_cfg["image_size"] = image_size
    try:
        return open_clip.create_model(
            name, pretrained=pretrained, require_pretrained=pretrained is not None, vision_cfg=vision_cfg
        )
    except (RuntimeError, FileNotFoundError, OSError) as err:
        raise ConfigError(
            f"key '{KEY}.pretrained': cannot load {pretrained!r} for {name!r} ({err}); give a local weights file or "
            "a tag already in the hub cache"
        ) from None


def tower_features(visual: nn.Module, pixels: torch.Tensor, patch_features: str) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels [N, 3, S, S] -> (pooled [N, E], patch tokens [N, P, W]) of an open_clip ViT, class token left out.

    `final`: the last block after ``ln_post`` (``output_tokens``); `penultimate`: the second-last block's raw output
    (LLaVA-1.5's ``vision_feature_layer: -2``). One pass through the blocks either way.
    """
    if patch_features == "final":
        return visual(pixels)
    out = visual.forward_intermediates(pixels, indices=[-2], output_fmt="NLC")
    return out["image_features"], out["image_intermediates"][0]


def build_tower(config: VisionConfig) -> Tower:
    """The open_clip ViT of ``config`` (only its vision tower is kept) with patch tokens on, and its transform."""
    import open_clip

    if isinstance(config.model, dict):
        clip = _custom_clip(config.model, config.image_size)
    else:
        clip = _named_clip(config.model, config.pretrained, config.image_size)
    visual = clip.visual
    if not getattr(visual, "output_tokens", False):
        raise ConfigError(f"key '{KEY}.model': this open_clip tower returns no patch tokens (expected a ViT)")
    size = visual.image_size
    preprocess = open_clip.get_model_preprocess_cfg(clip)
    transform = open_clip.image_transform(
        size,
        is_train=False,
        mean=preprocess.get("mean"),
        std=preprocess.get("std"),
        interpolation=preprocess.get("interpolation"),
        resize_mode=config.resize_mode or preprocess.get("resize_mode"),
    )
    if config.patch_features == "penultimate" and len(visual.transformer.resblocks) < 2:
        raise ConfigError(
            f"key '{KEY}.patch_features': 'penultimate' needs a tower of at least 2 blocks, this one has "
            f"{len(visual.transformer.resblocks)}"
        )
    with torch.no_grad():  # one probe: the sizes the projector needs, and the (pooled, tokens) contract
        probe = tower_features(visual, torch.zeros(1, 3, *size), config.patch_features)
    if not (isinstance(probe, tuple) and len(probe) == 2 and probe[1].dim() == 3):
        raise ConfigError(f"key '{KEY}.model': the tower does not return (pooled, patch tokens)")
    pooled, tokens = probe
    return Tower(visual, transform, pooled.shape[-1], tokens.shape[-1], tokens.shape[1])


class VisionEncoder(nn.Module):
    """Tower + projector: images -> (pooled [N, E], patch tokens [N, P, W]) -> prefix embeddings [N, V, H]."""

    def __init__(self, config: VisionConfig, hidden: int):
        super().__init__()
        self.config = config
        built = build_tower(config)
        self.tower = built.visual
        self.transform = built.transform
        self.pooled_dim, self.token_dim, self.num_patches = built.pooled_dim, built.token_dim, built.num_patches
        self.trains_tower = config.trains_tower
        self.tower.requires_grad_(self.trains_tower)
        if config.projector == "linear":
            self.projector = nn.Linear(self.token_dim, hidden)
        else:
            self.projector = nn.Sequential(nn.Linear(self.token_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        if config.projector_from is not None:
            load_llava_projector(self.projector, config.projector_from)
        self.projector.requires_grad_(config.trains_projector)
        self.pooled_projector = nn.Linear(self.pooled_dim, hidden) if config.pooled_token else None

    @property
    def prefix_tokens(self) -> int:
        """Prefix positions an image takes before its title: its patches (and the pooled token)."""
        return self.num_patches + int(self.pooled_projector is not None)

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        if not self.trains_tower:  # a frozen tower keeps its evaluation behaviour (dropout off) in training too
            self.tower.eval()
        return self

    def pixels(self, items: Sequence[Evidence]) -> torch.Tensor:
        """Image items -> [N, 3, S, S] float pixels through open_clip's transform (``load_image`` errors)."""
        device = next(self.projector.parameters()).device
        return torch.stack([self.transform(load_image(item)) for item in items]).to(device)

    def features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels [N, 3, S, S] -> (pooled [N, E], patch tokens [N, P, W]); no gradient into a frozen tower."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trains_tower):
            pooled, tokens = tower_features(self.tower, pixels, self.config.patch_features)
        return pooled, tokens

    def encode(self, items: Sequence[Evidence]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image items -> (pooled [N, E], patch tokens [N, P, W])."""
        return self.features(self.pixels(items))

    def prefix(self, pooled: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(pooled [N, E], tokens [N, P, W]) -> [N, V, H]: projected pooled token (if on), then projected patches."""
        patches = self.projector(tokens)
        if self.pooled_projector is None:
            return patches
        return torch.cat([self.pooled_projector(pooled).unsqueeze(1), patches], dim=1)


def load_llava_projector(projector: nn.Sequential, spec: str) -> None:
    """Copy the ``multi_modal_projector`` of the LLaVA checkpoint ``spec`` into an `mlp` projector (Linear, GELU,
    Linear); a shape that differs is a ConfigError naming both shapes and the sizes they imply."""
    from latentlab.llava import read_projector

    key = f"{KEY}.projector_from"
    state = read_projector(spec, key)
    first, second = projector[0], projector[2]
    width, hidden = first.in_features, first.out_features
    targets = {
        "linear_1.weight": first.weight,
        "linear_1.bias": first.bias,
        "linear_2.weight": second.weight,
        "linear_2.bias": second.bias,
    }
    for name, param in targets.items():
        if tuple(state[name].shape) != tuple(param.shape):
            raise ConfigError(
                f"key '{key}': {spec}'s multi_modal_projector.{name} is {list(state[name].shape)}, but this "
                f"projector's is {list(param.shape)} (tower width W={width} -> compressor hidden size H={hidden}); "
                "the tower and the compressor must be the ones the LLaVA projector was trained between"
            )
    with torch.no_grad():
        for name, param in targets.items():
            param.copy_(state[name].to(param.dtype))


class ImageEmbedHead(nn.Module):
    """Latent [N, H] -> the tower's pooled embedding [N, E]: Linear, GELU, LayerNorm, Linear (the reference's)."""

    def __init__(self, hidden: int, target: int):
        super().__init__()
        mid = (hidden + target) // 2
        self.net = nn.Sequential(nn.Linear(hidden, mid), nn.GELU(), nn.LayerNorm(mid), nn.Linear(mid, target))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def title_text(item: Evidence) -> str:
    """What the compressor reads after an image's patches: ``Title: ...`` (nothing for an untitled image)."""
    return f"Title: {item.title}" if item.title else ""


def image_prefix(
    compressor, items: Sequence[Evidence], features: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `image` evidence encoder: [pooled, patches] projected, then the title's token embeddings.

    Returns (embeds [N, V + T, H] right-padded, mask [N, V + T]). ``features`` (pooled, tokens) lets a caller that
    needs the pooled embedding too (the embedding-reconstruction target) run the tower once.
    """
    vision = getattr(compressor, "vision", None)
    if vision is None:
        raise DataError(
            f"evidence '{items[0].id}': image evidence needs a vision tower, and this compressor has none "
            "(compressor.vision is null in its config); the compressor would otherwise encode its file name as text"
        )
    pooled, tokens = features if features is not None else vision.encode(items)
    embed = input_embeddings(compressor.lm)
    visual = vision.prefix(pooled, tokens).to(embed.weight.dtype)  # [N, V, H]
    ids, mask = compressor.tokenize([title_text(e) for e in items], compressor.config.max_evidence_tokens)
    embeds = torch.cat([visual, embed(ids)], dim=1)
    mask = torch.cat([mask.new_ones(visual.shape[:2]), mask], dim=1)
    return embeds, mask
