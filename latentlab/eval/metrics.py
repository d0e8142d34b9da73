"""Evaluation metrics: SQuAD EM / token F1, the official HotpotQA answer F1, ROUGE-L, Recall@k / Precision@k,
answer accuracy and unbiased pass@k.

Pure functions score one example; the torchmetrics ``Metric`` classes accumulate sums over batches and processes.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Collection, Hashable, Sequence
from decimal import Decimal

import torch
from torchmetrics import MeanMetric, Metric

from latentlab.errors import ConfigError, DataError

__all__ = [
    "AnswerAccuracy",
    "ExactMatch",
    "HotpotQAF1",
    "PassAtK",
    "PrecisionAtK",
    "QAMetrics",
    "RecallAtK",
    "RougeL",
    "TokenF1",
    "answers_match",
    "exact_match",
    "hotpotqa_f1",
    "lcs_length",
    "normalize_answer",
    "normalize_numeric_answer",
    "pass_at_k",
    "precision_at_k",
    "recall_at_k",
    "rouge_l",
    "token_f1",
]

# ---------------------------------------------------------------------------------------------------------------
# Answer normalisation and per-example scores
# ---------------------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_gold_list(golds: str | Sequence[str]) -> list[str]:
    # A bare string would otherwise be iterated character by character.
    gold_list = [golds] if isinstance(golds, str) else list(golds)
    if not gold_list:
        raise DataError("an example has no gold answers; expected at least one answer string in 'answers'")
    return gold_list


def exact_match(pred: str, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0."""
    pred_norm = normalize_answer(pred)
    return float(any(pred_norm == normalize_answer(g) for g in _as_gold_list(golds)))


def _f1_from_tokens(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        # SQuAD's rule: an empty side scores 1 only when both are empty (a correct "no answer").
        return float(pred_tokens == gold_tokens)
    return _overlap_f1(pred_tokens, gold_tokens)


def _overlap_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """Harmonic mean of token precision and recall under multiset overlap (0 without overlap, or an empty side)."""
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, golds: str | Sequence[str]) -> float:
    """SQuAD token F1 (multiset overlap of normalised tokens), maximised over the gold answers."""
    pred_tokens = normalize_answer(pred).split()
    return max(_f1_from_tokens(pred_tokens, normalize_answer(g).split()) for g in _as_gold_list(golds))


HOTPOTQA_SPECIAL_ANSWERS = frozenset({"yes", "no", "noanswer"})
"""Normalised answers that the official HotpotQA F1 scores all-or-nothing."""


def _hotpotqa_f1_one(pred_norm: str, gold_norm: str) -> float:
    if pred_norm != gold_norm and (pred_norm in HOTPOTQA_SPECIAL_ANSWERS or gold_norm in HOTPOTQA_SPECIAL_ANSWERS):
        return 0.0
    return _overlap_f1(pred_norm.split(), gold_norm.split())


