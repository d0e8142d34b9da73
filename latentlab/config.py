"""Experiment YAML -> typed, validated config dataclasses.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from latentlab.errors import ConfigError
from latentlab.reasoning.config import ReasoningConfig

Precision = Literal["fp32", "bf16", "fp16"]
ModelSpec = Union[str, dict]  # noqa: UP007 - a runtime-inspectable union


@dataclass
class BackboneConfig:
    """Which causal LM to load and in what precision."""

    model: ModelSpec = "smollm2-135m-instruct"
    """`smollm2-135m-instruct` (packaged), a hub id, a local directory, `{gguf: FILE}` or `{tiny: {...}}`."""
    precision: Precision = "fp32"
    """Weights dtype of the frozen base: fp32, bf16 or fp16."""


@dataclass
class LoraSpec:
    """A LoRA adapter (peft) on the shared frozen base."""

    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names (suffixes) that get the adapter."""


COMPRESSOR_PARTS = (
    "compress_lora",
    "query_lora",
    "decode_lora",
    "memory_slot",
    "retrieval_head",
    "projector",
    "read_lora",
)
"""The separately trainable parts of a compressor (``compressor.train_parts``)."""


@dataclass
class CompressorConfig:
    """The compressor LLM: compress/query/decode adapters, memory slot, retrieval head and projector."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Base model shared by the compress, query and decode adapters."""
    compress_lora: LoraSpec = field(default_factory=LoraSpec)
    """Adapter that turns evidence into its latent."""
    query_lora: LoraSpec = field(default_factory=LoraSpec)
    """Adapter that turns a question into its retrieval key."""
    decode_lora: LoraSpec = field(
        default_factory=lambda: LoraSpec(
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
        )
    )
    """Adapter of the reconstruction decoder ([z, BOS, x...] -> x)."""
    read_lora: LoraSpec | None = None
    """Adapter on the generator, active only while it reads latent slots (null, the paper: the generator stays
    frozen). Raw-text prompts (the teacher, the baselines) always run on the bare base. Needs the generator to
    share the compressor's base model. Meant for small generators that do not read a lone soft token
    (``experiments/reader_oracle.py`` measures that)."""
    key_dim: int = 512
    """Retrieval key size d of the head Linear(H->d) + LayerNorm + L2."""
    max_evidence_tokens: int = 128
    """Evidence longer than this is truncated before the memory slot."""
    max_query_tokens: int = 64
    """Questions longer than this are truncated before the memory slot."""
    train_parts: list[str] = field(default_factory=lambda: list(COMPRESSOR_PARTS))
    """What this run trains, from: compress_lora, query_lora, decode_lora, memory_slot, retrieval_head, projector,
    read_lora.
    The others stay as they are (and still go into checkpoints). Without compress_lora and memory_slot the
    evidence latents are fixed: each text is compressed once (dropout off) and cached for the whole run."""
    init_from: str | None = None
    """Start from a trained compressor: an exported folder (weights.safetensors) or a run directory (last.ckpt);
    relative to the project. A second stage (say, the projector alone) continues a first this way."""


@dataclass
class GeneratorConfig:
    """The frozen generator that reads latents (through the projector, and ``compressor.read_lora`` if set) or raw
    text (always on the bare base)."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """Generator model; when equal to the compressor's, the base weights are shared (adapters disabled)."""
    slot_format: Literal["paper", "compact"] = "paper"
    """`paper`: `\\nLatent context i: <z>` per item; `compact`: one header then the latents back to back."""
    max_new_tokens: int = 32
    """Greedy decoding budget for answers."""
    system_prompt: str = (
        "You are a helpful assistant. Answer the question concisely "
        "(a few words or a short phrase) based on the provided context."
    )
    """System message of the generator's chat template."""


