"""Rewards of RL on reasoning, registered by name, and ``score``: their weighted sum plus a mask of scorable samples.

A reward has TRL's signature ``fn(prompts, completions, **columns) -> list[float | None]``: one score per
completion, None to skip a sample (it then gets valid=False, and no advantage: ``latentlab.rl.advantages``).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

import torch
from torch import Tensor

from latentlab.configs.rl import RewardConfig
from latentlab.errors import ConfigError, DataError, LatentLabError
from latentlab.eval.metrics import answers_match, normalize_numeric_answer
from latentlab.reasoning.curriculum import DEFAULT_FORMAT, extract_answer
from latentlab.registry import Registry

__all__ = [
    "CONFIG_COLUMN",
    "REWARDS",
    "RewardError",
    "RewardFn",
    "Scores",
    "answer_reward",
    "format_reward",
    "length_reward",
    "score",
]

RewardFn = Callable[..., list[float | None]]
"""``fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]``, one entry per completion."""

REWARDS: Registry[RewardFn] = Registry("reward")

CONFIG_COLUMN = "reward_config"
"""``score`` passes its ``RewardConfig`` to every reward under this keyword (TRL passes trainer state the same way);
called directly, a reward without it uses ``RewardConfig()``'s defaults."""

_PROMPT_PREFIX_CHARS = 40


class RewardError(LatentLabError):
    """A reward function raised, or returned something other than one number or None per completion."""


class Scores(NamedTuple):
    """What ``score`` returns (a tuple: ``total, per_reward, valid = score(...)``)."""

    total: Tensor
    """[N] float32 weighted sum of the rewards; 0.0 where valid is False."""
    per_reward: dict[str, Tensor]
    """reward name -> [N] float32 unweighted scores, NaN where that reward returned None."""
    valid: Tensor
    """[N] bool, False where any reward returned None (the sample must not set a baseline)."""


# ---------------------------------------------------------------------------------------------------------------
# Columns
# ---------------------------------------------------------------------------------------------------------------


def _is_per_sample(value: Any) -> bool:
    return isinstance(value, (list, tuple, Tensor))


def _column(columns: dict[str, Any], key: str, reward: str, n: int) -> Sequence[Any]:
    """The per-sample column ``key`` that reward ``reward`` needs, checked to hold n entries."""
    if key not in columns:
        known = ", ".join(sorted(k for k in columns if k != CONFIG_COLUMN)) or "none"
        raise DataError(f"reward {reward!r} needs a column {key!r} with one entry per completion; columns: {known}")
    values = columns[key]
    if not _is_per_sample(values) or len(values) != n:
        got = f"{len(values)} entries" if _is_per_sample(values) else type(values).__name__
        raise DataError(f"column {key!r} of reward {reward!r} has {got}; expected one entry per completion ({n})")
    return values


def _config(columns: dict[str, Any]) -> RewardConfig:
    config = columns.get(CONFIG_COLUMN)
    return RewardConfig() if config is None else config


# ---------------------------------------------------------------------------------------------------------------
# The rewards
# ---------------------------------------------------------------------------------------------------------------

# The canonical form of a number (normalize_numeric_answer): "-12", "0.5". A non-number's canonical form has no
# "-" or "." (SQuAD normalisation drops punctuation), so this also tells a number from text.
_CANONICAL_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _answer_correct(pred: str, gold: str, tolerance: float) -> bool:
    """``answers_match``, or both canonical forms numbers within ``tolerance`` relative to the gold."""
    if answers_match(pred, gold):
        return True
    pred_norm, gold_norm = normalize_numeric_answer(pred), normalize_numeric_answer(gold)
    if tolerance == 0 or not (_CANONICAL_NUMBER.fullmatch(pred_norm) and _CANONICAL_NUMBER.fullmatch(gold_norm)):
        return False
    pred_value, gold_value = Decimal(pred_norm), Decimal(gold_norm)
    return abs(pred_value - gold_value) <= Decimal(repr(tolerance)) * abs(gold_value)


@REWARDS.register("answer")
def answer_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
    """1.0 if the completion's answer matches the gold column ``answer``, 0.0 if not, None if it has no answer.

    The answer is what ``extract_answer`` finds after the last "###" marker (``CoTTextFormat``); a completion
    without the marker, or with nothing after it, has no parsable answer (None: truncated or malformed, so it does
    not count as wrong against its group). Matching is the evaluation's ``answers_match`` (canonical numbers:
    "1,000" = "$1000" = "1000.0"), widened to numbers within ``numeric_tolerance`` of the gold, relatively.
    """
    gold_answers = _column(columns, "answer", "answer", len(completions))
    tolerance = _config(columns).numeric_tolerance
    marker = DEFAULT_FORMAT.answer_prefix.strip()
    scores: list[float | None] = []
    for completion, gold in zip(completions, gold_answers):
        pred = extract_answer(completion) if marker in completion else ""
        scores.append(float(_answer_correct(pred, str(gold), tolerance)) if pred else None)
    return scores


@REWARDS.register("format")
def format_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
    """1.0 if the completion contains the answer marker of ``CoTTextFormat`` ("###"), else 0.0."""
    marker = DEFAULT_FORMAT.answer_prefix.strip()
    return [float(marker in completion) for completion in completions]


