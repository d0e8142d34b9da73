"""Metrics against hand-worked values: SQuAD EM/F1, ROUGE-L, Recall@k/Precision@k, answer matching and pass@k."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

from latentlab.errors import ConfigError, DataError
from latentlab.eval.metrics import (
    AnswerAccuracy,
    ExactMatch,
    HotpotQAF1,
    PassAtK,
    PrecisionAtK,
    QAMetrics,
    RecallAtK,
    RougeL,
    TokenF1,
    answers_match,
    exact_match,
    hotpotqa_f1,
    lcs_length,
    normalize_answer,
    normalize_numeric_answer,
    pass_at_k,
    precision_at_k,
    recall_at_k,
    rouge_l,
    token_f1,
)

ATOL = 1e-6


def close(actual: float | torch.Tensor, expected: float) -> bool:
    return math.isclose(float(actual), expected, rel_tol=0.0, abs_tol=ATOL)


# --- SQuAD normalisation, EM and F1 -----------------------------------------------------------------------------


def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Quick, brown-fox's  AN  apple. ") == "quick brownfoxs apple"
    # Articles are whole words only.
    assert normalize_answer("Theory and anthem") == "theory and anthem"


def test_exact_match_articles_punctuation_and_golds():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("paris", ["London", "Paris."]) == 1.0
    assert exact_match("paris", "Paris") == 1.0  # a bare string is one gold answer, not its characters


def test_token_f1_partial_overlap():
    # pred -> [big, red, dog], gold -> [red, dog]: overlap 2, P = 2/3, R = 1, F1 = 2 * (2/3) / (5/3) = 4/5.
    assert close(token_f1("the big red dog", ["a red dog"]), 0.8)


def test_token_f1_max_over_golds():
    # gold 1 shares nothing; gold 2: pred [red, dog] vs [big, red, dog]: P = 1, R = 2/3, F1 = 0.8.
    assert close(token_f1("red dog", ["blue cat", "big red dog"]), 0.8)


def test_token_f1_counts_repeated_tokens_once_per_match():
    # pred -> [cat, cat, cat], gold [cat]: multiset overlap 1, P = 1/3, R = 1, F1 = (2/3) / (4/3) = 0.5.
    assert close(token_f1("the the cat cat cat", ["cat"]), 0.5)


def test_token_f1_empty_sides():
    assert token_f1("", [""]) == 1.0
    assert token_f1("the", ["a"]) == 1.0  # both normalise to nothing
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("x", [""]) == 0.0
    with pytest.raises(DataError, match="no gold answers"):
        token_f1("x", [])


# --- the official HotpotQA answer F1 ----------------------------------------------------------------------------


def test_hotpotqa_f1_yes_no_are_all_or_nothing():
    assert hotpotqa_f1("yes", "no") == 0.0
    assert hotpotqa_f1("yes", "yes") == 1.0
    assert hotpotqa_f1("No.", "no") == 1.0  # compared after normalisation
    # pred "no" is special and differs from "no way": 0, though SQuAD F1 gives P = 1, R = 1/2, F1 = 2/3.
    assert hotpotqa_f1("no", "no way") == 0.0
    assert close(token_f1("no", "no way"), 2 / 3)
    # The rule looks at the gold too: gold "yes", pred "yes indeed" (SQuAD: P = 1/2, R = 1, F1 = 2/3).
    assert hotpotqa_f1("yes indeed", "yes") == 0.0
    assert close(token_f1("yes indeed", "yes"), 2 / 3)
    assert hotpotqa_f1("noanswer", "no answer") == 0.0
    assert close(token_f1("noanswer", "no answer"), 0.0)


def test_hotpotqa_f1_is_squad_f1_elsewhere():
    # pred -> [cat, sat], gold -> [cat, sat, down]: overlap 2, P = 1, R = 2/3, F1 = 2 * (2/3) / (5/3) = 0.8.
    assert close(hotpotqa_f1("the cat sat", "cat sat down"), 0.8)
    assert close(token_f1("the cat sat", "cat sat down"), 0.8)
    # pred -> [big, red, dog], gold -> [red, dog]: F1 = 4/5; "yes" inside a longer answer is not special.
    assert close(hotpotqa_f1("the big red dog", ["a red dog"]), 0.8)
    assert close(hotpotqa_f1("yes we can", "we can"), 0.8)
    # Best gold counts: "no" against ["no way", "no"] is 1 (exact), against ["nope", "no way"] is 0.
    assert hotpotqa_f1("no", ["no way", "no"]) == 1.0
    assert hotpotqa_f1("no", ["nope", "no way"]) == 0.0
    assert close(hotpotqa_f1("red dog", ["blue cat", "big red dog"]), 0.8)


def test_hotpotqa_f1_has_no_empty_answer_rule():
    # The official script returns 0 whenever no token is shared, so both-empty scores 0 (SQuAD 2.0 rule: 1).
    assert hotpotqa_f1("", "") == 0.0 and token_f1("", "") == 1.0
    assert hotpotqa_f1("the", "a") == 0.0
    assert hotpotqa_f1("", "x") == 0.0
    with pytest.raises(DataError, match="no gold answers"):
        hotpotqa_f1("x", [])


def test_hotpotqa_f1_metric_and_bundle_option():
    predictions = ["yes", "no", "the cat sat", "Paris"]
    golds = [["no"], ["no way"], ["cat sat down"], ["Paris, France", "paris"]]
    metric = HotpotQAF1()
    metric.update(predictions[:1], golds[:1])
    metric.update(predictions[1:], golds[1:])
    assert close(metric.compute(), (0 + 0 + 0.8 + 1) / 4)
    bundle = QAMetrics(ks=3, hotpotqa_f1=True)
    bundle.update(predictions, golds)
    result = bundle.compute()
    assert list(result) == ["exact_match", "f1", "hotpotqa_f1", "rouge_l"]
    assert close(result["hotpotqa_f1"], (0 + 0 + 0.8 + 1) / 4)
    assert close(result["f1"], (0 + 2 / 3 + 0.8 + 1) / 4)  # "f1" stays the SQuAD token F1
    bundle.reset()
    assert bundle.compute() == {}
    plain = QAMetrics(ks=3)  # off by default: the existing tables keep their columns
    plain.update(predictions, golds)
    assert list(plain.compute()) == ["exact_match", "f1", "rouge_l"]


# --- ROUGE-L --------------------------------------------------------------------------------------------------


def test_lcs_length_classic_example():
    # CLRS: LCS("ABCBDAB", "BDCABA") has length 4 (e.g. "BCBA").
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert lcs_length([], ["a"]) == 0


def test_rouge_l_worked_example():
    # pred -> [cat, sat, on, mat, quietly] (5 tokens), ref -> [cat, was, on, mat] (4 tokens).
    # LCS = [cat, on, mat] = 3, so P = 3/5, R = 3/4,
    # F(beta=1) = 2 P R / (P + R) = (9/10) / (27/20) = 2/3;
    # F(beta=2) = 5 P R / (R + 4 P) = (9/4) / (3/4 + 12/5) = (9/4) / (63/20) = 5/7.
    pred, ref = "The cat sat on mat quietly", "a cat was on the mat"
    assert close(rouge_l(pred, ref), 2 / 3)
    assert close(rouge_l(pred, ref, beta=2.0), 5 / 7)


def test_rouge_l_is_order_sensitive_unlike_token_f1():
    # Same bag of tokens, LCS of [y, x, z] and [x, y, z] is 2: P = R = F = 2/3, while token F1 is 1.
    assert close(rouge_l("y x z", "x y z"), 2 / 3)
    assert token_f1("y x z", ["x y z"]) == 1.0
    assert rouge_l("", "") == 1.0
    assert rouge_l("x", "y") == 0.0


def test_rouge_l_metric_takes_best_gold():
    metric = RougeL()
    metric.update(["y x z"], [["p q", "x y z", "y x z"]])
    assert close(metric.compute(), 1.0)


# --- Retrieval ------------------------------------------------------------------------------------------------

# q1: top-2 {d3, d1} holds 1 of 2 gold; top-5 holds both. q2 returned only 2 ids, 1 of 3 gold among them.
RETRIEVED = [["d3", "d1", "d7", "d2", "d9"], ["e5", "e6"]]
SUPPORTING = [{"d1", "d2"}, {"e6", "e8", "e9"}]


def test_recall_and_precision_at_k_per_question():
    assert close(recall_at_k(RETRIEVED[0], SUPPORTING[0], 2), 1 / 2)
    assert close(precision_at_k(RETRIEVED[0], SUPPORTING[0], 2), 1 / 2)
    assert close(recall_at_k(RETRIEVED[0], SUPPORTING[0], 5), 1.0)
    assert close(precision_at_k(RETRIEVED[0], SUPPORTING[0], 5), 2 / 5)
    # Fewer than k retrieved: the missing ranks are misses, precision still divides by k.
    assert close(recall_at_k(RETRIEVED[1], SUPPORTING[1], 5), 1 / 3)
    assert close(precision_at_k(RETRIEVED[1], SUPPORTING[1], 5), 1 / 5)


def test_retrieval_duplicates_and_padding_are_not_double_counted():
    assert close(precision_at_k(["d1", "d1", "d2"], {"d1", "d2"}, 2), 1 / 2)
    assert close(recall_at_k([7, -1, -1], {7, 8}, 3), 1 / 2)


def test_retrieval_metrics_average_per_question():
    # Recall@2 = (1/2 + 1/3) / 2 = 5/12, Precision@2 = (1/2 + 1/2) / 2 = 1/2,
    # Recall@5 = (1 + 1/3) / 2 = 2/3,   Precision@5 = (2/5 + 1/5) / 2 = 3/10.
    expected = {(RecallAtK, 2): 5 / 12, (PrecisionAtK, 2): 1 / 2, (RecallAtK, 5): 2 / 3, (PrecisionAtK, 5): 3 / 10}
    for (cls, k), value in expected.items():
        metric = cls(k)
        metric.update(RETRIEVED, SUPPORTING)
        assert close(metric.compute(), value), (cls.__name__, k)


def test_retrieval_errors():
    with pytest.raises(DataError, match="supporting"):
        recall_at_k(["d1"], set(), 1)
    with pytest.raises(ConfigError, match="k=0"):
        RecallAtK(0)
    with pytest.raises(ValueError, match="retrieved_ids has 2 items but supporting_ids has 1"):
        RecallAtK(2).update(RETRIEVED, SUPPORTING[:1])


# --- Reasoning answers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("1,000", "1000"), ("$5", "5"), ("5.0", "5"), ("5.50", "5.5"), ("-3", "-3.00"), (".5", "0.5"), ("7.", "7")],
)
def test_numeric_answers_match(pred, gold):
    assert answers_match(pred, gold)


def test_answers_mismatch_and_string_fallback():
    assert not answers_match("5", "6")
    assert not answers_match("5", "five")
    assert not answers_match("5.01", "5")
    assert answers_match("The Answer.", "answer")
    assert normalize_numeric_answer(" $1,234.500 ") == "1234.5"
    assert normalize_numeric_answer("-0.0") == "0"


def test_answer_accuracy_metric():
    metric = AnswerAccuracy()
    metric.update(["1,000", "$5", "4"], ["1000", "5", "5"])
    assert close(metric.compute(), 2 / 3)


# --- pass@k ---------------------------------------------------------------------------------------------------


def pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that contain a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in subset) for subset in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_for_small_n():
    for k in range(1, 7):
        cases = [(n, c) for n in range(k, 7) for c in range(n + 1)]
        n = torch.tensor([n for n, _ in cases])
        c = torch.tensor([c for _, c in cases])
        got = pass_at_k(n, c, k)  # one vectorised call per k
        assert got.shape == (len(cases),)
        expected = torch.tensor([pass_at_k_by_enumeration(ni, ci, k) for ni, ci in cases], dtype=torch.float64)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_pass_at_k_known_values():
    assert close(pass_at_k(10, 3, 1), 0.3)
    assert close(pass_at_k(5, 2, 2), 1 - 3 / 10)  # 1 - C(3, 2) / C(5, 2)
    assert close(pass_at_k(4, 3, 2), 1.0)  # n - c = 1 < k: every pair holds a correct sample
    assert close(pass_at_k(4, 0, 2), 0.0)


def test_pass_at_k_is_stable_for_large_n():
    # C(200, 100) ~ 9e58: the product form never builds it. Exact reference with fractions.
    n, c, k = 200, 3, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert close(pass_at_k(n, c, k), float(exact))


def test_pass_at_k_errors():
    with pytest.raises(ConfigError, match="pass@5"):
        pass_at_k(torch.tensor([4, 8]), torch.tensor([1, 1]), 5)
    with pytest.raises(DataError, match="index \\(1,\\)"):
        pass_at_k(torch.tensor([4, 4]), torch.tensor([1, 5]), 1)


def test_pass_at_k_metric():
    metric = PassAtK(k=1)
    metric.update([10, 10], [3, 5])
    metric.update(torch.tensor([4]), torch.tensor([4]))
    assert close(metric.compute(), (0.3 + 0.5 + 1.0) / 3)


# --- Accumulation across batches and processes ----------------------------------------------------------------

PREDICTIONS = ["The Eiffel Tower", "red dog", "y x z", "1912", "", "the cat sat on mat quietly"]
GOLD_ANSWERS = [
    ["eiffel tower"],
    ["blue cat", "big red dog"],
    ["x y z"],
    ["in 1912", "1912"],
    ["x"],
    ["a cat was on the mat"],
]


@pytest.mark.parametrize("metric_cls", [ExactMatch, TokenF1, RougeL])
def test_text_metrics_accumulate_like_one_update(metric_cls):
    one_call = metric_cls()
    one_call.update(PREDICTIONS, GOLD_ANSWERS)
    batched = metric_cls()
    for start, stop in [(0, 1), (1, 4), (4, 6)]:
        batched.update(PREDICTIONS[start:stop], GOLD_ANSWERS[start:stop])
    assert close(batched.compute(), float(one_call.compute()))


def test_text_metric_values():
    # EM: [1, 0, 0, 1, 0, 0]; F1: [1, 0.8, 1, 1, 0, 2/3]; ROUGE-L: [1, 0.8, 2/3, 1, 0, 2/3].
    # F1 of the last pair: pred [cat, sat, on, mat, quietly], gold [cat, was, on, mat]: overlap 3, P 3/5, R 3/4.
    f1_last = 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)
    expected = {
        ExactMatch: 2 / 6,
        TokenF1: (1 + 0.8 + 1 + 1 + 0 + f1_last) / 6,
        RougeL: (1 + 0.8 + 2 / 3 + 1 + 0 + 2 / 3) / 6,
    }
    for cls, value in expected.items():
        metric = cls()
        metric.update(PREDICTIONS, GOLD_ANSWERS)
        assert close(metric.compute(), value), cls.__name__


def test_metric_states_sum_across_processes():
    # What DDP does with dist_reduce_fx="sum": two ranks' states merged give the single-process value.
    rank0, rank1, single = TokenF1(), TokenF1(), TokenF1()
    rank0.update(PREDICTIONS[:2], GOLD_ANSWERS[:2])
    rank1.update(PREDICTIONS[2:], GOLD_ANSWERS[2:])
    single.update(PREDICTIONS, GOLD_ANSWERS)
    rank0.merge_state(rank1)
    assert close(rank0.compute(), float(single.compute()))
    assert all(single._reductions[name] is not None for name in ("score_sum", "count"))


def test_metric_reset_and_empty_compute():
    metric = ExactMatch()
    metric.update(["a"], [["a"]])
    metric.reset()
    metric.update(["a"], [["b"]])
    assert close(metric.compute(), 0.0)
    assert math.isnan(float(ExactMatch().compute()))


# --- QA bundle ------------------------------------------------------------------------------------------------


def test_qa_metrics_bundle():
    metrics = QAMetrics(ks=(2, 5))
    metrics.update(
        ["The Eiffel Tower", "red dog"],
        [["eiffel tower"], ["blue cat", "big red dog"]],
        retrieved_ids=RETRIEVED,
        supporting_ids=SUPPORTING,
        prompt_tokens=[100, 120],
        prompt_tokens_no_system=[80, 100],
        context_tokens=torch.tensor([45, 55]),
    )
    metrics.update(
        ["y x z"],
        [["x y z"]],
        retrieved_ids=[["f1"]],
        supporting_ids=[{"f1"}],
        prompt_tokens=[50],
        prompt_tokens_no_system=[30],
        context_tokens=[5],
    )
    result = metrics.compute()
    expected = {
        "exact_match": 1 / 3,
        "f1": (1 + 0.8 + 1) / 3,
        "rouge_l": (1 + 0.8 + 2 / 3) / 3,
        "recall@2": (1 / 2 + 1 / 3 + 1) / 3,
        "recall@5": (1 + 1 / 3 + 1) / 3,
        "precision@2": (1 / 2 + 1 / 2 + 1 / 2) / 3,
        "precision@5": (2 / 5 + 1 / 5 + 1 / 5) / 3,
        "prompt_tokens": 90.0,
        "prompt_tokens_no_system": 70.0,
        "context_tokens": 35.0,
    }
    assert list(result) == list(expected)
    for name, value in expected.items():
        assert close(result[name], value), name


def test_qa_metrics_leave_out_what_was_never_updated():
    metrics = QAMetrics()
    metrics.update(["paris"], [["Paris"]], prompt_tokens=[12])
    assert set(metrics.compute()) == {"exact_match", "f1", "rouge_l", "prompt_tokens"}
    metrics.reset()
    assert metrics.compute() == {}
    with pytest.raises(ValueError, match="together"):
        metrics.update(["x"], [["x"]], retrieved_ids=[["a"]])
    with pytest.raises(ValueError, match="context_tokens has 2"):
        metrics.update(["x"], [["x"]], context_tokens=[1, 2])
