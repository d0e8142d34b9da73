"""Config sections of the latent-reasoning task: reasoner and method, curriculum schedule, CVAE and data.

Torch-free. The curriculum's schedule (which stage an epoch trains) lives here because configs check it; the token
layouts of a stage live in ``latentlab.reasoning.curriculum``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from latentlab.configs.common import EvalConfig, FieldError
from latentlab.configs.common import require as _require
from latentlab.errors import ConfigError

CurriculumMode = Literal["coconut", "cot", "no_cot", "no_thoughts"]


@dataclass(frozen=True)
class CurriculumConfig:
    """How continuous thoughts replace language reasoning steps over training."""

    thoughts_per_step: int = 1
    """c: continuous thoughts that replace one language step (Coconut: 2 for GSM8k, 1 for ProntoQA/ProsQA)."""
    max_latent_stage: int = 3
    """M: the last stage that replaces only the first M steps; stage M+1 makes every step latent with M*c thoughts."""
    epochs_per_stage: int = 1
    """Epochs spent in each stage before moving on; the stage is ``epoch // epochs_per_stage``, capped at M+1."""
    stage_epochs: list[int] = field(default_factory=list)
    """Epochs of stage k at index k, where stages differ in length; a stage past the list lasts epochs_per_stage,
    and 0 skips a stage. E.g. [0, 3]: stage 1 three epochs, then one each (a tiny reasoner from scratch needs
    many steps to learn its first latent step, then carries the later ones almost at once)."""
    reset_optimizer_each_stage: bool = True
    """Build a fresh optimizer when the stage changes (the paper's rule; Coconut's code resets every epoch)."""
    pad_latent_to_max: bool = True
    """Size the thought block from the stage alone (Coconut's default); False sizes it by the steps removed."""
    mode: CurriculumMode = "coconut"
    """coconut: staged thoughts between <bot> and <eot>; cot: stage 0 forever, no markers; no_cot: answer only;
    no_thoughts: steps removed by stage but no thoughts and no markers (Coconut's "w/o thought" ablation)."""
    uniform_prob: float = 0.0
    """Probability that a training sample's stage is drawn uniformly from 0..S instead of the scheduled one."""
    supervise_eot: bool | None = None
    """Put loss on ``<eot>`` (predicted by the last thought's output), so the reasoner learns when to stop thinking;
    null = the method's rule (on for latent_sft, which leaves latent mode when it predicts ``<eot>``; off for the
    others, as Coconut, whose thought count is fixed)."""

    def __post_init__(self) -> None:
        if self.thoughts_per_step < 0:
            raise ConfigError(f"curriculum.thoughts_per_step must be >= 0, got {self.thoughts_per_step}")
        if self.max_latent_stage < 0:
            raise ConfigError(f"curriculum.max_latent_stage must be >= 0, got {self.max_latent_stage}")
        if self.epochs_per_stage < 1:
            raise ConfigError(f"curriculum.epochs_per_stage must be >= 1, got {self.epochs_per_stage}")
        for k, epochs in enumerate(self.stage_epochs):
            if not isinstance(epochs, int) or epochs < 0:
                raise ConfigError(f"curriculum.stage_epochs[{k}] must be an integer >= 0, got {epochs!r}")
        if self.mode not in ("coconut", "cot", "no_cot", "no_thoughts"):
            raise ConfigError(f"curriculum.mode must be one of coconut, cot, no_cot, no_thoughts, got {self.mode!r}")
        if not 0.0 <= self.uniform_prob <= 1.0:
            raise ConfigError(f"curriculum.uniform_prob must be in [0, 1], got {self.uniform_prob}")

    @property
    def final_stage(self) -> int:
        """The all-latent stage, M+1; every later epoch stays here."""
        return self.max_latent_stage + 1