@REWARDS.register("length")
def length_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
    """DAPO's overlong shaping from the column ``completion_lengths``, in tokens.

    ``completion_lengths[i]`` is completion i's length in generated tokens, the unit of ``max_completion`` (the
    generation budget). With L_max = max_completion and B = overlong_buffer the reward is 0 for L <= L_max - B,
    (L_max - B - L) / B on the buffer (-1 at L = L_max) and -1 beyond. overlong_buffer 0 turns it off (all 0).
    """
    lengths = torch.as_tensor(_column(columns, "completion_lengths", "length", len(completions)), dtype=torch.float64)
    if (lengths < 0).any():
        index = int((lengths < 0).nonzero()[0])
        raise DataError(f"completion_lengths[{index}] is {float(lengths[index])}; expected a token count >= 0")
    config = _config(columns)
    if config.overlong_buffer == 0:
        return [0.0] * len(completions)
    if config.max_completion is None or config.max_completion <= config.overlong_buffer:
        raise ConfigError("reward.overlong_buffer needs reward.max_completion > overlong_buffer (the token budget)")
    free = config.max_completion - config.overlong_buffer
    return ((free - lengths) / config.overlong_buffer).clamp(min=-1.0, max=0.0).tolist()


# ---------------------------------------------------------------------------------------------------------------
# The weighted sum
# ---------------------------------------------------------------------------------------------------------------


def _prompt_label(prompts: Sequence[str], index: int) -> str:
    text = str(prompts[index]) if index < len(prompts) else ""
    prefix = text[:_PROMPT_PREFIX_CHARS] + ("..." if len(text) > _PROMPT_PREFIX_CHARS else "")
    return f"prompt {index} ({prefix!r})"


def _slice_columns(columns: dict[str, Any], index: int) -> dict[str, Any]:
    return {k: v[index : index + 1] if _is_per_sample(v) else v for k, v in columns.items()}


def _call(name: str, fn: RewardFn, prompts: list[str], completions: list[str], columns: dict[str, Any]) -> list:
    """``fn`` on the whole batch, with errors that name the reward, its function and the prompt at fault."""
    label = f"reward {name!r} ({getattr(fn, '__qualname__', repr(fn))})"
    try:
        values = fn(prompts, completions, **columns)
    except Exception as batch_error:
        # Find the culprit by re-running sample by sample (rewards are pure; this is the error path only).
        for i in range(len(completions)):
            try:
                fn(prompts[i : i + 1], completions[i : i + 1], **_slice_columns(columns, i))
            except Exception as sample_error:
                raise RewardError(
                    f"{label} raised on {_prompt_label(prompts, i)}: {type(sample_error).__name__}: {sample_error}"
                ) from sample_error
        raise RewardError(
            f"{label} raised on the batch of {len(completions)} completions (from {_prompt_label(prompts, 0)}), "
            f"though on no single one: {type(batch_error).__name__}: {batch_error}"
        ) from batch_error
    n = len(completions)
    if not isinstance(values, (list, tuple)):
        raise RewardError(
            f"{label} returned a {type(values).__name__} for {n} completions (from {_prompt_label(prompts, 0)}); "
            "expected a list with one score (a number or None) per completion"
        )
    if len(values) < n:
        raise RewardError(
            f"{label} returned {len(values)} scores for {n} completions; {_prompt_label(prompts, len(values))} and "
            "those after it got none (expected one score, a number or None, per completion)"
        )
    if len(values) > n:
        raise RewardError(
            f"{label} returned {len(values)} scores for {n} completions, {len(values) - n} after the last one, "
            f"{_prompt_label(prompts, n - 1)} (expected one score, a number or None, per completion)"
        )
    for i, value in enumerate(values):
        if value is not None and not (isinstance(value, numbers.Real) and math.isfinite(value)):
            raise RewardError(
                f"{label} returned {value!r} for {_prompt_label(prompts, i)}; expected a finite number, or None to "
                "skip the sample"
            )
    return list(values)


def score(prompts: list[str], completions: list[str], config: RewardConfig, **columns: Any) -> Scores:
    """Every reward in ``config.weights`` on the N completions, and total = sum_name weight * reward (times its gate
    reward for a name in ``config.gates``).

    prompts, completions: [N] (prompt-major: each prompt repeated G times); columns: per-sample lists of N entries
    (e.g. ``answer``, ``completion_lengths``) or other values, passed to every reward with ``reward_config=config``.
    A sample for which any reward returns None is not scorable: valid False, total 0.0.
    """
    n = len(completions)
    if len(prompts) != n:
        raise DataError(f"score got {len(prompts)} prompts for {n} completions; expected one prompt per completion")
    if CONFIG_COLUMN in columns:
        raise ConfigError(f"column name {CONFIG_COLUMN!r} is reserved for the RewardConfig; rename that column")
    for key, values in columns.items():
        if _is_per_sample(values) and len(values) != n:
            raise DataError(
                f"column {key!r} has {len(values)} entries for {n} completions; expected one per completion "
                "(repeat per-prompt columns G times, prompt-major)"
            )
    functions = {name: REWARDS.get(name, where="reward.weights") for name in config.weights}
    columns = {**columns, CONFIG_COLUMN: config}
    total = torch.zeros(n, dtype=torch.float64)
    valid = torch.ones(n, dtype=torch.bool)
    per_reward: dict[str, Tensor] = {}
    raw: dict[str, Tensor] = {}
    for name, fn in functions.items():
        values = _call(name, fn, list(prompts), list(completions), columns)
        skipped = torch.tensor([value is None for value in values], dtype=torch.bool)
        scores = torch.tensor(
            [float("nan") if value is None else float(value) for value in values], dtype=torch.float64
        )
        per_reward[name] = scores.float()
        valid &= ~skipped
        raw[name] = torch.where(skipped, 0.0, scores)
    for name in functions:
        term = raw[name] * raw[config.gates[name]] if name in config.gates else raw[name]
        total += config.weights[name] * term
    return Scores(total=torch.where(valid, total, 0.0).float(), per_reward=per_reward, valid=valid)
