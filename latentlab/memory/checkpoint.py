"""A trained compressor on disk: export, load and fingerprint, in one place.

An export is a folder with ``config.yaml`` (the resolved training config, ``compressor.vision`` included),
``weights.safetensors`` (the learned tensors only: LoRA adapters, memory slot, retrieval head, projector, and a
trained vision tower with its projector) and ``fingerprint.txt``. A run directory
(``last.ckpt``) or a ``.ckpt`` file loads the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from latentlab.backbones import fingerprint, spec_name
from latentlab.configs import MemoryExperimentConfig, dump_yaml
from latentlab.configs.loader import read_resolved
from latentlab.errors import ConfigError, LatentLabError
from latentlab.io import write_bytes, write_text
from latentlab.memory.model import LatentMemoryModel
from latentlab.weights import check_state_dict, load_lightning_checkpoint, load_safetensors, strip_prefixes

WEIGHTS = "weights.safetensors"
CKPT_PREFIXES = ("model.compressor.", "compressor.")
"""Where a LatentMemoryModule's checkpoint keeps the compressor (the second: checkpoints written before model.py)."""


def _is_decoder(name: str) -> bool:
    return ".decode." in name


def _is_reader(name: str) -> bool:
    return ".read." in name


def vision_spec(config: MemoryExperimentConfig) -> dict | None:
    """What of ``compressor.vision`` the latents depend on (the tower, its weights, image size, projector), or None.

    The patch features, a resize mode and a LLaVA projector appear only when set, so that earlier towers keep their record (and
    fingerprint); a frozen LLaVA projector is identified by its checkpoint, as a frozen tower by its tag."""
    vision = config.compressor.vision
    if vision is None:
        return None
    spec = {
        "model": vision.model,
        "pretrained": vision.pretrained,
        "image_size": vision.image_size,
        "projector": vision.projector,
        "pooled_token": vision.pooled_token,
    }
    if vision.patch_features != "final":
        spec["patch_features"] = vision.patch_features
    if vision.resize_mode is not None:
        spec["resize_mode"] = vision.resize_mode
    if vision.projector_from is not None:
        spec["projector_from"] = vision.projector_from
        spec["projector_trained"] = vision.trains_projector
    return spec


def state_fingerprint(config: MemoryExperimentConfig, state: dict[str, torch.Tensor]) -> str:
    """Identifies a trained compressor: base model spec, key size, precision, the vision tower (if any) and every
    tensor that builds or reads a memory (the reconstruction decoder is left out: it plays no part in either).

    A frozen pretrained tower is identified by its spec (its weights are not stored); text-only compressors keep the
    fingerprint they had before images."""
    cfg = config.compressor
    parts = {"model": spec_name(cfg.backbone.model), "key_dim": cfg.key_dim, "precision": cfg.backbone.precision}
    if cfg.vision is not None:
        parts["vision"] = vision_spec(config)
    return fingerprint(parts, {k: v for k, v in state.items() if not _is_decoder(k)})


def compressor_fingerprint(model) -> str:
    """The fingerprint of a loaded model's (or training module's) compressor."""
    return state_fingerprint(model.config, model.compressor.trainable_state_dict())


def export_compressor(
    model, out_dir: str | Path, include_decoder: bool = True, dtype: torch.dtype = torch.float32
) -> str:
    """Write config.yaml + learned weights + fingerprint.txt into ``out_dir``; returns the fingerprint.

    ``include_decoder=False`` drops the reconstruction adapter (not needed to build or answer from a memory) and
    ``dtype=torch.float16`` halves the file: together they make a shippable inference checkpoint. Each file is
    written atomically; the fingerprint is of the weights as stored (after any rounding), which is what a loader sees.
    """
    out_dir = Path(out_dir)
    state = {
        k: v.detach().to("cpu", dtype).contiguous()
        for k, v in model.compressor.trainable_state_dict().items()
        if include_decoder or not _is_decoder(k)
    }
    write_bytes(out_dir / WEIGHTS, save_safetensors(state))
    write_text(out_dir / "config.yaml", dump_yaml(model.config))
    stored = state_fingerprint(model.config, state)
    write_text(out_dir / "fingerprint.txt", stored + "\n")
    return stored


def config_beside(path: Path) -> MemoryExperimentConfig:
    """The resolved config stored in an export or run directory (strictly validated)."""
    config_path = path / "config.yaml"
    if not config_path.exists():
        raise LatentLabError(f"{path}: no config.yaml beside the compressor weights (expected a run or export dir)")
    config = read_resolved(config_path)
    if not isinstance(config, MemoryExperimentConfig):
        raise ConfigError(f"{config_path}: key 'task' is {config.task!r}; this is not a latent-memory compressor")
    config.source_file = str(config_path)
    return config


def weights_source(source: Path) -> tuple[Path | None, Path | None]:
    """(.ckpt file, export folder): which of the two ``source`` is (the other is None); neither is an error."""
    if source.is_file() and source.suffix == ".ckpt":
        return source, None
    if (source / WEIGHTS).exists():
        return None, source
    if (source / "last.ckpt").exists():
        return source / "last.ckpt", None
    if not source.exists():
        raise LatentLabError(f"{source}: no such compressor (expected an export folder, a run directory or a .ckpt)")
    raise LatentLabError(f"{source}: not a trained compressor (expected {WEIGHTS}, last.ckpt or a .ckpt file)")


