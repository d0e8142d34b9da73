"""latent_rl end to end on a 2-layer GPT-2: a 2-step CoT run, then GRPO from it through ``fit``; resume, records,
logged metrics, config errors, and fp16 loss scaling that skips a non-finite step."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from latentlab.configs import load_config
from latentlab.errors import ConfigError
from latentlab.rl.rewards import REWARDS
from latentlab.rl.task import build_task, load_policy
from latentlab.tasks import TASKS
from latentlab.training import fit
from tests.conftest import REPO

TINY_COT = REPO / "paper_configs/tiny/coconut_arithmetic_cot.yaml"
TINY_RL = REPO / "paper_configs/tiny/grpo_arithmetic.yaml"
TINY_REASONER = {"tiny": {"arch": "gpt2", "layers": 2, "hidden": 32, "heads": 2}}
DATA = {
    "reasoning.data.num_train": 8,
    "reasoning.data.num_val": 4,
    "reasoning.data.num_test": 4,
    "reasoning.data.batch_size": 4,
    "reasoning.reasoner": TINY_REASONER,
    "reasoning.val_generate_batches": 1,
    "sampling.max_new_tokens": 8,
    "trainer.progress_bar": False,
    "trainer.num_threads": 1,
    "eval.batch_size": 2,
}
LOGGED = {
    "train/reward_mean",
    "train/reward_std",
    "train/accuracy",
    "train/entropy_proxy",
    "train/kl_ref",
    "train/clip_fraction",
    "train/invalid_fraction",
    "train/mismatch_prob_diff",
    "train/mismatch_log_ratio_mean",
    "train/completion_length",
    "train/truncated_fraction",
    "train/skipped_steps",
    "train/loss_scale",
    "train/loss",
    "train/grad_norm",
}


def distinct_characters(prompts, completions, **columns):
    """A reward that varies within a group even for an untrained reasoner (its answers are never parsable)."""
    return [float(len(set(text))) for text in completions]


@pytest.fixture(autouse=True)
def test_reward():
    REWARDS.register("test_distinct", distinct_characters)
    try:
        yield
    finally:
        del REWARDS._items["test_distinct"]


@pytest.fixture(scope="module")
def cot_run(tmp_path_factory) -> Path:
    """A 2-step CoT SFT run: the init_from of every RL run here."""
    out = tmp_path_factory.mktemp("cot")
    overrides = {
        **DATA,
        "name": "cot",
        "reasoning.method": "cot",
        "trainer.max_steps": 2,
        "trainer.checkpoint_every_n_steps": 2,
        "output_dir": str(out),
    }
    return fit(load_config(TINY_COT, overrides), run_name="r").run_dir


def rl_overrides(tmp_path: Path, cot_run: Path, **extra) -> dict:
    return {
        **DATA,
        "reasoning.init_from": str(cot_run),
        "reasoning.data.batch_size": 2,
        "advantage.group_size": 4,
        "rl.prompts_per_step": 2,
        "rl.minibatch_size": 8,
        "reward.weights": {"test_distinct": 1.0},  # answer would be None (invalid) for every untrained completion
        "rl.reference": True,
        "rl.log_completions_every": 1,
        "policy_loss.kl_beta": 0.01,
        "trainer.max_steps": 2,
        "trainer.checkpoint_every_n_steps": 2,
        "trainer.val_check_interval": None,
        "trainer.limit_val_batches": 1,
        "output_dir": str(tmp_path / "runs"),
        **extra,
    }


def metrics_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "logs" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def logged_values(run_dir: Path, name: str) -> list[float]:
    return [float(row[name]) for row in metrics_rows(run_dir) if row.get(name)]


def test_grpo_fits_from_a_cot_run_logs_and_resumes(tmp_path, cot_run):
    config = load_config(TINY_RL, rl_overrides(tmp_path, cot_run))
    result = fit(config, run_name="rl")
    run = result.run_dir
    assert result.metrics["global_step"] == 2  # 2 x 4 = 8 rows a batch, minibatch 8: one optimizer step a batch
    for name in ("config.yaml", "run.json", "metrics.json", "last.ckpt", "completions.jsonl"):
        assert (run / name).exists(), name
    columns = set(metrics_rows(run)[0])
    assert columns >= LOGGED, LOGGED - columns
    assert all(math.isfinite(v) for v in logged_values(run, "train/loss"))
    assert max(logged_values(run, "train/grad_norm")) > 0  # the test reward gives non-zero advantages
    assert logged_values(run, "train/skipped_steps")[-1] == 0.0
    assert logged_values(run, "train/loss_scale") == [1.0, 1.0]  # fp32: no scaling
    # Before any update pi_old is the policy that sampled: the fp32 recompute matches mu.
    assert abs(logged_values(run, "train/mismatch_log_ratio_mean")[0]) < 1e-3
    records = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert len(records) == 2 * 2 * 4 and {r["rollout_step"] for r in records} == {0, 1}  # 2 batches x 2 x G 4
    assert any(r["advantage"] != 0 for r in records)
    assert {"completion", "reward", "advantage", "valid", "gold"} <= set(records[0])
    assert "val/accuracy" in result.metrics["val_after"]
    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["latent_rl"]["rollout_steps"] == 2
    assert not any(k.startswith("reference.") for k in ckpt["state_dict"])  # rebuilt from init_from

    resumed = fit(load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **{"trainer.max_steps": 4})), resume=run)
    assert resumed.metrics["global_step"] == 4
    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["latent_rl"]["rollout_steps"] == 4
    assert len((run / "completions.jsonl").read_text().splitlines()) == 4 * 2 * 4  # appended, nothing lost

    # The policy loads as a LatentCoTModule, so latent_cot's evaluation scores the run.
    policy = load_policy(run)
    assert type(policy).__name__ == "LatentCoTModule"
    rows = TASKS.get("latent_rl").evaluate_run(config, run, command="test")
    assert rows and "accuracy" in rows[0]


def test_unknown_loss_and_reward_names_list_the_known_ones(tmp_path, cot_run):
    with pytest.raises(ConfigError, match=r"policy_loss\.name.*'nope'.*known: .*ppo_clip"):
        build_task(load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **{"policy_loss.name": "nope"})))
    with pytest.raises(ConfigError, match=r"aggregation.*known: .*dapo"):
        build_task(load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **{"policy_loss.aggregation": "x"})))
    with pytest.raises(ConfigError, match=r"reward\.weights.*'typo'.*known: .*answer"):
        build_task(load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **{"reward.weights": {"typo": 1.0}})))


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"rl.minibatch_size": 6}, "rl.minibatch_size"),  # not whole groups of 4
        ({"rl.minibatch_size": 12}, "rl.minibatch_size"),  # whole groups, but does not divide the 8 rows
        ({"reasoning.method": "coconut"}, "reasoning.method"),
        ({"rl.reference": False}, "rl.reference"),  # kl_beta 0.01 needs the reference
        ({"trainer.accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches"),
        ({"sampling.top_p": 0.0}, "sampling.top_p"),
        ({"sampling.top_k": -1}, "sampling.top_k"),
        ({"rl.train_precision": "fp8"}, "rl.train_precision"),
    ],
)
def test_bad_rl_configs_name_the_key(tmp_path, cot_run, extra, key):
    with pytest.raises(ConfigError, match=rf"key '{key}'"):
        load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **extra))


class PoisonFirstGradient(L.Callback):
    """Makes the first backward's gradient NaN (as an fp16 overflow would)."""

    def on_train_start(self, trainer, pl_module):
        fired = []
        param = next(pl_module.policy.parameters())

        def hook(grad):
            if fired:
                return grad
            fired.append(1)
            return grad * float("nan")

        param.register_hook(hook)


def test_fp16_training_skips_a_non_finite_step_and_counts_it(tmp_path, cot_run):
    extra = {"rl.train_precision": "fp16", "rl.loss_scale_init": 1024.0, "trainer.max_steps": 2}
    config = load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **extra))
    result = fit(config, run_name="fp16", callbacks=[PoisonFirstGradient()])
    assert result.metrics["global_step"] == 2  # the skipped step did not count: 3 rollout batches for 2 steps
    assert logged_values(result.run_dir, "train/skipped_steps") == [1.0, 1.0, 1.0]
    assert logged_values(result.run_dir, "train/loss_scale") == [512.0, 512.0, 512.0]  # halved once
    ckpt = torch.load(result.run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["latent_rl"]["skipped_steps"] == 1 and ckpt["latent_rl"]["scaler"]["scale"] == 512.0
