"""Vectorised pass@k sampling of `evaluate_cot`: all n samples of a batch in one generation, question-major rows."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import latentlab.reasoning.evaluate as evaluate_mod
from latentlab.configs import load_config
from latentlab.eval.metrics import pass_at_k
from latentlab.reasoning.evaluate import evaluate_cot, load_run, sample_answers, score_samples
from latentlab.reasoning.module import GeneratedAnswers, noisy_thoughts
from latentlab.training import fit
from tests.test_reasoning_task import TINY_COT, tiny

N = 4
QUESTIONS = ["a=3, b=4, c=2. Compute (a+b)-c.", "a=1, b=2, c=5. Compute (a*b)+c."]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A two-step atp_latent run at its final stage (the fixture of test_reasoning_task's evaluation tests)."""
    tmp_path = tmp_path_factory.mktemp("passk")
    config = load_config(TINY_COT, tiny(tmp_path, "atp_latent", **{"reasoning.start_stage": 3}))
    return fit(config, run_name="r").run_dir


def eval_config(tmp_path: Path, **extra):
    overrides = {
        **tiny(tmp_path, "atp_latent"),
        "sampling.num_samples": N,
        "sampling.temperature": 1.0,
        "sampling.thought_noise": 0.5,
        "eval.pass_k": [1, 2, 4],
        **extra,
    }
    return load_config(TINY_COT, overrides)


def records_of(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]


def parity_match(pred: str, gold: str) -> bool:
    """Stands in for answers_match so that a barely trained model has a mix of right and wrong samples."""
    return len(pred) % 2 == 0


def test_vectorised_pass_at_k_equals_pass_at_k_of_the_records(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_mod, "answers_match", parity_match)
    result = evaluate_cot(eval_config(tmp_path), run_dir, out_dir=tmp_path / "eval")
    row, records = result.rows[0], records_of(tmp_path / "eval")
    assert len(records) == 4 and all(r["samples"] == N and len(r["sample_predictions"]) == N for r in records)
    # samples_correct counts the record's own samples (sample s at index s)
    hits = [r["samples_correct"] for r in records]
    assert hits == [sum(parity_match(p, r["gold"]) for p in r["sample_predictions"]) for r in records]
    assert 0 < sum(hits) < N * len(records), "expected a mix of right and wrong samples"
    for k in (1, 2, 4):
        by_hand = float(pass_at_k(torch.full((4,), N), torch.tensor(hits), k).mean())
        assert row[f"pass@{k}"] == pytest.approx(by_hand, abs=1e-12, rel=0), k
        binomial = sum(1 - math.comb(N - c, k) / math.comb(N, k) for c in hits) / len(hits)
        assert row[f"pass@{k}"] == pytest.approx(binomial, abs=1e-9, rel=0), k
    # pass@1 with n samples is the mean sample accuracy
    assert row["pass@1"] == pytest.approx(sum(hits) / (N * len(records)), abs=1e-12, rel=0)
    assert row["sample_accuracy"] == pytest.approx(row["pass@1"], abs=1e-12, rel=0)
    # reasoning tokens are averaged over every sample too (atp_latent: the 2 thoughts + text before the marker)
    tokens = [t for r in records for t in r["sample_reasoning_tokens"]]
    assert len(tokens) == N * len(records) and all(t >= 2 for t in tokens)
    assert row["sample_reasoning_tokens_mean"] == pytest.approx(sum(tokens) / len(tokens), abs=1e-12, rel=0)
    assert row["sample_generated_tokens_mean"] >= row["sample_reasoning_tokens_mean"]


def test_samples_of_one_question_are_distinct_draws(run_dir):
    module = load_run(run_dir)
    stage = module.config.reasoning.final_stage
    sampling = replace(module.config.sampling, temperature=1.0, thought_noise=0.0, max_new_tokens=8)
    n = 6
    answers = sample_answers(module, QUESTIONS, stage, sampling, n, torch.Generator().manual_seed(0))
    assert len(answers.texts) == n * len(QUESTIONS)
    for q in range(len(QUESTIONS)):
        texts = answers.texts[q * n : (q + 1) * n]
        assert len(set(texts)) > 1, f"question {q}: {n} copies of one draw"
    # atp_latent with cvae.inference: sample draws z per row too: the rows of one question get different thoughts
    module.cvae.config = replace(module.cvae.config, inference="sample")
    sampling = replace(sampling, temperature=0.0)
    z = sample_answers(module, QUESTIONS, stage, sampling, n, torch.Generator().manual_seed(0)).latents
    assert z.shape[0] == n * len(QUESTIONS)
    for q in range(len(QUESTIONS)):
        rows = z[q * n : (q + 1) * n].flatten(1)
        assert all(not torch.equal(rows[i], rows[j]) for i in range(n) for j in range(i)), q
    # at temperature 0 without noise (z the mean) every sample is the question's greedy answer, chunked or not
    module.cvae.config = replace(module.cvae.config, inference="mean")
    greedy = module.generate_answers(QUESTIONS, stage, max_new_tokens=8)
    for max_rows in (None, 5):
        sampled = sample_answers(module, QUESTIONS, stage, sampling, n, None, max_rows)
        assert sampled.texts == [t for t in greedy.texts for _ in range(n)], max_rows


