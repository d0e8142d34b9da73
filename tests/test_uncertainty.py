"""Bootstrap intervals of a mean and of a paired difference, and the interval, differences and per-type tables that
every memory evaluation writes (issue 17)."""

import csv
import json

import numpy as np
import pytest

from latentlab.configs import load_config
from latentlab.data.schema import Evidence, QAExample, write_jsonl
from latentlab.errors import ConfigError
from latentlab.eval.metrics import exact_match, token_f1
from latentlab.eval.uncertainty import (
    bootstrap_mean,
    difference_rows,
    group_rows,
    interval_columns,
    paired_bootstrap_difference,
)
from latentlab.memory.evaluate import evaluate, question_groups
from tests.conftest import REPO, TINY_LLAMA

TINY_YAML = REPO / "paper_configs/tiny/latent_memory_text.yaml"


# ----------------------------------------------------------------- the pure functions


@pytest.mark.parametrize("value", [0.0, 0.1, 1 / 3, 1.0])
def test_equal_scores_give_a_zero_width_interval_at_that_value(value):
    assert tuple(bootstrap_mean([value] * 7, seed=0)) == (value, value, value)


def test_the_paired_difference_of_identical_methods_is_exactly_zero():
    scores = np.random.default_rng(1).random(40)
    assert tuple(paired_bootstrap_difference(scores, scores.copy(), seed=5)) == (0.0, 0.0, 0.0)


def test_the_interval_contains_the_mean_and_lies_within_the_scores():
    scores = [0.0, 0.0, 1.0, 0.5, 1.0, 0.25, 0.0, 1.0, 0.75, 0.0]  # mean 0.45
    mean, low, high = bootstrap_mean(scores, seed=0)
    assert mean == pytest.approx(0.45, abs=1e-12, rel=0)
    assert 0.0 <= low < mean < high <= 1.0
    # the standard error is 0.129: a 95% interval is about 2 x 1.96 x 0.129 wide, give or take the resampling
    assert high - low == pytest.approx(2 * 1.96 * np.std(scores) / np.sqrt(10), abs=0.1, rel=0)


def test_the_paired_interval_is_that_of_the_per_question_differences():
    a = np.array([1.0, 1.0, 0.0, 1.0, 0.5, 1.0])
    b = np.array([0.0, 1.0, 0.0, 0.0, 0.5, 1.0])
    diff, low, high = paired_bootstrap_difference(a, b, seed=3)
    assert diff == pytest.approx(2 / 6, abs=1e-12, rel=0)
    assert (diff, low, high) == bootstrap_mean(a - b, seed=3)
    assert 0.0 <= low <= diff <= high <= 1.0  # the differences are 0 or 1: no resample can leave [0, 1]


def test_a_seed_gives_the_same_interval_and_another_seed_another():
    scores = np.random.default_rng(0).random(30)
    assert bootstrap_mean(scores, seed=11) == bootstrap_mean(scores, seed=11)
    assert bootstrap_mean(scores, seed=11) != bootstrap_mean(scores, seed=12)
    other = np.random.default_rng(1).random(30)
    assert paired_bootstrap_difference(scores, other, 2) == paired_bootstrap_difference(scores, other, 2)
    assert len({bootstrap_mean(scores, seed=11, n_resamples=n).low for n in (10, 100, 1000)}) == 3


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="non-empty 1-d"):
        bootstrap_mean([], seed=0)
    with pytest.raises(ValueError, match="NaN or an infinite score at question 1"):
        bootstrap_mean([0.5, float("nan")], seed=0)
    with pytest.raises(ValueError, match="scores_a has 2, scores_b has 3"):
        paired_bootstrap_difference([0.0, 1.0], [0.0, 1.0, 1.0], seed=0)
    with pytest.raises(ValueError, match="n_resamples must be an integer >= 1"):
        bootstrap_mean([0.5], seed=0, n_resamples=0)


