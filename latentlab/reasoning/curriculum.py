"""Coconut's staged curriculum: which reasoning steps of a ``CoTExample`` are latent at stage k.

Pure functions from an example, a stage and a config to a token layout (prefix, thought count, language part, labels).

Stages (c = ``thoughts_per_step``, M = ``max_latent_stage``, S = the example's number of steps):

| stage k        | language steps kept | thoughts (``pad_latent_to_max``) | thoughts (otherwise) |
|----------------|---------------------|----------------------------------|----------------------|
| 0              | all                 | 0                                | 0                    |
| 1 <= k <= M    | steps k+1..S        | k*c                              | min(k, S)*c          |
| k = M+1 (final)| none                | M*c                              | min(M, S)*c          |

With ``pad_latent_to_max`` the thought count depends only on the stage, which reproduces Coconut exactly and matches
what inference can know (the eval prompt never sees the gold steps). Without it, the count follows the number of
steps actually removed, which fixes Coconut's k*c thoughts for a sample with fewer than k steps; the eval count is
still ``min(k, M)*c`` because sizing it from the gold step count would leak the answer's length into the test input.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from latentlab.configs.reasoning import (  # noqa: F401 - the schedule is part of the curriculum API
    CurriculumConfig,
    CurriculumMode,
    effective_stage,
    is_stage_start,
    stage_for_epoch,
)
from latentlab.data.schema import CoTExample
from latentlab.errors import ConfigError

IGNORE_INDEX = -100
"""Label of a position without loss (PyTorch's ``cross_entropy`` default ``ignore_index``)."""


@dataclass(frozen=True)
class CoTTextFormat:
    """How a question, its steps and its answer become text (Coconut: ``q\\n``, ``step\\n``, ``### answer<eos>``)."""

    question_suffix: str = "\n"
    """Appended to the question."""
    step_suffix: str = "\n"
    """Appended to every language step."""
    answer_prefix: str = "### "
    """Put before the answer; answer extraction looks for it."""


DEFAULT_FORMAT = CoTTextFormat()


@dataclass(frozen=True)
class LayoutVocab:
    """Token ids a layout needs, and the text encoder (no special tokens added)."""

    encode: Callable[[str], list[int]]
    bot_id: int
    thought_id: int
    eot_id: int
    eos_id: int
    bos_id: int | None = None
    """Put before the question when the model expects one (Llama, SmolLM2); None for GPT-2."""

    @classmethod
    def from_tokenizer(cls, tokenizer, bot_id: int, thought_id: int, eot_id: int, use_bos: bool | None = None):
        """Ids from a Hugging Face tokenizer; ``use_bos`` defaults to whether the tokenizer adds a BOS itself."""
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no eos_token; the answer needs one to end")
        if use_bos is None:
            probe = tokenizer("a", add_special_tokens=True)["input_ids"]
            use_bos = tokenizer.bos_token_id is not None and len(probe) > 0 and probe[0] == tokenizer.bos_token_id
        return cls(
            encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
            bot_id=bot_id,
            thought_id=thought_id,
            eot_id=eot_id,
            eos_id=tokenizer.eos_token_id,
            bos_id=tokenizer.bos_token_id if use_bos else None,
        )


@dataclass(frozen=True)
class CoTLayout:
    """One training sequence: ``prefix_ids``, ``n_thoughts`` continuous thoughts, then ``suffix_ids``.

    ``prefix_ids`` ends with ``<bot>`` when the mode has markers; ``suffix_ids`` then starts with ``<eot>``.
    ``suffix_labels`` is aligned with ``suffix_ids``: the token itself where it is supervised, else ``IGNORE_INDEX``.
    The question, ``<bot>`` and the thoughts never carry loss; ``<eot>`` does only with ``supervise_eot``
    (latent_sft: the last thought's output learns to end thinking).
    """

    prefix_ids: list[int]
    n_thoughts: int
    suffix_ids: list[int]
    suffix_labels: list[int]
    language_text: str
    """The language part after the thoughts as text: the kept steps and the answer."""
    n_latent_steps: int
    """How many of the example's steps were removed from the language part."""

    def input_ids(self, thought_id: int) -> list[int]:
        """The flat sequence with a ``thought_id`` placeholder in each thought slot."""
        return self.prefix_ids + [thought_id] * self.n_thoughts + self.suffix_ids

    @property
    def labels(self) -> list[int]:
        """Labels over the flat sequence (same length as ``input_ids``)."""
        return [IGNORE_INDEX] * (len(self.prefix_ids) + self.n_thoughts) + self.suffix_labels


def extract_answer(text: str, fmt: CoTTextFormat = DEFAULT_FORMAT) -> str:
    """The answer in generated text: what follows the last answer marker (``###``), else the whole text, stripped."""
    marker = fmt.answer_prefix.strip()
    return (text.rsplit(marker, 1)[-1] if marker and marker in text else text).strip()


def sample_stage(example: CoTExample, scheduled_stage: int, config: CurriculumConfig, rng: random.Random) -> int:
    """The stage for one training sample: with ``uniform_prob`` a uniform draw from 0..S, else the scheduled one."""
    if config.uniform_prob > 0 and rng.random() < config.uniform_prob:
        return effective_stage(rng.randint(0, len(example.steps)), config)
    return effective_stage(scheduled_stage, config)


def n_latent_steps(n_steps: int, stage: int, config: CurriculumConfig) -> int:
    """Steps removed from the language part at ``stage`` (all of them at the final stage and beyond)."""
    if config.mode == "no_cot":
        return n_steps
    stage = effective_stage(stage, config)
    return n_steps if stage > config.max_latent_stage else min(stage, n_steps)


def n_thoughts_for(n_steps: int | None, stage: int, config: CurriculumConfig) -> int:
    """Thought count at ``stage`` (see the module table); ``n_steps=None`` is the inference rule (no gold steps)."""
    if config.mode != "coconut":
        return 0
    stage = min(effective_stage(stage, config), config.max_latent_stage)
    if n_steps is None or config.pad_latent_to_max:
        return stage * config.thoughts_per_step
    return min(stage, n_steps) * config.thoughts_per_step


def question_prompt_ids(question: str, vocab: LayoutVocab, fmt: CoTTextFormat, markers: bool) -> list[int]:
    """``[bos] question+suffix [<bot>]``: the part before the thoughts, in training and at inference alike."""
    ids = [] if vocab.bos_id is None else [vocab.bos_id]
    ids += vocab.encode(question + fmt.question_suffix)
    return ids + [vocab.bot_id] if markers else ids


def build_layout(
    example: CoTExample,
    stage: int,
    config: CurriculumConfig,
    vocab: LayoutVocab,
    fmt: CoTTextFormat = DEFAULT_FORMAT,
) -> CoTLayout:
    """The training layout of ``example`` at ``stage`` for every mode (coconut, cot, no_cot, no_thoughts).

    Every piece is encoded separately (question + suffix, each step + suffix, answer prefix + answer) so a step's
    tokens are the same whether it is kept or not; the answer ends with ``eos``, which is supervised.
    """
    markers = config.mode == "coconut"
    removed = n_latent_steps(len(example.steps), stage, config)
    kept_steps = example.steps[removed:]
    step_texts = [step + fmt.step_suffix for step in kept_steps]
    answer_text = fmt.answer_prefix + example.answer
    language_ids: list[int] = []
    for text in step_texts:
        language_ids += vocab.encode(text)
    language_ids += vocab.encode(answer_text) + [vocab.eos_id]
    head = [vocab.eot_id] if markers else []
    return CoTLayout(
        prefix_ids=question_prompt_ids(example.question, vocab, fmt, markers),
        n_thoughts=n_thoughts_for(len(example.steps), stage, config),
        suffix_ids=head + language_ids,
        suffix_labels=(head if config.supervise_eot else [IGNORE_INDEX] * len(head)) + language_ids,
        language_text="".join(step_texts) + answer_text,
        n_latent_steps=removed,
    )


def build_prompt(
    question: str,
    stage: int,
    config: CurriculumConfig,
    vocab: LayoutVocab,
    fmt: CoTTextFormat = DEFAULT_FORMAT,
) -> tuple[list[int], int]:
    """Inference prompt ``(prefix_ids, n_thoughts)``; the thought count never depends on gold steps.

    Decoding feeds the thoughts, then ``<eot>`` (coconut mode), then generates the language part.
    """
    markers = config.mode == "coconut"
    return question_prompt_ids(question, vocab, fmt, markers), n_thoughts_for(None, stage, config)


def step_token_ids(steps: Sequence[str], vocab: LayoutVocab) -> list[list[int]]:
    """Each step's tokens without its separator, e.g. as CVAE reconstruction targets."""
    return [vocab.encode(step) for step in steps]
