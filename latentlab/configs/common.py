"""Config sections every task shares: model specs, LoRA, optimizer, Trainer, evaluation basics, sampling.

Torch-free: loading a YAML never imports model code. Each field's docstring is its help text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from latentlab.errors import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
ModelSpec = Union[str, dict]  # noqa: UP007 - a runtime-inspectable union

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


class FieldError(ConfigError):
    """A section's own check failed on ``key`` (relative to the section); the loader adds the file and section."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key} {message}")  # read as-is where a section is built directly (IndexConfig(...))
        self.key, self.message = key, message


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``FieldError`` naming ``key`` (relative to its section) unless ``condition`` holds."""
    if not condition:
        raise FieldError(key, message)


def positive_or_null(value: int | None, key: str) -> None:
    """``value`` must be null or an integer >= 1 (0 and negatives do not silently mean "all")."""
    require(value is None or value >= 1, key, f"must be >= 1 or null (null = all), got {value}")


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

    def __post_init__(self) -> None:
        require(self.r >= 1, "r", f"must be >= 1, got {self.r}")
        require(bool(self.target_modules), "target_modules", "must name at least one module")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


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

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")


STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")


@dataclass
class FSDPConfig:
    """FSDP settings (``trainer.strategy: fsdp``): which layers are wrapped (sharded) as one unit, and how."""

    wrap_layers: list[str] = field(default_factory=list)
    """Class names of the modules each wrapped in its own FSDP unit (e.g. `LlamaDecoderLayer`, `GPT2Block`); empty =
    found from the model: the classes its transformers models list in `_no_split_modules`, else any `*DecoderLayer`."""
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD"
    """What is sharded across devices: parameters, gradients and optimizer state (FULL_SHARD), or fewer of them."""
    cpu_offload: bool = False
    """Keep the sharded parameters in CPU memory between uses (slower; for models that do not fit)."""


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO settings (``trainer.strategy: deepspeed``); passed to Lightning's DeepSpeedStrategy as they are.

    Needs the `deepspeed` package (`pip install deepspeed`, with a CUDA toolchain), checked when `fit` starts.
    """

    stage: Literal[1, 2, 3] = 2
    """ZeRO stage: 1 shards optimizer state, 2 also gradients, 3 also parameters."""
    offload_optimizer: bool = False
    """ZeRO-Offload: keep optimizer state in CPU memory (stage 2 or 3)."""
    offload_parameters: bool = False
    """Keep parameters in CPU memory (stage 3 only)."""
    config_file: str | None = None
    """A DeepSpeed JSON config used instead of the three keys above (relative paths: against the config root)."""

    def __post_init__(self) -> None:
        require(not self.offload_optimizer or self.stage >= 2, "offload_optimizer", "needs stage 2 or 3 (ZeRO-Offload)")
        require(not self.offload_parameters or self.stage == 3, "offload_parameters", "needs stage 3")


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
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"
    """Lightning accelerator; `gpu`/`cuda` without a visible GPU is an error at `fit`, not a silent CPU run."""
    devices: int = 1
    """Devices (processes) per node."""
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = "auto"
    """Lightning strategy: `auto` (Lightning's choice: one device, or ddp for several), `ddp` (data parallel: every
    process holds the model, gradients are averaged), `fsdp` (sharded data parallel, see `fsdp`), `deepspeed` (ZeRO,
    see `deepspeed`). The global batch is the data's batch_size x devices x num_nodes x accumulate_grad_batches."""
    num_nodes: int = 1
    """Machines taking part; each runs `devices` processes (launched by torchrun or Slurm, see the README)."""
    process_group_backend: Literal["nccl", "gloo"] | None = None
    """Collective backend of ddp/fsdp: null = Lightning's choice (nccl on GPUs, gloo on CPUs)."""
    find_unused_parameters: bool = False
    """ddp only: allow trainable parameters that get no gradient in a step (slower; needed when a loss with weight 0
    leaves an adapter unused)."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """Read with `strategy: fsdp` only."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    """Read with `strategy: deepspeed` only."""
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true"] = "32-true"
    """Lightning precision plugin."""
    progress_bar: bool = True
    """Show the progress bar."""
    num_threads: int | None = None
    """torch CPU threads (None: torch's default)."""

    def __post_init__(self) -> None:
        require(
            self.max_steps == -1 or self.max_steps >= 1,
            "max_steps",
            f"must be >= 1, or -1 to run max_epochs, got {self.max_steps}",
        )
        if self.max_steps == -1:
            require(self.max_epochs >= 1, "max_epochs", f"must be >= 1 when max_steps is -1, got {self.max_epochs}")
        require(self.accumulate_grad_batches >= 1, "accumulate_grad_batches", "must be >= 1")
        require(self.gradient_clip_val >= 0, "gradient_clip_val", f"must be >= 0, got {self.gradient_clip_val}")
        positive_or_null(self.val_check_interval, "val_check_interval")
        positive_or_null(self.limit_val_batches, "limit_val_batches")
        positive_or_null(self.num_threads, "num_threads")
        for name in ("log_every_n_steps", "checkpoint_every_n_steps", "devices", "num_nodes"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(
            self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
        )
        # A section (or key) that the chosen strategy never reads would be a silently ignored setting.
        for name, owner, default in (
            ("fsdp", "fsdp", FSDPConfig()),
            ("deepspeed", "deepspeed", DeepSpeedConfig()),
            ("find_unused_parameters", "ddp", False),
        ):
            require(
                self.strategy == owner or getattr(self, name) == default,
                name,
                f"is only read with strategy '{owner}' (strategy is '{self.strategy}'); set strategy: {owner} "
                f"or drop {name}",
            )
        require(
            self.process_group_backend is None or self.strategy in ("ddp", "fsdp"),
            "process_group_backend",
            f"is only read with strategy 'ddp' or 'fsdp' (strategy is '{self.strategy}')",
        )


@dataclass
class EvalConfig:
    """What `latentlab evaluate` reads, for every task: the run, the split, how many questions, where results go."""

    checkpoint: str | None = None
    """The trained run to evaluate: an exported folder, a run directory (last.ckpt) or a .ckpt file; relative paths
    resolve against the config's project root."""
    split: Literal["val", "test"] = "test"
    """Which split of the configured data to evaluate."""
    limit: int | None = None
    """Evaluate only the first N questions (null: all)."""
    batch_size: int = 8
    """Questions per generation batch."""
    output_dir: str = "results"
    """Results go to `<output_dir>/<name>/` unless `--out` says otherwise."""
    overwrite: bool = False
    """Replace an existing results folder (`--overwrite`); otherwise an existing one is refused."""

    def __post_init__(self) -> None:
        positive_or_null(self.limit, "limit")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class SamplingConfig:
    """How answers are sampled: budget, temperature and samples per question (evaluation now, RL rollouts next)."""

    max_new_tokens: int = 64
    """Language-token budget when generating (validation accuracy, evaluation)."""
    num_samples: int = 1
    """Samples per question (pass@k needs at least max(eval.pass_k)); 1 = greedy only."""
    temperature: float = 0.7
    """Token temperature of the samples (Gumbel-max sampling, the same for every method); 0 = greedy tokens."""
    thought_noise: float = 0.0
    """Std of Gaussian noise added to every continuous thought of a sample, relative to the thought's RMS (latent
    methods only; 0 = none). atp_latent with cvae.inference: sample also samples z itself."""
    top_k: int = 0
    """Sample only among the k most likely tokens (0 = off): RL rollouts and sampled evaluation answers."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p (1 = off); as top_k."""

    def __post_init__(self) -> None:
        require(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        require(self.num_samples >= 1, "num_samples", f"must be >= 1, got {self.num_samples}")
        require(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        require(self.thought_noise >= 0, "thought_noise", f"must be >= 0, got {self.thought_noise}")
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (1 = off), got {self.top_p}")