def stage_for_epoch(epoch: int, config: CurriculumConfig, start_stage: int = 0) -> int:
    """Scheduled stage at a 0-based ``epoch`` of a run whose first epoch trains ``start_stage``: each stage k lasts
    ``stage_epochs[k]`` epochs (``epochs_per_stage`` past the list), capped at the all-latent stage M+1."""
    if epoch < 0 or start_stage < 0:
        raise ConfigError(f"stage_for_epoch needs epoch >= 0 and start_stage >= 0, got {epoch}, {start_stage}")
    stage, remaining = start_stage, epoch
    while stage <= config.max_latent_stage:
        length = config.stage_epochs[stage] if stage < len(config.stage_epochs) else config.epochs_per_stage
        if remaining < length:
            return stage
        remaining -= length
        stage += 1
    return config.max_latent_stage + 1


def is_stage_start(epoch: int, config: CurriculumConfig, start_stage: int = 0) -> bool:
    """Whether ``epoch`` begins a new stage (where ``reset_optimizer_each_stage`` rebuilds the optimizer)."""
    if epoch == 0:
        return True
    return stage_for_epoch(epoch, config, start_stage) != stage_for_epoch(epoch - 1, config, start_stage)


def effective_stage(scheduled_stage: int, config: CurriculumConfig) -> int:
    """The stage a mode actually trains at: ``cot`` and ``no_cot`` stay at 0, the others follow the schedule."""
    if config.mode in ("cot", "no_cot"):
        return 0
    return min(scheduled_stage, config.final_stage)


@dataclass(frozen=True)
class CVAEConfig:
    """ATP-Latent CVAE over latent steps."""

    latent_dim: int = 64
    """Z: size of each thought's latent; mapped to the reasoner's hidden size H by a linear layer."""
    thoughts_per_step: int = 1
    """c: thought slots per reasoning step (slot t belongs to step t // c); the decoder reads a step's c latents."""
    prior: Literal["learned", "standard_normal"] = "learned"
    """learned: conditional prior p(z|h) and a step-text posterior; standard_normal: the reference code's form."""
    inference: Literal["mean", "sample"] = "mean"
    """How z is chosen without step text: the mean (deterministic) or a sample of the distribution in the table."""
    mlp_dim: int = 256
    """Width of the posterior and prior MLPs."""
    text_embed_dim: int = 128
    """Token embedding size of the step-text encoder."""
    text_dim: int = 128
    """Step-text encoding size (GRU state) fed to the posterior."""
    decoder_embed_dim: int = 128
    """Token embedding size of the step decoder."""
    decoder_hidden_dim: int = 256
    """GRU state size of the step decoder."""
    beta: float = 1.0
    """KL weight after warm-up (1 = the true ELBO under this module's sum convention)."""
    beta_warmup_steps: int = 0
    """Optimizer steps of the linear KL warm-up from 0 to ``beta``; 0 = no warm-up."""
    stop_head: bool = False
    """ATP-Latent's stop head: an MLP on each step's first z says whether to stop thinking there, so a question
    uses as many latent steps as it needs (needs ``curriculum.pad_latent_to_max: false`` to see variable counts)."""
    stop_weight: float = 1.0
    """Weight of the stop head's cross-entropy in the loss."""

    def __post_init__(self) -> None:
        if self.prior not in ("learned", "standard_normal"):
            raise ConfigError(f"cvae.prior must be 'learned' or 'standard_normal', got {self.prior!r}")
        if self.inference not in ("mean", "sample"):
            raise ConfigError(f"cvae.inference must be 'mean' or 'sample', got {self.inference!r}")
        if self.latent_dim < 1 or self.thoughts_per_step < 1:
            raise ConfigError(
                "cvae.latent_dim and cvae.thoughts_per_step must be >= 1, "
                f"got {self.latent_dim} and {self.thoughts_per_step}"
            )
        if self.stop_weight < 0:
            raise ConfigError(f"cvae.stop_weight must be >= 0, got {self.stop_weight}")
        if self.beta < 0 or self.beta_warmup_steps < 0:
            raise ConfigError(
                f"cvae.beta and cvae.beta_warmup_steps must be >= 0, got {self.beta}, {self.beta_warmup_steps}"
            )