@dataclass
class LossConfig:
    """Weights and settings of the three latent-memory losses."""

    recon_weight: float = 0.5
    """Weight of the reconstruction CE."""
    contrast_weight: float = 0.2
    """Weight of the multi-positive InfoNCE."""
    distill_weight: float = 1.0
    """Weight of KL(teacher || student) over the answer tokens."""
    temperature: float = 0.07
    """InfoNCE temperature."""
    hard_negatives: int = 8
    """Hard negatives per question (see ``negatives``)."""
    negatives: Literal["pool", "mined"] = "pool"
    """Where hard negatives come from. `pool`: drawn at random from the question's own non-supporting evidence.
    `mined`: the question's highest-scoring non-supporting items of the whole corpus (`corpus_of`) under the
    starting compressor's retrieval, mined once before training: what a global memory returns beside the
    positives. Exact while the retrieval side (query/compress adapters, memory slot, retrieval head) is frozen."""
    student_context: Literal["sampled", "retrieved"] = "sampled"
    """What the student reads. `sampled`: its positives and 0..student_distractors_max random hard negatives, in
    random order. `retrieved` (needs `negatives: mined`): the question's `eval.k` best items of the mined ranking
    in rank order, as a memory returns them; a positive outside them takes the place of the lowest negative."""
    recon_negatives: bool = True
    """Reconstruct the hard negatives too, not only the positives."""
    distill_tokens: int = 16
    """Teacher answer tokens (greedy) over which the KL is taken."""
    student_distractors_max: int = 3
    """The student also reads 0..this many random hard-negative latents."""
    answer_weight: float = 0.0
    """Weight of the gold-answer cross-entropy of the student (the generator reading latents, teacher-forced on the
    first gold answer + end of turn). Not in the reference (0 = off): it puts the whole gradient on the answer
    tokens, where the 16-token KL spreads it over words the question already gives."""
    student_slot_formats: list[Literal["paper", "compact"]] = field(default_factory=list)
    """Slot formats the student reads in training, one drawn per question; empty = `generator.slot_format` only.
    Both: the generator learns to read latents with labels (`Latent context i:`) and back to back."""
    paraphrase_weight: float = 0.0
    """Weight of the generator rebuilding each positive's text from its projected latent (xRAG's paraphrase
    pretraining; not in the reference, 0 = off). It teaches the projector what the frozen generator can read with
    every token of every positive, where the answer losses see a few tokens a question."""


@dataclass
class SyntheticQAConfig:
    """Seeded fictional-entity multi-hop QA (no pre-training leakage)."""

    num_people: int = 400
    """People in the fictional world; each gets a handful of one-sentence facts."""
    seed: int = 0
    """Seed of the world and of the splits."""
    distractors: int = 8
    """Non-supporting sentences added to each question's evidence pool."""
    two_hop_fraction: float = 0.5
    """Share of 2-hop questions."""
    train_questions_per_person: int = 2
    """Questions drawn per training person (validation and test people get one; the facts do not change)."""


@dataclass
class DataConfig:
    """Where the QA-with-evidence examples come from."""

    source: Literal["synthetic", "jsonl", "hotpotqa"] = "synthetic"
    """`synthetic` (generated), `jsonl` (latentlab schema) or `hotpotqa` (official JSON, converted on load)."""
    train: str | None = None
    """Training file (jsonl/hotpotqa sources)."""
    val: str | None = None
    """Validation file (jsonl/hotpotqa sources)."""
    test: str | None = None
    """Test file (jsonl/hotpotqa sources)."""
    synthetic: SyntheticQAConfig = field(default_factory=SyntheticQAConfig)
    """Settings of the synthetic generator (synthetic source)."""
    batch_size: int = 4
    """Questions per micro-batch."""
    max_positives: int = 4
    """At most this many supporting items per question are used in a step."""
    limit_train: int | None = None
    """Use only the first N training questions."""
    limit_val: int | None = None
    """Validate on only the first N validation questions during training (`evaluate` uses `eval.limit`)."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay to ``min_lr``."""

    lr: float = 1e-4
    """Peak learning rate."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up."""