def hotpotqa_f1(pred: str, golds: str | Sequence[str]) -> float:
    """The official HotpotQA answer F1 (``f1_score`` of hotpot_evaluate_v1.py), maximised over the gold answers.

    Both sides are SQuAD-normalised (``normalize_answer``); then, unlike ``token_f1``:
    - if either side is 'yes', 'no' or 'noanswer' and the two differ, F1 (and precision and recall) is 0, however many
      tokens they share: ('no', 'no way') scores 0 here and 2/3 under ``token_f1``;
    - there is no empty-answer rule: no token in common scores 0, so an empty prediction against an empty gold
      scores 0 (``token_f1``, with SQuAD 2.0's rule, gives 1).
    Otherwise it is the SQuAD token F1. The official script has one gold answer per question; several are scored
    as SQuAD does, the best one counting.
    """
    pred_norm = normalize_answer(pred)
    return max(_hotpotqa_f1_one(pred_norm, normalize_answer(g)) for g in _as_gold_list(golds))


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, O(len a * len b))."""
    if len(a) < len(b):
        a, b = b, a  # keep the rolling row as short as possible
    previous = [0] * (len(b) + 1)
    for item_a in a:
        current = [0] * (len(b) + 1)
        for j, item_b in enumerate(b, start=1):
            current[j] = previous[j - 1] + 1 if item_a == item_b else max(previous[j], current[j - 1])
        previous = current
    return previous[-1]


def rouge_l(pred: str, ref: str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure between normalised prediction and reference tokens.

    P = LCS / |pred|, R = LCS / |ref|, F = (1 + beta^2) P R / (R + beta^2 P); beta = 1 gives the harmonic mean.
    Empty sides follow token F1: both empty -> 1.0, one empty -> 0.0.
    """
    pred_tokens = normalize_answer(pred).split()
    ref_tokens = normalize_answer(ref).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    lcs = lcs_length(pred_tokens, ref_tokens)
    if lcs == 0:
        return 0.0
    precision = lcs / len(pred_tokens)
    recall = lcs / len(ref_tokens)
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


# ---------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------


def _gold_hits_in_top_k(retrieved_ids: Sequence[Hashable], supporting_ids: Collection[Hashable], k: int) -> int:
    if k < 1:
        raise ConfigError(f"retrieval cut-off k={k} is invalid; expected an integer k >= 1")
    gold = set(supporting_ids)
    if not gold:
        raise DataError(
            "Recall@k / Precision@k need at least one supporting id per question; got an empty 'supporting' list "
            "(leave retrieval metrics out for data without supporting evidence)"
        )
    return len(set(retrieved_ids[:k]) & gold)


def recall_at_k(retrieved_ids: Sequence[Hashable], supporting_ids: Collection[Hashable], k: int) -> float:
    """|top-k retrieved ∩ gold| / |gold|, with ``retrieved_ids`` ranked best first.

    Fewer than k retrieved ids: only those present are looked at (the missing ranks are misses). Duplicate ids and
    padding ids such as FAISS's -1 are never double-counted: the intersection is taken over sets.
    """
    return _gold_hits_in_top_k(retrieved_ids, supporting_ids, k) / len(set(supporting_ids))


def precision_at_k(retrieved_ids: Sequence[Hashable], supporting_ids: Collection[Hashable], k: int) -> float:
    """|top-k retrieved ∩ gold| / k, with ``retrieved_ids`` ranked best first.

    The denominator is always k: fewer than k retrieved ids count the missing ranks as misses, so a retriever that
    returns less cannot score higher precision for it.
    """
    return _gold_hits_in_top_k(retrieved_ids, supporting_ids, k) / k


# ---------------------------------------------------------------------------------------------------------------
# Reasoning answers and pass@k
# ---------------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")


def normalize_numeric_answer(text: str) -> str:
    """Canonical form of an answer: a number if it parses as one, else the SQuAD-normalised string.

    Numbers lose thousands commas, a ``$`` sign and trailing zeros after the point, so "1,000", "$1000" and
    "1000.0" all become "1000"; Decimal keeps this exact (no float rounding of long numbers).
    """
    stripped = text.strip().replace(",", "").replace("$", "").strip()
    if _NUMBER.fullmatch(stripped):
        value = Decimal(stripped)  # the regex admits only plain decimals, which Decimal always parses
        if value == value.to_integral_value():
            return str(int(value))  # int() also maps -0 to 0
        return format(value.normalize(), "f")
    return normalize_answer(text)


def answers_match(pred: str, gold: str) -> bool:
    """True when both answers have the same canonical form (``normalize_numeric_answer``)."""
    return normalize_numeric_answer(pred) == normalize_numeric_answer(gold)