def test_table_rows_pair_methods_with_the_baselines_that_ran_and_split_by_group():
    scores = {
        "latent": {"f1": np.array([1.0, 0.0, 1.0, 1.0])},
        "bm25": {"f1": np.array([0.0, 0.0, 1.0, 1.0])},
    }
    assert interval_columns({"f1": [0.5, 0.5]}, seed=0) == {"f1_low": 0.5, "f1_high": 0.5}
    rows = difference_rows(scores, ["no_retrieval", "bm25"], ["f1"], seed=0)
    assert [(r["method"], r["baseline"], r["questions"]) for r in rows] == [("latent", "bm25", 4)]
    assert rows[0]["f1_diff"] == pytest.approx(0.25, abs=1e-12, rel=0)
    both = difference_rows({**scores, "no_retrieval": scores["bm25"]}, ["no_retrieval", "bm25"], ["f1"], seed=0)
    assert [(r["method"], r["baseline"]) for r in both] == [
        ("latent", "no_retrieval"),
        ("bm25", "no_retrieval"),
        ("latent", "bm25"),  # not also no_retrieval - bm25: the same pair, sign flipped
    ]
    by_group = group_rows(scores, {"bridge": [0, 1], "comparison": [2, 3], "empty": []}, ["f1"], seed=0)
    assert [(r["method"], r["group"], r["questions"], r["f1"]) for r in by_group] == [
        ("latent", "bridge", 2, 0.5),
        ("latent", "comparison", 2, 1.0),
        ("bm25", "bridge", 2, 0.0),
        ("bm25", "comparison", 2, 1.0),
    ]
    assert (by_group[3]["f1_low"], by_group[3]["f1_high"]) == (1.0, 1.0)


# ----------------------------------------------------------------- the memory evaluation


def _typed_questions() -> list[QAExample]:
    """Six small typed questions (two with a yes/no answer), each with two sentences of its own."""
    kinds = ["bridge", "bridge", "comparison", "comparison", "bridge", "comparison"]
    answers = ["Oslo", "a pilot", "yes", "no", "1901", "Bergen"]
    return [
        QAExample(
            id=f"q{i}",
            question=f"What about thing {i}?",
            answers=[answer],
            evidence=[Evidence(f"e{i}a", f"Thing {i} is {answer}.", title=f"T{i}"), Evidence(f"e{i}b", "Filler.")],
            supporting=[f"e{i}a"],
            question_type=kind,
        )
        for i, (kind, answer) in enumerate(zip(kinds, answers))
    ]


def _config(tmp_path, data: dict):
    overrides = {
        "compressor.backbone.model": TINY_LLAMA,
        "generator.backbone.model": TINY_LLAMA,
        "compressor.key_dim": 32,
        "generator.max_new_tokens": 3,
        "eval.checkpoint": None,
        "eval.retrieval": "pool",
        "eval.k": 1,
        "eval.batch_size": 6,
        "eval.output_dir": str(tmp_path / "results"),
        **data,
    }
    return load_config(TINY_YAML, overrides)


def test_question_groups_are_the_types_then_the_yes_no_answers():
    examples = _typed_questions()
    assert question_groups(examples) == {"bridge": [0, 1, 4], "comparison": [2, 3, 5], "yes/no answers": [2, 3]}
    untyped = [QAExample(ex.id, ex.question, ex.answers, ex.evidence, ex.supporting) for ex in examples]
    assert question_groups(untyped) == {}