SYNTHETIC_SOURCES = ("arithmetic", "prosqa_like")
METHOD_MODES: dict[str, tuple[str, ...]] = {
    # method -> curriculum modes it runs (the first is what an unset / default `curriculum.mode` becomes)
    "no_cot": ("no_cot",),
    "cot": ("cot",),
    "coconut": ("coconut", "no_thoughts"),
    "atp_latent": ("coconut",),
    "latent_sft": ("coconut",),
}


@dataclass(frozen=True)
class GumbelThoughtsConfig:
    """How a latent_sft reasoner's thoughts are sampled: Latent-GRPO's Gumbel thoughts, in RL rollouts and in sampled
    evaluation answers (sampling.temperature > 0; greedy answers feed the un-noised mixture).

    At each latent slot: log p = log_softmax(logits) (T = 1); the top-p nucleus, at least K = latent_sft.topk tokens;
    g ~ Gumbel(0, 1) clamped to [clamp_low, clamp_high] (one-sided: then shifted by -clamp_low, so g >= 0) times
    noise_scale; the top-K of y = log p + g are mixed with softmax(y / gumbel_temperature). The exit (argmax of the
    un-noised logits is <eot>) carries no noise. The training log-density is the mean standard-Gumbel log-density of
    the recovered noise d = y - log p over the K ids (latentlab.reasoning.latent_sft).
    """

    noise: Literal["one_sided", "two_sided"] = "one_sided"
    """one_sided: shift the clamped noise to be >= 0, so every mixed candidate's gradient has the advantage's sign
    (Latent-GRPO); two_sided: the plain clamped Gumbel (the ablation)."""
    clamp_low: float = -1.5
    """Lower clamp of the Gumbel noise (Latent-GRPO: -1.5)."""
    clamp_high: float = 3.0
    """Upper clamp of the Gumbel noise (Latent-GRPO: 3)."""
    noise_scale: float = 1.0
    """Multiplies the (shifted) noise (Latent-GRPO: 1)."""
    gumbel_temperature: float = 1.0
    """tau_g of the mixture weights softmax(y / tau_g) (Latent-GRPO: 1)."""
    top_p: float = 0.95
    """Nucleus of log p before the noise, never fewer than K tokens (Latent-GRPO: 0.95; 1 = off)."""
    flip_negative: bool = True
    """RL updates only: Latent-GRPO's sign-preserving flip: for A <= 0 and a recovered noise d < 0 the value is kept but the gradient
    is taken at -d, bounding its size (1 - e^-|d| instead of e^|d| - 1)."""

    def __post_init__(self) -> None:
        _require(self.noise in ("one_sided", "two_sided"), "noise", f"must be one_sided or two_sided, got {self.noise}")
        _require(
            self.clamp_low < 0 < self.clamp_high,
            "clamp_low",
            f"need clamp_low < 0 < clamp_high, got {self.clamp_low}, {self.clamp_high}",
        )
        _require(self.noise_scale > 0, "noise_scale", f"must be > 0, got {self.noise_scale}")
        _require(self.gumbel_temperature > 0, "gumbel_temperature", f"must be > 0, got {self.gumbel_temperature}")
        _require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class LatentSFTConfig:
    """Latent-SFT thoughts (method latent_sft): each thought is a superposition of vocabulary embeddings."""

    topk: int = 10
    """K: the thought fed after a hidden state h is sum_i softmax(top-K logits of h)_i * E[id_i] over the input
    embeddings E (Latent-SFT's ``topk_interpolation`` and Latent-GRPO's ``max_topk``: 10)."""
    max_latents: int | None = None
    """Thought slots at inference and in rollouts: thinking ends at the first slot whose preceding hidden state's
    argmax is ``<eot>``, or here; null = 2 x the training maximum (2 * max_latent_stage * thoughts_per_step), so a
    chain that never predicts ``<eot>`` is seen as such (Latent-GRPO's 'never left latent mode')."""
    exit_weight: float = 1.0
    """Weight of the stay-in-latent-mode loss: at every used thought slot, -log(1 - p(<eot> | the hidden state
    before it)) (mean over slots), so the chain does not end early; the end itself is the supervised <eot>. Without
    it, a chain that ended after k thoughts at stage k keeps ending there at stage k + 1."""
    step_label_weight: float = 1.0
    """Weight of the step-label loss: at every used thought slot, the distribution whose top-K makes the thought is
    trained toward the tokens of the CoT text the slot replaces (its step cut into ``thoughts_per_step`` chunks;
    -mean log p over the chunk's tokens), so each thought is a superposition of its own step's tokens. Latent-SFT's
    soft labels do this from an encoder run; here the labels are the CoT tokens themselves. 0 = off (then nothing
    ties a thought to its step: the tiny run without it gave as many correct answers with thoughts shuffled between
    questions, 0.415, as with its own, 0.420)."""
    train_noise: bool = False
    """Train on Gumbel-perturbed thoughts: each fed mixture takes ``gumbel``'s noise, nucleus and temperature (the
    noise of Latent-GRPO's rollouts and of sampled answers), as the reference's Latent-SFT stage 2 perturbs its
    teacher latents; the step-label, stay and exit losses read the clean distribution, and validation feeds clean
    thoughts. Off, a reasoner sees noisy thoughts first in RL: the tiny step-labelled run answered 0.990 greedy
    and 0.252 under that noise."""
    gumbel: GumbelThoughtsConfig = field(default_factory=GumbelThoughtsConfig)
    """Gumbel thoughts of RL rollouts (Latent-GRPO) and of sampled evaluation answers."""

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise FieldError("topk", f"must be >= 1, got {self.topk}")
        if self.exit_weight < 0:
            raise FieldError("exit_weight", f"must be >= 0, got {self.exit_weight}")
        if self.step_label_weight < 0:
            raise FieldError("step_label_weight", f"must be >= 0 (0 = off), got {self.step_label_weight}")
        if self.max_latents is not None and self.max_latents < 1:
            raise FieldError("max_latents", f"must be >= 1 or null, got {self.max_latents}")


