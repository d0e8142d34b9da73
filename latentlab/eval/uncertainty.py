"""Uncertainty of evaluation numbers: percentile bootstrap intervals of a mean over questions, and of the paired
difference of two methods scored on the same questions; plus the table rows built from them.

Pure functions of per-question score arrays with a seeded numpy ``Generator``: the same seed gives the same interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "Interval",
    "bootstrap_mean",
    "difference_rows",
    "group_rows",
    "interval_columns",
    "paired_bootstrap_difference",
]

BOOTSTRAP_RESAMPLES = 1000
"""Resamples of every interval unless told otherwise."""


class Interval(NamedTuple):
    """A point estimate with its percentile-bootstrap interval; unpacks as ``(estimate, low, high)``."""

    estimate: float
    low: float
    high: float


def _scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d sequence of per-question scores, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} holds a NaN or an infinite score at question {int(np.argmin(np.isfinite(scores)))}")
    return scores


def _percentile_interval(scores: np.ndarray, seed: int, n_resamples: int, level: float) -> Interval:
    """scores: [Q]. Means of ``n_resamples`` draws of Q questions with replacement -> their central ``level`` range.

    The scores are centred on their first value before averaging, so equal scores give resampled means exactly equal
    to that value (a zero-width interval) instead of one that rounding moves by an ulp; the means are clipped to
    [min, max], where they lie mathematically, for the same reason.
    """
    if not isinstance(n_resamples, int) or isinstance(n_resamples, bool) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95, got {level!r}")
    origin = scores[0]
    centred = scores - origin  # [Q]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, scores.size, size=(n_resamples, scores.size))  # [R, Q] question indices
    means = np.clip(origin + centred[picks].mean(axis=1), scores.min(), scores.max())  # [R]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(origin + centred.mean()), float(low), float(high))


def bootstrap_mean(
    scores: Sequence[float] | np.ndarray, seed: int, n_resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95
) -> Interval:
    """The mean of per-question ``scores`` [Q] and its percentile bootstrap interval (questions resampled with
    replacement ``n_resamples`` times from ``np.random.default_rng(seed)``)."""
    return _percentile_interval(_scores(scores, "scores"), seed, n_resamples, level)


def paired_bootstrap_difference(
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
    seed: int,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> Interval:
    """mean(a) - mean(b) of two methods scored on the same Q questions, with its paired bootstrap interval.

    scores_a, scores_b: [Q], question q in the same place of both. Each resample draws questions, and both methods
    keep their scores on the drawn questions, so what the questions share (an easy question is easy for both) cancels:
    the interval is that of the mean of the per-question differences. Identical methods give exactly 0 and a
    zero-width interval.
    """
    a, b = _scores(scores_a, "scores_a"), _scores(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same questions: scores_a has {a.size}, scores_b has {b.size}")
    return _percentile_interval(a - b, seed, n_resamples, level)


def interval_columns(
    scores: Mapping[str, Sequence[float] | np.ndarray],
    seed: int,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> dict[str, float]:
    """``{metric}_low`` and ``{metric}_high`` of each metric's per-question scores (metric -> [Q])."""
    columns: dict[str, float] = {}
    for metric, values in scores.items():
        _, columns[f"{metric}_low"], columns[f"{metric}_high"] = bootstrap_mean(values, seed, n_resamples, level)
    return columns


def difference_rows(
    scores: Mapping[str, Mapping[str, Sequence[float] | np.ndarray]],
    baselines: Sequence[str],
    metrics: Sequence[str],
    seed: int,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> list[dict]:
    """One row per (method, baseline) pair: each metric's paired difference method - baseline with its interval.

    scores: method -> metric -> [Q] (all on the same questions, in the same order). Baselines that were not scored
    are left out, and so are a method's difference to itself and the reverse of a pair already listed (with
    baselines no_retrieval then bm25: bm25 - no_retrieval, not also no_retrieval - bm25). Columns: ``method``, ``baseline``, ``questions``, then
    ``{metric}_diff``, ``{metric}_diff_low``, ``{metric}_diff_high`` per metric.
    """
    if not metrics:
        raise ValueError("difference_rows needs at least one metric")
    rows, pairs = [], set()
    for baseline in (b for b in baselines if b in scores):
        for method, by_metric in scores.items():
            if method == baseline or frozenset((method, baseline)) in pairs:
                continue
            pairs.add(frozenset((method, baseline)))
            row: dict = {"method": method, "baseline": baseline, "questions": len(by_metric[metrics[0]])}
            for metric in metrics:
                diff = paired_bootstrap_difference(
                    by_metric[metric], scores[baseline][metric], seed, n_resamples, level
                )
                row[f"{metric}_diff"], row[f"{metric}_diff_low"], row[f"{metric}_diff_high"] = diff
            rows.append(row)
    return rows


def group_rows(
    scores: Mapping[str, Mapping[str, Sequence[float] | np.ndarray]],
    groups: Mapping[str, Sequence[int] | np.ndarray],
    metrics: Sequence[str],
    seed: int,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> list[dict]:
    """One row per (method, group): each metric's mean over the group's questions, its interval and the count.

    scores: method -> metric -> [Q]; groups: name -> indices into the Q questions (groups may overlap, say
    "comparison" and "yes/no answers"). An empty group is left out. Columns: ``method``, ``group``, ``questions``,
    then ``{metric}``, ``{metric}_low``, ``{metric}_high`` per metric.
    """
    rows = []
    for method, by_metric in scores.items():
        for group, indices in groups.items():
            members = np.asarray(indices, dtype=np.int64)
            if members.size == 0:
                continue
            row: dict = {"method": method, "group": group, "questions": int(members.size)}
            for metric in metrics:
                values = np.asarray(by_metric[metric], dtype=np.float64)[members]
                row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = bootstrap_mean(
                    values, seed, n_resamples, level
                )
            rows.append(row)
    return rows
