"""LLaVA checkpoints (transformers' ``LlavaForConditionalGeneration``, the llava-hf layout): the language model alone
as a causal LM, and the weights of the multimodal projector, each read without loading the rest of the VLM.

llava-hf stores ``language_model.model.*``, ``language_model.lm_head.*``, ``multi_modal_projector.*`` and
``vision_tower.*`` (transformers 5 still saves these names); the ``model.``-prefixed names of transformers' own
in-memory layout are read too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentlab.errors import ConfigError, ModelLoadError

LM_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^model\.language_model\.": "model.",
}
"""Checkpoint names of the language model -> the names of a causal LM built from the text config."""

OTHER_PARTS = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")
"""Checkpoint names a language-model load leaves out on purpose (any other unused name is an error)."""

PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")
PROJECTOR_TENSORS = ("linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias")
"""LLaVA-1.5's projector: linear_1 (vision width -> LM hidden), the activation, linear_2 (hidden -> hidden)."""

_PROBE = "LATENTLAB_PROBE"


def is_llava(config: Any) -> bool:
    """Whether a transformers config is a LLaVA VLM's (``model_type: llava``)."""
    return getattr(config, "model_type", None) == "llava"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers logs every vision weight a language-model load leaves out; the load checks them itself."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_language_model(target: str, config: Any, dtype: torch.dtype, key: str) -> nn.Module:
    """The language model of the LLaVA checkpoint ``target`` (hub id or folder) as a causal LM with its LM head.

    Only the language model's weights are read (``AutoModelForCausalLM`` on ``config.text_config`` with the
    checkpoint names mapped), so neither the VLM nor its vision tower is ever built. A missing or mis-shaped weight,
    or an unused one outside the vision tower and projector, is a ModelLoadError naming it.
    """
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            model, info = AutoModelForCausalLM.from_pretrained(
                target, config=config.text_config, key_mapping=LM_KEY_MAPPING, dtype=dtype, output_loading_info=True
            )
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"key '{key}': could not load the language model of LLaVA checkpoint '{target}' ({err})"
        ) from None
    problems = {
        "missing": sorted(info.get("missing_keys", ())),
        "mis-shaped": sorted(str(m) for m in info.get("mismatched_keys", ())),
        "unused": sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(OTHER_PARTS)),
    }
    found = {kind: names for kind, names in problems.items() if names}
    if found:
        listed = "; ".join(
            f"{kind}: {', '.join(names[:5])}" + (" ..." if len(names) > 5 else "") for kind, names in found.items()
        )
        raise ModelLoadError(
            f"key '{key}': LLaVA checkpoint '{target}' does not hold a whole language model ({listed})"
        )
    return model


def drop_unusable_chat_template(tokenizer: Any) -> None:
    """Clear a chat template that cannot render a system message and a plain-string user turn.

    LLaVA processors ship a template for content lists (``[{"type": "image"}, {"type": "text", ...}]``); given a
    string it drops the text. Without a template latentlab's prompts fall back to ``BOS system\\nUSER: ...
    \\nASSISTANT:``, the Vicuna form LLaVA-1.5 was tuned on.
    """
    if not getattr(tokenizer, "chat_template", None):
        return
    messages = [{"role": "system", "content": _PROBE}, {"role": "user", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - jinja raises whatever the template's author wrote
        text = ""
    if not isinstance(text, str) or text.count(_PROBE) < 2:
        tokenizer.chat_template = None


# --------------------------------------------------------------------------- the projector


def _checkpoint_file(spec: str, filename: str, key: str) -> Path | None:
    """``filename`` of a local checkpoint folder or a hub checkpoint (the hub cache offline); None if it has none."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local / filename if (local / filename).is_file() else None
    if spec.startswith((".", "/", "~")):
        raise ConfigError(f"key '{key}': LLaVA checkpoint folder not found: {local}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        return Path(hf_hub_download(spec, filename))
    except EntryNotFoundError:  # also: offline and not in the cache
        return None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ConfigError(f"key '{key}': cannot read '{spec}' as a local folder or hub checkpoint ({err})") from None


def _read_config(spec: str, key: str) -> dict:
    path = _checkpoint_file(spec, "config.json", key)
    if path is None:
        raise ConfigError(f"key '{key}': '{spec}' has no config.json (offline, a hub checkpoint must be in the cache)")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_type") != "llava":
        raise ConfigError(
            f"key '{key}': '{spec}' is a {config.get('model_type')!r} checkpoint; expected a LLaVA one "
            "(model_type 'llava', e.g. llava-hf/llava-1.5-7b-hf)"
        )
    return config


def _projector_files(spec: str, key: str) -> dict[str, Path]:
    """The safetensors file holding each checkpoint name of the projector."""
    index = _checkpoint_file(spec, "model.safetensors.index.json", key)
    if index is not None:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = {}
        for name, shard in weight_map.items():
            if name.startswith(PROJECTOR_PREFIXES):
                files[name] = _checkpoint_file(spec, shard, key) or index.parent / shard
        return files
    single = _checkpoint_file(spec, "model.safetensors", key)
    if single is None:
        raise ConfigError(
            f"key '{key}': '{spec}' has no model.safetensors(.index.json) (offline, a hub checkpoint must be in the "
            "cache)"
        )
    from safetensors import safe_open

    with safe_open(str(single), "pt") as handle:
        names = handle.keys()  # noqa: SIM118 - a safetensors handle is not a mapping: it cannot be iterated
        return {name: single for name in names if name.startswith(PROJECTOR_PREFIXES)}


def read_projector(spec: str, key: str) -> dict[str, torch.Tensor]:
    """``{linear_1.weight [H, W], linear_1.bias [H], linear_2.weight [H, H], linear_2.bias [H]}`` of the LLaVA
    checkpoint ``spec``: only the shard(s) holding them are read. Its activation must be GELU (latentlab's `mlp`
    projector); a projector without biases reads as zero biases."""
    from safetensors import safe_open

    config = _read_config(spec, key)
    activation = config.get("projector_hidden_act", "gelu")
    if activation != "gelu":
        raise ConfigError(
            f"key '{key}': '{spec}' has a {activation!r} projector; latentlab's mlp projector is Linear-GELU-Linear "
            "(LLaVA-1.5's 'gelu')"
        )
    files = _projector_files(spec, key)
    state = {}
    for name, path in files.items():
        short = name.split("multi_modal_projector.", 1)[1]
        if short in PROJECTOR_TENSORS:
            with safe_open(str(path), "pt") as handle:
                state[short] = handle.get_tensor(name)
    if not config.get("multimodal_projector_bias", True):
        for layer in ("linear_1", "linear_2"):
            if f"{layer}.weight" in state:
                state.setdefault(f"{layer}.bias", torch.zeros(state[f"{layer}.weight"].shape[0]))
    missing = [name for name in PROJECTOR_TENSORS if name not in state]
    if missing:
        raise ConfigError(
            f"key '{key}': '{spec}' holds no multi_modal_projector.{', multi_modal_projector.'.join(missing)} "
            f"(found: {', '.join(sorted(files)) or 'no projector weights'}); expected LLaVA-1.5's two-layer projector"
        )
    return state