@dataclass
class TrainerConfig:
    """Lightning Trainer settings."""

    max_steps: int = -1
    """Optimizer steps; -1 means run `max_epochs`."""
    max_epochs: int = 1
    """Epochs when `max_steps` is -1."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step (effective batch = batch_size x this)."""
    gradient_clip_val: float = 1.0
    """Gradient norm clipping; 0 disables."""
    val_check_interval: int | None = None
    """Validate every N training micro-batches (None: at epoch end)."""
    limit_val_batches: int | None = None
    """Validation micro-batches per validation run (None: all)."""
    log_every_n_steps: int = 1
    """Logging cadence (optimizer steps)."""
    checkpoint_every_n_steps: int = 50
    """Write `last.ckpt` every N optimizer steps."""
    accelerator: str = "auto"
    """Lightning accelerator (cpu, gpu, auto)."""
    devices: int = 1
    """Number of devices."""
    precision: str = "32-true"
    """Lightning precision plugin ("32-true", "bf16-mixed", "16-mixed")."""
    progress_bar: bool = True
    """Show the progress bar."""
    num_threads: int | None = None
    """torch CPU threads (None: torch's default)."""


@dataclass
class IndexConfig:
    """The FAISS index of a built memory (see ``latentlab.memory.index.IndexSpec``)."""

    factory: str = "Flat"
    """FAISS factory string over inner product: Flat, IVF256,Flat, HNSW32,Flat, IVF256,PQ32."""
    nprobe: int = 16
    """IVF lists visited per query."""
    ef_search: int = 64
    """HNSW candidate-list size per query."""
    latent_dtype: Literal["float32", "float16"] = "float32"
    """Storage type of the latents on disk."""
    max_train_keys: int | None = None
    """IVF/PQ train on a seeded sample of at most this many keys; null = all keys of the first batch added."""
    batch_size: int = 32
    """Evidence items compressed per batch while building."""


@dataclass
class EvalConfig:
    """What `latentlab evaluate` runs: methods, retrieval protocol, k and where results go."""

    checkpoint: str | None = None
    """Trained compressor: an exported folder, a run directory (last.ckpt) or a .ckpt file."""
    split: Literal["val", "test"] = "test"
    """Which split of the configured data to evaluate."""
    methods: list[str] = field(default_factory=lambda: ["latent", "bm25", "dense", "no_retrieval"])
    """Rows of the table: latent (generator.slot_format), latent_compact (one header, latents back to back),
    latent_shuffled (a control: compact slots, each question reading the latents retrieved for the next one; an F1
    near latent_compact's means the answers do not come from the latents), bm25, dense, no_retrieval, full_context."""
    k: int = 5
    """Items retrieved per question."""
    retrieval: Literal["pool", "global"] = "pool"
    """`pool`: rank each question's own evidence (the paper's protocol); `global`: one index of the corpus."""
    limit: int | None = None
    """Evaluate only the first N questions."""
    batch_size: int = 8
    """Questions per generator batch."""
    output_dir: str = "results"
    """Predictions, summary and table go to `<output_dir>/<name>/`."""


@dataclass
class ExperimentConfig:
    """One experiment: task, models, data, losses, optimizer and trainer."""

    name: str = "experiment"
    """Run family name: outputs go to `<output_dir>/<name>/<run>/`."""
    task: Literal["latent_memory", "latent_cot"] = "latent_memory"
    """What `latentlab fit` trains: the latent-memory compressor, or a latent chain-of-thought reasoner."""
    seed: int = 0
    """Global seed (python, numpy, torch)."""
    output_dir: str = "checkpoints"
    """Root of run directories."""
    compressor: CompressorConfig = field(default_factory=CompressorConfig)
    """The compressor."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """The frozen generator."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights and settings."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data source and batching."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation (`latentlab evaluate`, `latentlab demo`)."""
    index: IndexConfig = field(default_factory=IndexConfig)
    """Memory index built by `latentlab index build` and global-retrieval evaluation."""
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)
    """Latent reasoning (`task: latent_cot`): reasoner, method, curriculum, CVAE and data."""

    source_file: str | None = None
    """Path of the YAML this config was read from (set by the loader)."""


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
    except ConfigError as err:  # a section's own cross-field check: say which file and section
        raise ConfigError(f"{ctx.source}: section '{prefix or '<top>'}': {err}") from None


def _deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "model":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
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
        overrides[key] = yaml.safe_load(raw)
    return overrides


