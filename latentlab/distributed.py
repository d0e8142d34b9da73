"""Training past one device: ``trainer.strategy`` (ddp, fsdp, deepspeed) as a Lightning strategy object, and the
rank a launcher (torchrun, Slurm, Lightning's own) gave this process before any process group exists.

Only Lightning's strategies are used; nothing here talks to ``torch.distributed``, except to close the process
group when the process that owns it is done (``end_process_group``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from latentlab.configs import ExperimentConfig, resolve_path
from latentlab.errors import ConfigError

DEEPSPEED_INSTALL = "pip install deepspeed (it builds CUDA kernels: install it on the GPU machines that run the fit)"
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
"""What FSDP (and activation checkpointing) insert into the names of the parameters of the modules they wrap."""


def launch_rank(devices: int = 1) -> int:
    """This process's global rank as its launcher set it in the environment; 0 for a plain single process.

    torchrun sets ``RANK``; ``srun`` sets ``SLURM_PROCID``; Lightning's own launcher (``strategy: ddp`` started as a
    plain command) starts ranks 1.. as copies of the command with ``LOCAL_RANK`` (and ``NODE_RANK``). Read before the
    Trainer exists, so that only rank 0 writes a run's records.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    if "LOCAL_RANK" in env:
        return int(env.get("NODE_RANK", env.get("GROUP_RANK", "0"))) * devices + int(env["LOCAL_RANK"])
    return 0


def _kept_whole(module: Any) -> set[str]:
    """The layer classes ``module``'s transformers models list in ``_no_split_modules`` (and hold)."""
    present = {type(m).__name__ for m in module.modules()}
    return {name for m in module.modules() for name in (getattr(m, "_no_split_modules", None) or [])} & present


def layer_candidates(module: Any) -> list[str]:
    """Class names of ``module``'s submodules that look like transformer layers: what its transformers models list
    in ``_no_split_modules``, plus any class named ``*DecoderLayer`` / ``*Block`` / ``*Layer``."""
    present = {type(m).__name__ for m in module.modules()}
    return sorted(_kept_whole(module) | {name for name in present if name.endswith(("DecoderLayer", "Block", "Layer"))})


def wrap_layer_classes(
    module: Any, names: list[str], key: str = "trainer.fsdp.wrap_layers", source: str | None = None
) -> set[type]:
    """The classes FSDP wraps one unit each: ``names`` (class names), else found from the model: the classes its
    transformers models keep unsplit (``_no_split_modules``: LlamaDecoderLayer, GPT2Block...), else ``*DecoderLayer``.

    A name the model does not have (or a model with no layer class to find) is a ConfigError naming ``key`` and
    listing the model's layer classes (and the config file ``source``).
    """
    where = f"{source}: " if source else ""
    by_name: dict[str, type] = {}
    for m in module.modules():
        by_name.setdefault(type(m).__name__, type(m))
    candidates = layer_candidates(module)
    listing = ", ".join(candidates) or "none"
    if names:
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ConfigError(
                f"{where}key '{key}': the model has no module of class {', '.join(map(repr, missing))}; its layer classes "
                f"are: {listing}"
            )
        return {by_name[name] for name in names}
    found = sorted(_kept_whole(module)) or sorted(name for name in by_name if name.endswith("DecoderLayer"))
    if not found:
        raise ConfigError(
            f"{where}key '{key}': found no decoder layer class to wrap in this model (none in _no_split_modules, none named "
            f"*DecoderLayer); name one: its layer classes are: {listing}"
        )
    return {by_name[name] for name in found}


def unwrapped_name(name: str) -> str:
    """A parameter's name as the unwrapped model spells it (``named_parameters`` of a module whose layers FSDP
    wrapped: ``layers.0._fsdp_wrapped_module.self_attn...`` -> ``layers.0.self_attn...``)."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _needs_gpu(config: ExperimentConfig) -> None:
    """Lightning runs fsdp and deepspeed on GPUs only: say so naming the keys, before anything is written."""
    import torch

    tc = config.trainer
    if tc.accelerator == "cpu" or (tc.accelerator == "auto" and not torch.cuda.is_available()):
        seen = "is 'cpu'" if tc.accelerator == "cpu" else "is 'auto' and no GPU is visible"
        raise ConfigError(
            f"{config.source_file}: key 'trainer.strategy' is {tc.strategy!r}, which Lightning runs on GPUs only, but "
            f"trainer.accelerator {seen}; use strategy ddp on CPUs (process_group_backend gloo)"
        )


def check_strategy_available(config: ExperimentConfig) -> None:
    """``strategy: deepspeed`` without the deepspeed package is an error naming the key and how to install it."""
    tc = config.trainer
    if tc.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"{config.source_file}: key 'trainer.strategy' is 'deepspeed' but the deepspeed package is not installed: "
            f"{DEEPSPEED_INSTALL}; or use strategy ddp or fsdp"
        )
    if tc.strategy == "deepspeed" and tc.deepspeed.config_file:
        resolve_path(config, "trainer.deepspeed.config_file", tc.deepspeed.config_file)  # names the key if missing


def trainer_strategy(config: ExperimentConfig, module: Any) -> Any:
    """The ``strategy`` argument of ``lightning.Trainer`` for ``trainer.strategy``: "auto", or a strategy object.

    fsdp wraps each decoder layer (``wrap_layer_classes``) and keeps the original parameters
    (``use_orig_params=True``), so a unit may hold frozen base weights beside trainable LoRA weights: with flattened
    parameters FSDP refuses a unit that mixes ``requires_grad`` values. deepspeed excludes frozen parameters from its
    checkpoints, so they hold the trainable weights only, as every other strategy's do.
    """
    tc = config.trainer
    if tc.strategy == "auto":
        return "auto"
    if tc.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(
            process_group_backend=tc.process_group_backend, find_unused_parameters=tc.find_unused_parameters
        )
    if tc.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        layers = wrap_layer_classes(module, tc.fsdp.wrap_layers, source=config.source_file)
        _needs_gpu(config)
        return FSDPStrategy(
            auto_wrap_policy=layers,
            use_orig_params=True,
            sharding_strategy=tc.fsdp.sharding_strategy,
            cpu_offload=tc.fsdp.cpu_offload,
            process_group_backend=tc.process_group_backend,
            state_dict_type="full",  # one file, loadable on any number of devices (resume may change devices)
        )
    check_strategy_available(config)
    _needs_gpu(config)
    from lightning.pytorch.strategies import DeepSpeedStrategy

    ds = tc.deepspeed
    if ds.config_file:
        return DeepSpeedStrategy(
            config=str(resolve_path(config, "trainer.deepspeed.config_file", ds.config_file)),
            exclude_frozen_parameters=True,
        )
    return DeepSpeedStrategy(
        stage=ds.stage,
        offload_optimizer=ds.offload_optimizer,
        offload_parameters=ds.offload_parameters,
        exclude_frozen_parameters=True,
    )


def end_process_group() -> None:
    """Close the process group a multi-process fit opened (Lightning leaves it open): the owner of a process (the CLI,
    a launcher's script) calls this before exiting, since a gloo group left to the interpreter's exit can abort it."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
