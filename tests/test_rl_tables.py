"""experiments/rl_tables.py: the curve summaries its tables report (steps to a reward, collapse, mean ± sd) and one
whole headroom table on a 2-layer GPT-2 (SFT start, GRPO run, evaluation, table and plot), reused on a second call."""

from __future__ import annotations

import json

import pytest

from latentlab.errors import ConfigError
from tests.conftest import REPO
from tests.test_reasoning_task import _experiment_script
from tests.test_rl_module import DATA, TINY_COT, TINY_RL

rl_tables = _experiment_script("rl_tables")


def test_batches_to_target_uses_the_moving_mean_and_says_never():
    rewards = [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    # 5-batch means: 0, .5, .33, .5, .6, .8, .8 -> first >= 0.6 at batch 5
    assert rl_tables.batches_to_target(rewards, 0.6) == 5
    assert rl_tables.batches_to_target(rewards, 0.9) is None
    assert rl_tables.batches_to_target([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.9) is None  # one lucky first batch is not it
    assert rl_tables.moving_mean([1.0, 3.0], window=5) == [1.0, 2.0]


def test_collapse_is_a_pass1_drop_or_a_reward_that_halves():
    steady = [0.5] * 10
    assert not rl_tables.collapsed(0.50, 0.52, steady)  # within 0.05 of the start
    assert rl_tables.collapsed(0.40, 0.52, steady)  # 0.12 below the start
    assert rl_tables.collapsed(0.60, 0.52, [0.8] * 10 + [0.1] * 10)  # the last 5-batch mean is below half the best


def test_mean_sd_format():
    assert rl_tables.fmt([0.5, 0.7]) == "0.600 ± 0.141"
    assert rl_tables.fmt([0.5]) == "0.500 ± 0.000"


def test_unknown_row_and_bad_arguments_are_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown"):
        rl_tables.run_tables(["losses"], [0], ["nope"], None, str(tmp_path), 0.5, False)
    assert rl_tables.main(["--seeds", "1", "1", "--results-dir", str(tmp_path)]) == 2
    assert "distinct" in capsys.readouterr().err


def test_every_command_line_option_reaches_run_tables(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(rl_tables, "run_tables", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs))
    argv = ["--tables", "losses", "--seeds", "3", "--budget-steps", "40", "--precision-steps", "7", "--jobs", "2"]
    assert rl_tables.main([*argv, "--evals-dir", str(tmp_path), "--reward-target", "0.6", "--overwrite"]) == 0
    assert seen["args"][:2] == (["losses"], [3]) and seen["args"][5:] == (0.6, True)
    assert seen["kwargs"] == {
        "budget_steps": 40,
        "workers": 2,
        "evals_dir": str(tmp_path),
        "precision_steps": 7,
    }
    for flag in ("--budget-steps", "--precision-steps", "--jobs"):
        assert rl_tables.main([flag, "0"]) == 2
        assert flag in capsys.readouterr().err


def test_headroom_table_end_to_end_and_reused(tmp_path, monkeypatch):
    from latentlab.configs import load_config
    from latentlab.training import fit

    sft = fit(load_config(TINY_COT, {**DATA, "output_dir": str(tmp_path / "ck"), "trainer.max_steps": 2}), "sft")
    rl = tmp_path / "grpo.yaml"
    rl.write_text(
        f"base: {TINY_RL}\nname: grpo_test\noutput_dir: {tmp_path / 'ck'}\n"
        "advantage: {group_size: 2}\nrl: {prompts_per_step: 2, minibatch_size: 2}\n"
        "trainer: {max_steps: 2, val_check_interval: 1, checkpoint_every_n_steps: 1}\n"
        "sampling: {num_samples: 8}\n",
        encoding="utf-8",
    )
    overrides = dict(DATA)

    def row_config(row, seed, init_dir, **extra):
        return load_config(rl, {**overrides, "seed": seed, "reasoning.init_from": str(init_dir), **extra})

    monkeypatch.setattr(rl_tables, "row_config", row_config)
    monkeypatch.setattr(rl_tables, "ROWS", {"grpo": rl_tables.Row("grpo", "GRPO", str(rl), "clip_fraction")})
    out = tmp_path / "results"
    evals = str(tmp_path / "evals")
    tables = rl_tables.run_tables(["headroom"], [0, 1], None, str(sft.run_dir), str(out), 0.5, False, evals_dir=evals)
    rows = tables["headroom"]
    assert [r["method"] for r in rows] == ["SFT start (CoT, 2 steps)", "GRPO"]
    assert len(rows[1]["gain_per_seed"].split(" / ")) == 2
    assert (out / "rl_headroom.md").is_file() and (out / "rl_headroom.png").stat().st_size > 1000
    assert (tmp_path / "ck" / "grpo_test" / "seed1" / "last.ckpt").is_file()
    settings = json.loads((out / "rl_headroom.settings.json").read_text())
    assert settings["seeds"] == [0, 1]
    with pytest.raises(Exception, match="already holds results"):  # a written table is not overwritten
        rl_tables.run_tables(["headroom"], [0, 1], None, str(sft.run_dir), str(out), 0.5, False, evals_dir=evals)
    again = rl_tables.run_tables(["headroom"], [0, 1], None, str(sft.run_dir), str(out), 0.5, True, evals_dir=evals)
    assert again["headroom"] == rows  # the runs and evaluations were reused: the same numbers


def _fake_seed(seed: int, pass1: float, reward: float) -> dict:
    curve = [
        {"step": float(i), "train/reward_mean": reward, "train/clip_fraction": 0.01, "train/skipped_steps": 0.0}
        for i in range(10)
    ]
    curve += [
        {"step": float(i), "train/mismatch_prob_diff": 1e-7, "train/mismatch_log_ratio_std": 1e-6} for i in (0, 9)
    ]
    curve.append({"step": 9.0, "val/accuracy": 0.9})
    return {
        "seed": seed,
        "eval": {"pass@1": pass1, "pass@8": 0.98},
        "curve": curve,
        "fit_s": 60.0,
        "to_target": rl_tables.batches_to_target([reward] * 10, 0.8),
        "collapsed": rl_tables.collapsed(pass1, 0.7, [reward] * 10),
        "diagnostic": 0.01,
    }


def test_losses_and_precision_tables_from_finished_runs(tmp_path):
    results = [
        {"row": rl_tables.ROWS["grpo"], "seeds": [_fake_seed(0, 0.80, 0.85), _fake_seed(1, 0.82, 0.85)]},
        {"row": rl_tables.ROWS["drpo"], "seeds": [_fake_seed(0, 0.50, 0.30), _fake_seed(1, 0.60, 0.30)]},
    ]
    rows = rl_tables.losses_table(results, {0: 0.7, 1: 0.7}, tmp_path / "losses", "cmd", 200)
    assert [r["method"] for r in rows] == ["GRPO", "DRPO"]
    assert rows[0]["gain_pass@1"] == "0.110 ± 0.014" and rows[0]["batches_to_target"] == "5 / 5"
    assert rows[1]["batches_to_target"] == "never / never" and rows[1]["collapsed"] == "2/2"
    assert rows[1]["clip_or_mask"] == "beyond_delta 0.0100"
    measured = {
        label: {
            "mu": [0.5, 0.9],
            "pi": [0.5, 0.9],
            "log_ratio": [0.0, 1e-3],
            "mean_abs_prob_diff": 1e-4,
            "max_abs_prob_diff": 2e-4,
            "log_ratio_std": 1e-3,
        }
        for label in ("fp32 rollout + train", "bf16 rollout + train")
    }
    precision = [
        {"row": rl_tables.ROWS["grpo"], "seeds": results[0]["seeds"]},
        {"row": rl_tables.ROWS["bf16"], "seeds": results[1]["seeds"]},
    ]
    rows = rl_tables.precision_table(precision, measured, {0: 0.7, 1: 0.7}, tmp_path / "precision", "cmd", 60)
    assert [r["method"] for r in rows] == ["fp32 rollout + train", "bf16 rollout + train"]
    assert rows[0]["train_mean_abs_prob_diff"] == "1.00e-07" and rows[0]["skipped_steps"] == "0 / 0"
    for stem in ("losses", "precision"):
        assert (tmp_path / f"{stem}.md").is_file() and (tmp_path / f"{stem}.png").stat().st_size > 1000


def test_measure_mismatch_scores_every_prompt_under_the_rows_precision(tmp_path, monkeypatch):
    from latentlab.configs import load_config
    from latentlab.training import fit

    sft = fit(load_config(TINY_COT, {**DATA, "output_dir": str(tmp_path / "ck"), "trainer.max_steps": 1}), "sft")
    monkeypatch.setattr(
        rl_tables,
        "row_config",
        lambda row, seed, init_dir, **extra: load_config(
            REPO / row.config, {**DATA, "seed": seed, "reasoning.init_from": str(init_dir), **extra}
        ),
    )
    fp32 = rl_tables.measure_mismatch(sft.run_dir, rl_tables.ROWS["grpo"], prompts=4, group=2)
    bf16 = rl_tables.measure_mismatch(sft.run_dir, rl_tables.ROWS["bf16"], prompts=4, group=2)
    assert len(fp32["log_ratio"]) == len(bf16["log_ratio"]) == 8  # 4 prompts x 2 samples, all of them
    assert len(fp32["mu"]) == len(fp32["pi"]) > 0
    assert fp32["mean_abs_prob_diff"] < 1e-4 and 0 <= bf16["max_abs_prob_diff"] <= 1  # (the 2-layer model's cached
    # and uncached bf16 paths can agree exactly; the tiny twin's 4-layer reasoner shows the gap in the table)