def parse_pairs(text: str, what: str) -> dict:
    """``"a.b=1 c=[x,y]"`` -> {"a.b": 1, "c": ["x", "y"]} (quote a value with spaces); a pair without '=' or a
    value that is not YAML is an error naming ``what``."""
    pairs = {}
    for token in shlex.split(text):
        key, sep, raw = token.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected KEY=VALUE pairs, got {token!r}")
        try:
            pairs[key] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"{what}: value of {key!r} is not valid YAML ({raw!r}): {err}") from None
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


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read an experiment YAML (following `base:`), apply dotted overrides and validate everything."""
    path = Path(path)
    data = _read_yaml(path)
    source = str(path)
    if overrides:
        source += " (with command-line overrides " + ", ".join(f"--{k}" for k in overrides) + ")"
        for key, value in overrides.items():
            _apply_override(data, key, value, source)
    config = _build(ExperimentConfig, data, "", _Ctx(source))
    config.source_file = str(path)
    validate(config, _Ctx(source))
    return config


def config_from_dict(data: dict, source: str = "<dict>") -> ExperimentConfig:
    """Validate a plain mapping (as written in a resolved config) into an ExperimentConfig."""
    config = _build(ExperimentConfig, dict(data), "", _Ctx(source))
    validate(config, _Ctx(source))
    return config


def validate(config: ExperimentConfig, ctx: _Ctx) -> None:
    """Cross-field checks that types alone cannot express."""
    if config.loss.temperature <= 0:
        ctx.fail("loss.temperature", f"must be > 0, got {config.loss.temperature}")
    for name in ("recon_weight", "contrast_weight", "distill_weight", "answer_weight", "paraphrase_weight"):
        if getattr(config.loss, name) < 0:
            ctx.fail(f"loss.{name}", "must be >= 0")
    if config.loss.student_context == "retrieved" and config.loss.negatives != "mined":
        ctx.fail("loss.student_context", "'retrieved' reads the mined ranking: set loss.negatives to 'mined'")
    if config.loss.hard_negatives < 0:
        ctx.fail("loss.hard_negatives", f"must be >= 0, got {config.loss.hard_negatives}")
    if config.data.batch_size < 1:
        ctx.fail("data.batch_size", f"must be >= 1, got {config.data.batch_size}")
    if config.trainer.accumulate_grad_batches < 1:
        ctx.fail("trainer.accumulate_grad_batches", "must be >= 1")
    if config.trainer.max_steps == -1 and config.trainer.max_epochs < 1:
        ctx.fail("trainer.max_epochs", "must be >= 1 when trainer.max_steps is -1")
    if config.task == "latent_memory" and config.data.source != "synthetic" and not config.data.train:
        ctx.fail("data.train", f"data.source is '{config.data.source}', so a training file is required")
    known_methods = {"latent", "latent_compact", "latent_shuffled", "bm25", "dense", "no_retrieval", "full_context"}
    for i, method in enumerate(config.eval.methods):
        if method not in known_methods:
            ctx.fail(f"eval.methods[{i}]", f"unknown method {method!r} (known: {', '.join(sorted(known_methods))})")
    if config.eval.k < 1:
        ctx.fail("eval.k", f"must be >= 1, got {config.eval.k}")
    if config.compressor.key_dim < 1:
        ctx.fail("compressor.key_dim", "must be >= 1")
    if config.data.synthetic.train_questions_per_person < 1:
        ctx.fail("data.synthetic.train_questions_per_person", "must be >= 1")
    parts = config.compressor.train_parts
    for i, part in enumerate(parts):
        if part not in COMPRESSOR_PARTS:
            ctx.fail(f"compressor.train_parts[{i}]", f"unknown part {part!r} (known: {', '.join(COMPRESSOR_PARTS)})")
    if config.task == "latent_memory" and not parts:
        ctx.fail("compressor.train_parts", "names nothing to train")
    for name in ("compress_lora", "query_lora", "decode_lora", "read_lora"):
        spec = getattr(config.compressor, name)
        if spec is None:
            continue
        if spec.r < 1:
            ctx.fail(f"compressor.{name}.r", f"must be >= 1, got {spec.r}")
        if not spec.target_modules:
            ctx.fail(f"compressor.{name}.target_modules", "must name at least one module")


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