def pass_at_k(n: int | torch.Tensor, c: int | torch.Tensor, k: int) -> torch.Tensor:
    """Unbiased pass@k estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), vectorised over questions.

    n: [B] samples drawn per question; c: [B] correct samples among them (ints broadcast); k: samples allowed.
    Returns float64 [B] (0-d for scalar inputs). The binomial ratio is evaluated as the product
    prod_{i=n-c+1}^{n} (1 - k / i), which never forms the huge binomials; questions with n - c < k score 1.
    """
    n_t = torch.as_tensor(n, dtype=torch.float64)
    c_t = torch.as_tensor(c, dtype=torch.float64)
    n_t, c_t = torch.broadcast_tensors(n_t, c_t)
    if n_t.numel() == 0:
        return torch.zeros_like(n_t)
    invalid = (c_t < 0) | (c_t > n_t)
    if invalid.any():
        at = tuple(int(j) for j in invalid.nonzero()[0])
        raise DataError(
            f"pass@k needs 0 <= correct <= samples per question; question at index {at} has "
            f"samples={int(n_t[at])}, correct={int(c_t[at])}"
        )
    min_n = int(n_t.min())
    if not 1 <= k <= min_n:
        raise ConfigError(
            f"pass@{k} needs 1 <= k <= samples per question (smallest is {min_n}); "
            "draw more samples per question or lower k"
        )
    # i runs over 1..max_n for every question; factors outside (n-c, n] are masked to 1.
    i = torch.arange(1, int(n_t.max()) + 1, dtype=torch.float64, device=n_t.device)  # [N]
    in_range = (i > (n_t - c_t).unsqueeze(-1)) & (i <= n_t.unsqueeze(-1))  # [..., N]
    factors = torch.where(in_range, 1.0 - k / i, torch.ones_like(i))
    estimate = 1.0 - factors.prod(dim=-1)
    # With n - c < k some factor has i <= k (zero or negative); C(n-c, k) = 0 there, so pass@k is exactly 1.
    return torch.where(n_t - c_t < k, torch.ones_like(estimate), estimate)


# ---------------------------------------------------------------------------------------------------------------
# torchmetrics accumulators
# ---------------------------------------------------------------------------------------------------------------


def _check_same_length(first_name: str, first: Sequence, second_name: str, second: Sequence) -> None:
    if len(first) != len(second):
        raise ValueError(f"{first_name} has {len(first)} items but {second_name} has {len(second)}; expected equal")


