"""Experiment YAML -> typed, validated config dataclasses: strict reading, `base:` merging, overrides, dumping.

Unknown keys, wrong types and bad values raise ``ConfigError`` naming the YAML file, the dotted key,
what was expected and (for typos) the nearest valid key. A YAML may name a ``base:`` YAML whose values
it overrides, so a tiny twin lists only what differs from its paper config.
"""

from __future__ import annotations

import dataclasses
import difflib
import shlex
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from latentlab.configs.common import FieldError
from latentlab.configs.experiment import TASK_CONFIGS, ExperimentConfig
from latentlab.errors import ConfigError

# --------------------------------------------------------------------------- strict loading


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if tp is type(None):
        return "null"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "a mapping"}.get(
        tp, str(tp)
    )


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.source}: key '{key}': {message}")


def _coerce(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        sections = [option for option in get_args(tp) if dataclasses.is_dataclass(option)]
        if isinstance(value, dict) and len(sections) == 1:  # an optional section: its own errors name the key
            return _coerce(value, sections[0], key, ctx)
        errors = []
        for option in get_args(tp):
            try:
                return _coerce(value, option, key, ctx)
            except ConfigError as err:
                errors.append(str(err))
        ctx.fail(key, f"expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        ctx.fail(key, f"expected null, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        ctx.fail(key, f"expected one of {_type_name(tp)}, got {value!r}{hint}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            ctx.fail(key, f"expected {_type_name(tp)}, got {value!r}")
        return _build(tp, value, key, ctx)
    if origin is list:
        if not isinstance(value, list):
            ctx.fail(key, f"expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        ctx.fail(key, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        ctx.fail(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        ctx.fail(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        ctx.fail(key, f"expected a string, got {value!r}")
    if tp is dict:
        if isinstance(value, dict):
            return value
        ctx.fail(key, f"expected a mapping, got {value!r}")
    raise TypeError(f"config type {tp!r} of '{key}' is not supported by the loader")


def _build(cls: type, data: dict, prefix: str, ctx: _Ctx) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else ""
            ctx.fail(dotted, f"unknown key (valid keys here: {', '.join(names)}){hint}")
        kwargs[key] = _coerce(value, hints[key], dotted, ctx)
    try:
        return cls(**kwargs)
    except FieldError as err:  # a section's own check on one of its keys: name the full dotted key
        ctx.fail(f"{prefix}.{err.key}" if prefix else err.key, err.message)
    except ConfigError as err:
        if str(err).startswith(ctx.source):  # already names the file (a nested section's check)
            raise
        raise ConfigError(f"{ctx.source}: section '{prefix or '<top>'}': {err}") from None


REPLACED_MAPPINGS = frozenset({"model", "weights", "gates"})
"""Mappings a child YAML replaces whole instead of merging into its base's: their keys are names the user chooses
(a model spec, reward weights and gates), so a child must be able to drop one."""


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in REPLACED_MAPPINGS:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    source = "<yaml>"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                f"{loader.source}: line {line}: key '{key}' is given twice (first on line {seen[key]}); "
                "keep one, or the first would be silently dropped"
            )
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def decode_utf8(raw: bytes, source: str | Path) -> str:
    """``raw`` as UTF-8 text; a bad byte is a ConfigError naming the file, the line and the byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{source}: line {line}: byte 0x{raw[err.start]:02x} at offset {err.start} is not UTF-8; save the file as UTF-8"
        ) from None


def safe_load_strict(text: str, source: str) -> Any:
    """YAML text -> Python values, refusing duplicate keys; errors name ``source``."""
    loader = _StrictLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected an experiment YAML file")
    try:
        data = safe_load_strict(decode_utf8(path.read_bytes(), path), str(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: key 'base': expected a path to a YAML file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise ConfigError(f"{path}: key 'base': '{base}' includes itself")
    if not base_path.exists():
        raise ConfigError(f"{path}: key 'base': file not found: {base_path}")
    return _deep_merge(_read_yaml(base_path, (*seen, base_path)), data)


def _yaml_value(raw: str, what: str) -> Any:
    """``raw`` parsed as YAML; a bad value is a ConfigError that starts with ``what`` (the flag or pair)."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} is not valid YAML ({raw!r}: {problem}); quote it if it is a string") from None


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`["--trainer.max_steps", "10", "--loss.temperature=0.05"]` -> {"trainer.max_steps": 10, ...}."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) <= 2:
            raise ConfigError(f"override {arg!r}: expected --dotted.key VALUE or --dotted.key=VALUE")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg!r}: missing a value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        if not key:
            raise ConfigError(f"override {arg!r}: expected --dotted.key VALUE or --dotted.key=VALUE")
        overrides[key] = _yaml_value(raw, f"override --{key}: its value")
    return overrides


def parse_pairs(text: str, what: str) -> dict:
    """``"a.b=1 c=[x,y]"`` -> {"a.b": 1, "c": ["x", "y"]} (quote a value with spaces); a pair without '=' or a
    value that is not YAML is an error naming ``what``."""
    pairs = {}
    for token in shlex.split(text):
        key, sep, raw = token.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected KEY=VALUE pairs, got {token!r}")
        pairs[key] = _yaml_value(raw, f"{what}: value of {key!r}")
    return pairs


def merge_pairs(texts: list[str], flag: str) -> dict:
    """Several ``parse_pairs`` groups given with one repeatable flag, merged in order (a later key wins); errors
    name the flag and its occurrence (``--set #2``)."""
    merged: dict = {}
    for i, text in enumerate(texts):
        merged.update(parse_pairs(text, f"{flag} #{i + 1}"))
    return merged


def _apply_override(data: dict, dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override '--{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _experiment(data: dict, ctx: _Ctx) -> ExperimentConfig:
    task = data.get("task", "latent_memory")
    if not isinstance(task, str):
        ctx.fail("task", f"expected a task name ({', '.join(TASK_CONFIGS.names())}), got {task!r}")
    cls = TASK_CONFIGS.get(task, where=f"{ctx.source}: key 'task'")
    config = _build(cls, data, "", ctx)
    config.validate(ctx.fail)
    return config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read an experiment YAML (following `base:`), apply dotted overrides and validate everything."""
    path = Path(path)
    data = _read_yaml(path)
    source = str(path)
    if overrides:
        source += " (with command-line overrides " + ", ".join(f"--{k}" for k in overrides) + ")"
        for key, value in overrides.items():
            _apply_override(data, key, value, source)
    config = _experiment(data, _Ctx(source))
    config.source_file = str(path)
    return config


MEMORY_SECTIONS = ("compressor", "generator", "loss", "data", "index")
LEGACY_SAMPLING = {
    "max_new_tokens": "max_new_tokens",
    "num_samples": "num_samples",
    "sample_temperature": "temperature",
    "thought_noise": "thought_noise",
}


def migrate_resolved(data: dict) -> dict:
    """A resolved config written before configs/ (2026-12-01) in today's layout: every section of every task was
    dumped then, so a stored memory run carries a default `reasoning:` and a reasoning run carries memory sections;
    neither took effect in its run. Sampling settings move from `reasoning.*` to `sampling.*` and `pass_k` to
    `eval.*`. Only stored run and export configs go through this, never a user's YAML."""
    data = dict(data)
    task = data.get("task", "latent_memory")
    if task == "latent_memory":
        data.pop("reasoning", None)
    elif task == "latent_cot" and "sampling" not in data:
        for name in MEMORY_SECTIONS:
            data.pop(name, None)
        reasoning = dict(data.get("reasoning") or {})
        sampling = {new: reasoning.pop(old) for old, new in LEGACY_SAMPLING.items() if old in reasoning}
        evaluation = {k: v for k, v in dict(data.get("eval") or {}).items() if k not in ("methods", "k", "retrieval")}
        if "pass_k" in reasoning:
            evaluation["pass_k"] = reasoning.pop("pass_k")
        data.update(reasoning=reasoning, sampling=sampling, eval=evaluation)
    return data


def config_from_dict(data: dict, source: str = "<dict>") -> ExperimentConfig:
    """Validate a resolved config (a run's or an export's ``config.yaml``) into the experiment class of its task;
    one written by an earlier latentlab is migrated first (``migrate_resolved``)."""
    return _experiment(migrate_resolved(data), _Ctx(source))


def read_resolved(path: str | Path) -> ExperimentConfig:
    """A resolved config as `fit` or an export wrote it (``config.yaml``), strictly read and validated; errors name
    the file. Unlike ``load_config`` it follows no ``base:`` and leaves ``source_file`` unset."""
    path = Path(path)
    try:
        data = safe_load_strict(decode_utf8(path.read_bytes(), path), str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    return config_from_dict(data, source=str(path))


def project_root(start: Path) -> Path:
    """The nearest ancestor holding pyproject.toml (relative data paths in YAMLs resolve against it)."""
    for candidate in [start, *start.parents]:
        if (candidate / "pyproject.toml").exists():
            return candidate
    return Path.cwd()


def config_root(config: ExperimentConfig) -> Path:
    """The project a config belongs to: relative paths in it (data, output_dir, checkpoints) resolve here."""
    return project_root(Path(config.source_file).resolve().parent) if config.source_file else Path.cwd()


def resolve_path(config: ExperimentConfig, key: str, value: str) -> Path:
    """Resolve a data path from the config; a missing file is an error naming the key and the YAML."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = config_root(config) / path
    if not path.exists():
        raise ConfigError(f"{config.source_file or '<config>'}: key '{key}': file not found: {path}")
    return path


def to_dict(config: ExperimentConfig) -> dict:
    data = dataclasses.asdict(config)
    data.pop("source_file", None)
    return data


def dump_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