@dataclass
class ReasoningDataConfig:
    """Where the reasoning examples ({id, question, steps, answer}) come from."""

    source: Literal[
        "arithmetic",
        "prosqa_like",
        "jsonl",
        "gsm8k",
        "gsm8k_aug",
        "prosqa",
        "prontoqa",
        "gsm_hard",
        "svamp",
        "multiarith",
    ] = "arithmetic"
    """A seeded synthetic task (arithmetic, prosqa_like), latentlab JSONL, or an official format (converted on load)."""
    train: str | None = None
    """Training file (non-synthetic sources); relative paths resolve against the project root."""
    val: str | None = None
    """Validation file (non-synthetic sources)."""
    test: str | None = None
    """Test file (non-synthetic sources)."""
    num_train: int = 4000
    """Synthetic training examples."""
    num_val: int = 200
    """Synthetic validation examples."""
    num_test: int = 500
    """Synthetic test examples."""
    seed: int = 0
    """Seed of the synthetic generator."""
    min_steps: int = 2
    """Fewest reasoning steps of a synthetic example (arithmetic operations, or prosqa_like hops)."""
    max_steps: int = 4
    """Most reasoning steps of a synthetic example (arithmetic operations, or prosqa_like hops)."""
    max_operand: int = 9
    """Synthetic arithmetic: operands are drawn from 1..max_operand."""
    max_value: int = 99
    """Synthetic arithmetic: every intermediate result stays in 0..max_value."""
    ops: list[str] = field(default_factory=lambda: ["+", "-", "*"])
    """Synthetic arithmetic: the operations a step may use (+, -, *, / exact only)."""
    batch_size: int = 32
    """Examples per training and validation micro-batch."""
    limit_train: int | None = None
    """Train on only the first N training examples (None: all)."""
    limit_val: int | None = None
    """Validate on only the first N validation examples (None: all)."""

    def __post_init__(self) -> None:
        for name in ("num_train", "num_val", "num_test"):
            if getattr(self, name) < 0:
                raise FieldError(f"{name}", f"must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise FieldError("batch_size", f"must be >= 1, got {self.batch_size}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ConfigError(
                f"keys 'data.min_steps'/'data.max_steps': need 1 <= min_steps <= max_steps, "
                f"got {self.min_steps}, {self.max_steps}"
            )
        unknown = [op for op in self.ops if op not in ("+", "-", "*", "/")]
        if not self.ops or unknown:
            raise FieldError("ops", f"expected a non-empty list of + - * /, got {self.ops}")
        for name in ("limit_train", "limit_val"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FieldError(f"{name}", f"must be >= 1 or null, got {value}")

    @property
    def synthetic(self) -> bool:
        """Whether the examples are generated (no files needed)."""
        return self.source in SYNTHETIC_SOURCES


@dataclass
class ReasoningConfig:
    """What `latentlab fit` trains when `task: latent_cot`."""

    method: Literal["no_cot", "cot", "coconut", "atp_latent", "latent_sft"] = "coconut"
    """no_cot (answer only), cot (language steps), coconut (continuous thoughts), atp_latent (CVAE thoughts),
    latent_sft (thoughts that are superpositions of the top-K vocabulary embeddings, fed until ``<eot>``).
    It sets `curriculum.mode` (leave that key unset; coconut also accepts no_thoughts, the w/o-thought ablation)."""
    reasoner: dict | str = field(default_factory=lambda: {"tiny": {"arch": "gpt2", "layers": 4, "hidden": 128}})
    """Model spec of the reasoner (see BackboneConfig.model): a hub id such as openai-community/gpt2, a local
    directory, or {tiny: {...}} for a small random GPT-2/Llama with a byte-level tokenizer."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights dtype of the reasoner."""
    train_from_scratch: bool = True
    """True re-initialises the reasoner's weights from its architecture (a {tiny: ...} spec is random already);
    False starts from the pretrained weights. Every weight trains either way (full fine-tuning, as Coconut does)."""
    dropout: float | None = None
    """Set every dropout layer of the reasoner to this probability (GPT-2 ships 0.1); null keeps the model's own."""
    init_from: str | None = None
    """A run directory (its last.ckpt) or a .ckpt whose reasoner weights start this run, e.g. the CoT run that
    Coconut's GSM8k recipe starts from; CVAE weights are not taken from it."""
    start_stage: int = 0
    """Curriculum stage of the first epoch; the later ones follow the curriculum's stage lengths from there
    (Coconut's GSM8k run resumes its CoT run at stage 1; ATP-Latent starts at stage 1)."""
    init_thoughts_from: str | None = "<<"
    """Text whose mean token embedding initialises <bot>, <thought> and <eot> (Coconut copies '<<'); null keeps the
    resized-embedding default."""
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    """Coconut's staged curriculum."""
    cvae: CVAEConfig = field(default_factory=CVAEConfig)
    """ATP-Latent conditional VAE over latent steps (method atp_latent); cvae.thoughts_per_step must equal
    curriculum.thoughts_per_step."""
    latent_sft: LatentSFTConfig = field(default_factory=LatentSFTConfig)
    """Latent-SFT thoughts (method latent_sft)."""
    elbo_weight: float = 1.0
    """atp_latent: weight of the step ELBO (reconstruction + beta * KL, mean over steps) added to the answer CE."""
    data: ReasoningDataConfig = field(default_factory=ReasoningDataConfig)
    """Reasoning data."""
    val_generate_batches: int = 2
    """Validation batches on which answers are generated for val/accuracy (generation is slower than the loss)."""

    def __post_init__(self) -> None:
        allowed = METHOD_MODES[self.method]
        mode = self.curriculum.mode
        if mode not in allowed:
            if mode != "coconut":  # "coconut" is the CurriculumConfig default, i.e. unset: follow the method
                raise ConfigError(
                    f"key 'curriculum.mode': {mode!r} contradicts method {self.method!r} "
                    f"(allowed: {', '.join(allowed)}); remove curriculum.mode, the method sets it"
                )
            self.curriculum = dataclasses.replace(self.curriculum, mode=allowed[0])
        if self.curriculum.supervise_eot is None:
            self.curriculum = dataclasses.replace(self.curriculum, supervise_eot=self.method == "latent_sft")
        elif self.method == "latent_sft" and not self.curriculum.supervise_eot:
            raise ConfigError(
                "key 'curriculum.supervise_eot': latent_sft leaves latent mode when the reasoner predicts <eot>, so "
                "<eot> must be supervised; remove the key (or set it to true)"
            )
        if self.method != "latent_sft" and self.latent_sft != LatentSFTConfig():
            raise ConfigError(
                f"section 'latent_sft' is set but method is {self.method!r}; only method latent_sft reads it (remove "
                "the section or set method: latent_sft)"
            )
        if self.method == "latent_sft" and self.curriculum.thoughts_per_step < 1:
            raise FieldError("curriculum.thoughts_per_step", "latent_sft needs at least 1 thought per step")
        if self.method == "atp_latent" and self.cvae.thoughts_per_step != self.curriculum.thoughts_per_step:
            raise ConfigError(
                f"key 'cvae.thoughts_per_step': {self.cvae.thoughts_per_step} differs from "
                f"curriculum.thoughts_per_step {self.curriculum.thoughts_per_step}; the decoder reads one step's "
                "thoughts, so set both to the same c"
            )
        if self.cvae.stop_head and (self.method != "atp_latent" or self.curriculum.pad_latent_to_max):
            raise ConfigError(
                "key 'cvae.stop_head': the stop head learns each question's step count, so it needs method "
                f"atp_latent (got {self.method!r}) and curriculum.pad_latent_to_max: false (got "
                f"{self.curriculum.pad_latent_to_max}), which gives each row its own thought count"
            )
        if self.method == "atp_latent" and self.curriculum.thoughts_per_step < 1:
            raise FieldError("curriculum.thoughts_per_step", "atp_latent needs at least 1 thought per step")
        if self.start_stage < 0:
            raise FieldError("start_stage", f"must be >= 0, got {self.start_stage}")
        if self.val_generate_batches < 0:
            raise FieldError("val_generate_batches", f"must be >= 0, got {self.val_generate_batches}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise FieldError("dropout", f"expected a probability in [0, 1) or null, got {self.dropout}")
        if self.elbo_weight < 0:
            raise FieldError("elbo_weight", f"must be >= 0, got {self.elbo_weight}")

    @property
    def latent(self) -> bool:
        """Whether the method feeds continuous thoughts."""
        return self.method in ("coconut", "atp_latent", "latent_sft")

    @property
    def max_latents(self) -> int:
        """latent_sft: the thought slots of an inference chain (``latent_sft.max_latents`` or its default)."""
        c = self.curriculum
        return self.latent_sft.max_latents or 2 * c.max_latent_stage * c.thoughts_per_step

    def stage_at_epoch(self, epoch: int) -> int:
        """The curriculum stage trained at 0-based ``epoch`` (``start_stage`` shifts the schedule; cot/no_cot: 0)."""
        return effective_stage(stage_for_epoch(epoch, self.curriculum, self.start_stage), self.curriculum)

    @property
    def final_stage(self) -> int:
        """The stage evaluation runs at: all steps latent for latent methods, 0 for cot/no_cot."""
        return effective_stage(self.curriculum.final_stage, self.curriculum)


@dataclass
class ReasoningEvalConfig(EvalConfig):
    """`latentlab evaluate` of a reasoner: accuracy, pass@k and token counts (sampling settings: `sampling:`)."""

    pass_k: list[int] = field(default_factory=lambda: [1])
    """pass@k cut-offs. With sampling.num_samples 1, pass@1 is the greedy accuracy; otherwise every pass@k uses the
    unbiased estimator over sampling.num_samples sampled answers (so num_samples >= max(pass_k))."""
    answer_extraction: Literal["marker", "last_number"] = "marker"
    """marker: the answer is what follows the last "###" (else the whole text), as the reasoners are trained to
    write; last_number: where there is no marker, the last number in the text (a zero-shot model that was never
    taught the marker, e.g. "... so the answer is 42.")."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.pass_k or any(k < 1 for k in self.pass_k):
            raise FieldError("pass_k", f"expected a non-empty list of integers >= 1, got {self.pass_k}")