class _MeanOfScores(Metric):
    """Mean of a per-example score; ``score_sum`` and ``count`` are summed across processes."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    score_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # float64 so that batch-by-batch accumulation matches one big update to ~1e-15.
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, scores: Sequence[float]) -> None:
        self.score_sum += torch.tensor(math.fsum(scores), dtype=torch.float64, device=self.score_sum.device)
        self.count += len(scores)

    def compute(self) -> torch.Tensor:
        """Mean score over all examples seen; NaN before any example."""
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.score_sum.device)
        return self.score_sum / self.count


class _AnswerScoreMetric(_MeanOfScores):
    """Per-question score of a prediction against its gold answers, the best gold answer counting."""

    def _score(self, pred: str, gold: str) -> float:
        raise NotImplementedError

    def update(self, predictions: Sequence[str], gold_answers: Sequence[Sequence[str]]) -> None:
        """predictions: [B] strings; gold_answers: [B] lists of acceptable answers."""
        _check_same_length("predictions", predictions, "gold_answers", gold_answers)
        self._accumulate(
            [max(self._score(p, g) for g in _as_gold_list(golds)) for p, golds in zip(predictions, gold_answers)]
        )


class ExactMatch(_AnswerScoreMetric):
    """Mean SQuAD exact match."""

    def _score(self, pred: str, gold: str) -> float:
        return exact_match(pred, gold)


class TokenF1(_AnswerScoreMetric):
    """Mean SQuAD token F1."""

    def _score(self, pred: str, gold: str) -> float:
        return token_f1(pred, gold)


class HotpotQAF1(_AnswerScoreMetric):
    """Mean official HotpotQA answer F1 (``hotpotqa_f1``: yes/no/noanswer score all-or-nothing)."""

    def _score(self, pred: str, gold: str) -> float:
        return hotpotqa_f1(pred, gold)


class RougeL(_AnswerScoreMetric):
    """Mean ROUGE-L F-measure (beta = 1), best gold answer per question."""

    def _score(self, pred: str, gold: str) -> float:
        return rouge_l(pred, gold)


class _RetrievalAtK(_MeanOfScores):
    """Per-question retrieval score at cut-off k, averaged over questions (macro average)."""

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ConfigError(f"retrieval cut-off k={k} is invalid; expected an integer k >= 1")
        self.k = k

    def _score(self, retrieved_ids: Sequence[Hashable], supporting_ids: Collection[Hashable]) -> float:
        raise NotImplementedError

    def update(
        self, retrieved_ids: Sequence[Sequence[Hashable]], supporting_ids: Sequence[Collection[Hashable]]
    ) -> None:
        """retrieved_ids: [B] ranked id lists (best first); supporting_ids: [B] gold id collections (non-empty)."""
        _check_same_length("retrieved_ids", retrieved_ids, "supporting_ids", supporting_ids)
        self._accumulate([self._score(r, s) for r, s in zip(retrieved_ids, supporting_ids)])


class RecallAtK(_RetrievalAtK):
    """Mean Recall@k; see ``recall_at_k`` for fewer than k retrieved ids."""

    def _score(self, retrieved_ids: Sequence[Hashable], supporting_ids: Collection[Hashable]) -> float:
        return recall_at_k(retrieved_ids, supporting_ids, self.k)


class PrecisionAtK(_RetrievalAtK):
    """Mean Precision@k; the denominator is always k (see ``precision_at_k``)."""

    def _score(self, retrieved_ids: Sequence[Hashable], supporting_ids: Collection[Hashable]) -> float:
        return precision_at_k(retrieved_ids, supporting_ids, self.k)


class AnswerAccuracy(_MeanOfScores):
    """Fraction of predictions whose canonical answer equals the gold one (``answers_match``)."""

    def update(self, predictions: Sequence[str], gold_answers: Sequence[str]) -> None:
        """predictions: [B] strings; gold_answers: [B] single gold answer strings."""
        _check_same_length("predictions", predictions, "gold_answers", gold_answers)
        self._accumulate([float(answers_match(p, g)) for p, g in zip(predictions, gold_answers)])


class PassAtK(_MeanOfScores):
    """Mean unbiased pass@k over questions, each with n sampled answers of which c are correct."""

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ConfigError(f"pass@k cut-off k={k} is invalid; expected an integer k >= 1")
        self.k = k

    def update(self, num_samples: torch.Tensor | Sequence[int], num_correct: torch.Tensor | Sequence[int]) -> None:
        """num_samples: [B] samples drawn per question; num_correct: [B] correct ones among them."""
        estimates = pass_at_k(torch.as_tensor(num_samples), torch.as_tensor(num_correct), self.k).reshape(-1)
        self.score_sum += estimates.sum().to(self.score_sum.device)
        self.count += estimates.numel()


# ---------------------------------------------------------------------------------------------------------------
# The QA evaluation bundle
# ---------------------------------------------------------------------------------------------------------------


class QAMetrics(torch.nn.Module):
    """Every number of a QA table: EM, F1, ROUGE-L, Recall@k / Precision@k and mean generator input tokens.

    An ``nn.Module`` (not a ``MetricCollection``) because its metrics take different inputs per call and a
    collection's compute groups could merge EM and F1 whose states happen to agree on the first batch. As a
    submodule of a LightningModule it moves to the right device; each metric still syncs across processes.

    ``compute`` leaves out what was never updated: the no-retrieval baseline has no Recall@k row entry.

    ``hotpotqa_f1=True`` adds the official HotpotQA answer F1 (``HotpotQAF1``) as the entry "hotpotqa_f1", right
    after "f1", which stays the SQuAD token F1 whatever the dataset.
    """

    def __init__(self, ks: int | Sequence[int] = (5,), hotpotqa_f1: bool = False) -> None:
        super().__init__()
        self.ks = (ks,) if isinstance(ks, int) else tuple(ks)
        if not self.ks or len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"retrieval cut-offs ks={self.ks!r} are invalid; expected distinct integers >= 1")
        self.exact_match = ExactMatch()
        self.f1 = TokenF1()
        self.hotpotqa_f1 = HotpotQAF1() if hotpotqa_f1 else None
        self.rouge_l = RougeL()
        self.recall = torch.nn.ModuleDict({str(k): RecallAtK(k) for k in self.ks})
        self.precision = torch.nn.ModuleDict({str(k): PrecisionAtK(k) for k in self.ks})
        self.prompt_tokens = MeanMetric()
        self.prompt_tokens_no_system = MeanMetric()
        self.context_tokens = MeanMetric()

    def update(
        self,
        predictions: Sequence[str],
        gold_answers: Sequence[Sequence[str]],
        *,
        retrieved_ids: Sequence[Sequence[Hashable]] | None = None,
        supporting_ids: Sequence[Collection[Hashable]] | None = None,
        prompt_tokens: Sequence[int] | torch.Tensor | None = None,
        prompt_tokens_no_system: Sequence[int] | torch.Tensor | None = None,
        context_tokens: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        """One batch of B questions.

        predictions: [B]; gold_answers: [B] answer lists; retrieved_ids / supporting_ids: [B] ranked / gold ids
        (both or neither); *_tokens: [B] generator input tokens for the full prompt, the prompt without the
        system prompt, and the context (evidence or latent slots with their labels) only.
        """
        self.exact_match.update(predictions, gold_answers)
        self.f1.update(predictions, gold_answers)
        if self.hotpotqa_f1 is not None:
            self.hotpotqa_f1.update(predictions, gold_answers)
        self.rouge_l.update(predictions, gold_answers)
        if (retrieved_ids is None) != (supporting_ids is None):
            raise ValueError("retrieved_ids and supporting_ids must be given together")
        if retrieved_ids is not None and supporting_ids is not None:
            _check_same_length("predictions", predictions, "retrieved_ids", retrieved_ids)
            for k in self.ks:
                self.recall[str(k)].update(retrieved_ids, supporting_ids)
                self.precision[str(k)].update(retrieved_ids, supporting_ids)
        for name, counts in (
            ("prompt_tokens", prompt_tokens),
            ("prompt_tokens_no_system", prompt_tokens_no_system),
            ("context_tokens", context_tokens),
        ):
            if counts is not None:
                counts_t = torch.as_tensor(counts, dtype=torch.float32).reshape(-1)
                _check_same_length("predictions", predictions, name, counts_t)
                getattr(self, name).update(counts_t)

    def _named_metrics(self) -> list[tuple[str, Metric]]:
        named: list[tuple[str, Metric]] = [("exact_match", self.exact_match), ("f1", self.f1)]
        if self.hotpotqa_f1 is not None:
            named.append(("hotpotqa_f1", self.hotpotqa_f1))
        named.append(("rouge_l", self.rouge_l))
        named += [(f"recall@{k}", self.recall[str(k)]) for k in self.ks]
        named += [(f"precision@{k}", self.precision[str(k)]) for k in self.ks]
        named += [
            ("prompt_tokens", self.prompt_tokens),
            ("prompt_tokens_no_system", self.prompt_tokens_no_system),
            ("context_tokens", self.context_tokens),
        ]
        return named

    def compute(self) -> dict[str, float]:
        """Metric name -> value for every metric that received at least one update."""
        return {name: float(metric.compute()) for name, metric in self._named_metrics() if metric.update_count > 0}

    def reset(self) -> None:
        for _, metric in self._named_metrics():
            metric.reset()