def test_thought_noise_is_drawn_per_row():
    hidden = torch.randn(1, 16).expand(5, 16)
    noisy = noisy_thoughts(None, 0.5, torch.Generator().manual_seed(0))(0, hidden)
    assert all(not torch.equal(noisy[i], noisy[j]) for i in range(5) for j in range(i))
    again = noisy_thoughts(None, 0.5, torch.Generator().manual_seed(0))(0, hidden)
    assert torch.equal(noisy, again)


def test_a_fixed_seed_repeats_exactly_and_chunks_are_deterministic(run_dir, tmp_path):
    config = eval_config(tmp_path)
    first = evaluate_cot(config, run_dir, out_dir=tmp_path / "a")
    second = evaluate_cot(config, run_dir, out_dir=tmp_path / "b")
    drop = ("seconds",)
    assert {k: v for k, v in first.rows[0].items() if k not in drop} == {
        k: v for k, v in second.rows[0].items() if k not in drop
    }
    assert records_of(tmp_path / "a") == records_of(tmp_path / "b")
    # rows past sample_rows are generated in chunks (8 rows a batch in chunks of 3): same shape, repeatable
    chunked = [evaluate_cot(config, run_dir, out_dir=tmp_path / f"c{i}", sample_rows=3) for i in range(2)]
    assert records_of(tmp_path / "c0") == records_of(tmp_path / "c1")
    assert json.loads((tmp_path / "c0" / "summary.json").read_text())["sample_rows_per_call"] == 3
    assert all(len(r["sample_predictions"]) == N for r in records_of(tmp_path / "c0"))
    assert chunked[0].rows[0]["accuracy"] == first.rows[0]["accuracy"]  # the greedy answers do not change
    # another seed draws other samples
    other = evaluate_cot(eval_config(tmp_path, seed=config.seed + 1), run_dir, out_dir=tmp_path / "d")
    assert other.rows[0]["accuracy"] == first.rows[0]["accuracy"]
    a = [r["sample_predictions"] for r in records_of(tmp_path / "a")]
    assert a != [r["sample_predictions"] for r in records_of(tmp_path / "d")]


def test_greedy_evaluation_has_no_sample_fields(run_dir, tmp_path):
    config = load_config(TINY_COT, tiny(tmp_path, "atp_latent"))
    result = evaluate_cot(config, run_dir, out_dir=tmp_path / "g")
    row = result.rows[0]
    assert row["pass@1"] == row["accuracy"]
    assert not any(key.startswith("sample_") for key in row)
    assert all("sample_predictions" not in r and r["samples"] == 0 for r in records_of(tmp_path / "g"))


def test_score_samples_is_question_major():
    answers = GeneratedAnswers(
        texts=[""] * 6,
        predictions=["1", "2", "2", "3", "3", "4"],
        n_latent=[0] * 6,
        n_language=[0] * 6,
        n_reasoning_language=[0] * 6,
    )
    correct = score_samples(answers, ["2", "3"], 3)
    assert correct.tolist() == [[False, True, True], [True, True, False]]  # rows 0-2: question 0
    with pytest.raises(ValueError, match="6 sampled rows for 2 questions x 2 samples"):
        score_samples(answers, ["2", "3"], 2)


def test_top_k_one_samples_are_the_greedy_answers(run_dir, tmp_path):
    """sampling.top_k reaches the sampled evaluation: with k = 1 every sample is the greedy answer (thoughts noiseless),
    with the filter off at T = 1 some sample differs."""
    result = evaluate_cot(
        eval_config(tmp_path, **{"sampling.top_k": 1, "sampling.thought_noise": 0.0}), run_dir, out_dir=tmp_path / "k1"
    )
    records = records_of(tmp_path / "k1")
    assert all(p == r["prediction"] for r in records for p in r["sample_predictions"])
    assert result.rows[0]["pass@1"] == pytest.approx(result.rows[0]["accuracy"], abs=1e-12, rel=0)
    evaluate_cot(eval_config(tmp_path, **{"sampling.thought_noise": 0.0}), run_dir, out_dir=tmp_path / "off")
    assert any(p != r["prediction"] for r in records_of(tmp_path / "off") for p in r["sample_predictions"])