def test_evaluate_writes_intervals_differences_and_the_per_type_table(tmp_path):
    data = write_jsonl(tmp_path / "typed.jsonl", _typed_questions())
    files = {"data.source": "jsonl", "data.train": str(data), "data.test": str(data), "eval.split": "test"}
    config = _config(tmp_path, {**files, "eval.bootstrap_resamples": 200})
    out = tmp_path / "eval"
    methods = ["no_retrieval", "bm25", "full_context"]
    result = evaluate(config, out_dir=out, methods=methods)

    # per-question scores are in the predictions, and their means are the table's numbers
    for row in result.rows:
        records = [json.loads(line) for line in (out / f"predictions.{row['method']}.jsonl").read_text().splitlines()]
        assert [r["exact_match"] for r in records] == [exact_match(r["answer"], r["gold"]) for r in records]
        assert [r["f1"] for r in records] == [token_f1(r["answer"], r["gold"]) for r in records]
        for metric in ("exact_match", "f1"):
            assert row[metric] == pytest.approx(np.mean([r[metric] for r in records]), abs=1e-9, rel=0)
            assert row[f"{metric}_low"] <= row[metric] + 1e-12 and row[metric] <= row[f"{metric}_high"] + 1e-12
    header = (out / "table.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["method", "exact_match", "exact_match_low", "exact_match_high", "f1", "f1_low", "f1_high"]

    # differences: each method against no_retrieval and bm25, never against itself nor a pair twice
    pairs = [(r["method"], r["baseline"]) for r in result.differences]
    assert pairs == [("bm25", "no_retrieval"), ("full_context", "no_retrieval"), ("full_context", "bm25")]
    by_method = {row["method"]: row for row in result.rows}
    for diff in result.differences:
        expected = by_method[diff["method"]]["f1"] - by_method[diff["baseline"]]["f1"]
        assert diff["f1_diff"] == pytest.approx(expected, abs=1e-9, rel=0)
        assert diff["f1_diff_low"] <= diff["f1_diff_high"] and diff["questions"] == 6
    with (out / "differences.csv").open(newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [(r["method"], r["baseline"]) for r in written] == pairs
    assert float(written[0]["exact_match_diff"]) == pytest.approx(result.differences[0]["exact_match_diff"])
    assert "paired" in (out / "differences.md").read_text()

    # by type: bridge, comparison and the yes/no answers, with counts, for every method
    groups = [(r["method"], r["group"], r["questions"]) for r in result.by_type]
    assert groups[:3] == [
        ("no_retrieval", "bridge", 3),
        ("no_retrieval", "comparison", 3),
        ("no_retrieval", "yes/no answers", 2),
    ]
    assert len(groups) == 9 and (out / "by_type.md").exists() and (out / "by_type.csv").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bootstrap"]["resamples"] == 200 and len(summary["differences"]) == 3

    # the same seed gives the same intervals
    again = evaluate(config, out_dir=tmp_path / "again", methods=methods)
    assert again.rows == [{**r, "seconds": a["seconds"]} for r, a in zip(result.rows, again.rows)]
    assert again.differences == result.differences and again.by_type == result.by_type


def test_untyped_questions_get_no_per_type_table_and_one_method_no_differences(tmp_path):
    config = _config(tmp_path, {"data.synthetic.num_people": 30, "eval.limit": 3, "eval.bootstrap_resamples": 50})
    result = evaluate(config, out_dir=tmp_path / "eval", methods=["no_retrieval"])
    assert result.differences == [] and result.by_type == []
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "predictions.no_retrieval.jsonl",
        "summary.json",
        "table.csv",
        "table.md",
        "table.png",
    ]
    assert {"exact_match_low", "f1_high"} <= set(result.rows[0])


@pytest.mark.parametrize("value", [0, -5, True])
def test_bootstrap_resamples_must_be_a_positive_integer(tmp_path, value):
    with pytest.raises(ConfigError, match="bootstrap_resamples"):
        _config(tmp_path, {"eval.bootstrap_resamples": value})


def test_latent_methods_are_also_compared_with_the_shuffled_control():
    from latentlab.memory.evaluate import differences_table

    scores = {
        "latent_compact": {"f1": [1.0, 0.0, 1.0, 1.0]},
        "latent_shuffled": {"f1": [1.0, 0.0, 0.0, 1.0]},
        "bm25": {"f1": [0.0, 0.0, 1.0, 0.0]},
        "no_retrieval": {"f1": [0.0, 0.0, 0.0, 0.0]},
    }
    rows = differences_table(scores, ["f1"], seed=0, n_resamples=100)
    pairs = [(r["method"], r["baseline"]) for r in rows]
    assert pairs[-1] == ("latent_compact", "latent_shuffled")  # the control: only latent methods, after the baselines
    assert ("bm25", "latent_shuffled") not in pairs
    assert rows[-1]["f1_diff"] == pytest.approx(0.25)
    without = {m: v for m, v in scores.items() if m != "latent_shuffled"}
    assert all(r["baseline"] != "latent_shuffled" for r in differences_table(without, ["f1"], seed=0, n_resamples=100))