def read_compressor_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The compressor tensors of an export folder, a run directory or a .ckpt (damaged files name themselves)."""
    ckpt, folder = weights_source(Path(source))
    if ckpt is not None:
        return strip_prefixes(load_lightning_checkpoint(ckpt)["state_dict"], CKPT_PREFIXES)
    return load_safetensors(folder / WEIGHTS)


def load_compressor_weights(
    model,
    source: str | Path,
    allow_missing_decoder: bool = True,
    allow_missing_reader: bool = False,
    fresh_decoder: bool = False,
) -> None:
    """Load trained compressor weights (export folder, run directory or .ckpt) into ``model.compressor``.

    An export's fingerprint.txt is checked. Inference exports leave out the reconstruction decoder; that is
    accepted only where ``allow_missing_decoder`` (the decoder then keeps its initial weights). A stage that adds
    a reading adapter to an earlier stage's compressor (``allow_missing_reader``) starts it at peft's
    initialisation, which leaves the generator as it was. ``fresh_decoder``: the source's decoder, if it has one, is
    not loaded either (``compressor.init_fresh_decoder``).
    """
    source = Path(source)
    _, folder = weights_source(source)
    state = read_compressor_state(source)
    if fresh_decoder:
        allow_missing_decoder = True
        state = {k: v for k, v in state.items() if not _is_decoder(k)}
    expected = model.compressor.trainable_state_dict()

    def optional(name: str) -> bool:
        return (allow_missing_decoder and _is_decoder(name)) or (allow_missing_reader and _is_reader(name))

    hint = "an inference export has no decoder" if any(_is_decoder(k) for k in expected.keys() - state.keys()) else ""
    check_state_dict(expected, state, source, "this compressor config", optional=optional, hint=hint)
    own = model.compressor.state_dict()
    model.compressor.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    if folder is not None and (folder / "fingerprint.txt").exists():
        stored = (folder / "fingerprint.txt").read_text().strip()
        loaded = {k: v for k, v in model.compressor.trainable_state_dict().items() if k in state}
        # The export's own config made its fingerprint: a stage may change what the latents depend on (say, how
        # images are resized) and still start from these weights.
        made_by = config_beside(folder) if (folder / "config.yaml").exists() else model.config
        if state_fingerprint(made_by, loaded) != stored:
            raise LatentLabError(f"{source}: weights do not match fingerprint.txt ({stored}); the export is damaged")


def load_model(
    source: str | Path, config: MemoryExperimentConfig | None = None, device: str = "cpu"
) -> LatentMemoryModel:
    """The inference model with trained weights from an export dir, a run dir (last.ckpt) or a .ckpt file.

    ``config``: the config in hand (`index build`, `evaluate`); it is honoured, and a value that cannot differ from
    what the compressor was trained with (``check_compatible``) is an error naming both. None: the stored config.
    """
    source = Path(source)
    ckpt, folder = weights_source(source)
    stored = config_beside(ckpt.parent if ckpt is not None else folder)
    if config is not None:
        check_compatible(config, stored, source)
    model = LatentMemoryModel(config if config is not None else stored)
    load_compressor_weights(model, source)
    return model.to(device).eval()


def _lora(spec):
    return None if spec is None else (spec.r, spec.alpha, tuple(spec.target_modules))


FIXED_BY_TRAINING = (
    ("compressor.backbone.model", lambda c: spec_name(c.compressor.backbone.model)),
    ("compressor.backbone.precision", lambda c: c.compressor.backbone.precision),
    ("compressor.key_dim", lambda c: c.compressor.key_dim),
    ("compressor.compress_lora", lambda c: _lora(c.compressor.compress_lora)),
    ("compressor.query_lora", lambda c: _lora(c.compressor.query_lora)),
    ("compressor.decode_lora", lambda c: _lora(c.compressor.decode_lora)),
    ("compressor.read_lora", lambda c: _lora(c.compressor.read_lora)),
    ("generator.backbone.model", lambda c: spec_name(c.generator.backbone.model)),
    ("generator.backbone.precision", lambda c: c.generator.backbone.precision),
    ("compressor.vision", vision_spec),
)
"""Settings whose value the trained weights depend on: the config in hand must agree with the stored one."""


def check_compatible(config: MemoryExperimentConfig, stored: MemoryExperimentConfig, source: Path) -> None:
    """Refuse a config that the compressor at ``source`` cannot run under, naming the key and both values."""
    for key, read in FIXED_BY_TRAINING:
        given, trained = read(config), read(stored)
        if given != trained:
            raise ConfigError(
                f"{config.source_file or '<config>'}: key '{key}' is {given!r}, but the compressor at {source} was "
                f"trained with {trained!r}; set {key} to {trained!r} or use a compressor trained with {given!r}"
            )
