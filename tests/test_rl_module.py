"""latent_rl end to end on a 2-layer GPT-2: a 2-step CoT run, then GRPO from it through ``fit``; resume, records,
logged metrics, config errors, fp16 loss scaling that skips a non-finite step, DPPO's top-K divergences and DAPO's
dynamic sampling."""

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
from latentlab.rl import module as rl_module
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


def text_checksum(text: str) -> float:
    return float(sum(map(ord, text)) % 101)


def checksum(prompts, completions, **columns):
    """A reward that differs between almost any two completions: every group is informative."""
    return [text_checksum(text) for text in completions]


def first_question_constant(prompts, completions, **columns):
    """Constant on the first question of each call (one draw): that group is uninformative, the others are not."""
    return [0.0 if prompt == prompts[0] else text_checksum(text) for prompt, text in zip(prompts, completions)]


def constant(prompts, completions, **columns):
    """No group is informative."""
    return [1.0] * len(completions)


TEST_REWARDS = {
    "test_distinct": distinct_characters,
    "test_checksum": checksum,
    "test_first_constant": first_question_constant,
    "test_constant": constant,
}


@pytest.fixture(autouse=True)
def test_reward():
    for name, fn in TEST_REWARDS.items():
        REWARDS.register(name, fn)
    try:
        yield
    finally:
        for name in TEST_REWARDS:
            del REWARDS._items[name]


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
    assert rows[0]["method"] == "CoT + RL (ppo_clip, grpo)"  # the table says what trained it, not just "CoT"


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
        ({"policy_loss.topk_logprobs": 0}, "policy_loss.topk_logprobs"),
        ({"policy_loss.topk_logprobs": 5}, "policy_loss.topk_logprobs"),  # ppo_clip does not read it: not ignored
        ({"advantage.max_draws": 0}, "advantage.max_draws"),
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


def test_dppo_topk_divergence_gets_k_wide_log_probs_and_survives_a_top_k_filter(tmp_path, cot_run, monkeypatch):
    """policy_loss sees mu's and pi's top-K log-probs [rows, T, K]; with sampling.top_k 3 < K mu's list holds -inf."""
    seen = []
    original = rl_module.policy_loss

    def spy(*args, **kwargs):
        seen.append({key: kwargs[key] for key in ("mu_topk_logp", "pi_topk_logp")})
        return original(*args, **kwargs)

    monkeypatch.setattr(rl_module, "policy_loss", spy)
    extra = {
        "policy_loss.name": "dppo",
        "policy_loss.divergence": "topk_kl",
        "policy_loss.topk_logprobs": 5,
        "sampling.top_k": 3,
    }
    result = fit(load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **extra)), run_name="topk")
    assert result.metrics["global_step"] == 2 and len(seen) == 2
    for tensors in seen:
        mu_topk, pi_topk = tensors["mu_topk_logp"], tensors["pi_topk_logp"]
        assert mu_topk.shape == pi_topk.shape == (8, 8, 5)  # minibatch 8 rows, T = max_new_tokens 8, K 5
        assert torch.isinf(mu_topk[..., 3:]).any() and torch.isfinite(pi_topk).all() and not pi_topk.requires_grad
    for name in ("train/mask_fraction", "train/divergence_mean", "train/loss"):
        values = logged_values(result.run_dir, name)
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name


def test_other_losses_record_no_top_k(tmp_path, cot_run):
    config = load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **{"policy_loss.divergence": "topk_kl"}))
    assert build_task(config).module.topk_logprobs == 0  # ppo_clip: the divergence key is not read


def completions_by_step(run: Path) -> dict[int, list[dict]]:
    steps: dict[int, list[dict]] = {}
    for line in (run / "completions.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["rollout_step"], []).append(record)
    return steps


def test_dynamic_sampling_keeps_prompts_per_step_informative_groups(tmp_path, cot_run):
    extra = {
        "advantage.dynamic_sampling": True,
        "advantage.max_draws": 4,
        "reward.weights": {"test_first_constant": 1.0},  # one of the 2 groups of every draw is uninformative
    }
    result = fit(load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **extra)), run_name="ds")
    run = result.run_dir
    assert result.metrics["global_step"] == 2  # 2 kept groups x 4 = 8 rows = one minibatch: one step a batch
    assert logged_values(run, "train/ds_draws") == [2.0, 2.0]  # 1 informative group a draw: 2 draws fill 2
    assert logged_values(run, "train/ds_groups_kept") == [2.0, 2.0]
    assert logged_values(run, "train/ds_informative_fraction") == [0.5, 0.5]
    steps = completions_by_step(run)
    assert sorted(steps) == [0, 1]
    for records in steps.values():
        assert len(records) == 2 * 4
        for prompt in (0, 1):
            group = [r for r in records if r["prompt"] == prompt]
            assert len(group) == 4 and len({r["reward"] for r in group}) > 1  # informative
            assert len({r["question"] for r in group}) == 1
            # text, reward and question stayed aligned through the draws' concatenation and selection
            assert all(r["reward"] == text_checksum(r["completion"]) for r in group)
        assert len({r["question"] for r in records}) == 2  # the kept groups come from different draws


def test_dynamic_sampling_skips_a_batch_with_no_informative_group(tmp_path, cot_run):
    extra = {
        "advantage.dynamic_sampling": True,
        "advantage.max_draws": 1,
        "reward.weights": {"test_constant": 1.0},
        "trainer.max_steps": -1,
        "trainer.max_epochs": 1,  # 8 questions / 2 a batch: 4 rollout batches, none with an informative group
    }
    result = fit(load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **extra)), run_name="empty")
    run = result.run_dir
    assert result.metrics["global_step"] == 0
    assert logged_values(run, "train/ds_groups_kept") == [0.0] * 4
    assert logged_values(run, "train/ds_draws") == [1.0] * 4
    assert logged_values(run, "train/steps_taken") == [0.0] * 4
    assert not (run / "completions.jsonl").exists()


def test_dynamic_sampling_trains_on_a_short_batch_when_the_draws_run_out(tmp_path, cot_run):
    extra = {
        "advantage.dynamic_sampling": True,
        "advantage.max_draws": 1,
        "reward.weights": {"test_first_constant": 1.0},  # 1 informative group of the 2 wanted
    }
    result = fit(load_config(TINY_RL, rl_overrides(tmp_path, cot_run, **extra)), run_name="short")
    run = result.run_dir
    assert result.metrics["global_step"] == 2  # the 4 rows of the one kept group are one (short) minibatch
    assert logged_values(run, "train/ds_groups_kept") == [1.0, 1.0]
    assert all(math.isfinite(v) for v in logged_values(run, "train/loss"))
    assert [len(records) for records in completions_by_step(run).values()] == [4, 4]


def test_dynamic_sampling_with_every_group_informative_is_the_plain_path(tmp_path, cot_run):
    """The first draw is the plain path's rollout (same seed, same prompts), so one draw that keeps every group
    trains exactly as dynamic sampling off does."""
    base = {"reward.weights": {"test_checksum": 1.0}}
    plain = fit(load_config(TINY_RL, rl_overrides(tmp_path / "off", cot_run, **base)), run_name="off").run_dir
    extra = {**base, "advantage.dynamic_sampling": True, "advantage.max_draws": 1}
    ds = fit(load_config(TINY_RL, rl_overrides(tmp_path / "on", cot_run, **extra)), run_name="on").run_dir
    assert logged_values(ds, "train/ds_groups_kept") == [2.0, 2.0]
    for name in ("train/loss", "train/grad_norm", "train/reward_mean", "train/kl_ref"):
        assert logged_values(ds, name) == logged_values(plain, name), name
    assert (ds / "completions.jsonl").read_text() == (plain / "completions.jsonl").read_text()


def test_a_short_batch_splits_into_minibatches_of_whole_groups(tmp_path, cot_run):
    module = build_task(load_config(TINY_RL, rl_overrides(tmp_path, cot_run))).module  # G 4, minibatch 8
    for rows, sizes in ((12, [8, 4]), (4, [4]), (8, [8])):
        batches = module._minibatches(rows)
        assert [len(b) for b in batches] == sizes
        for b in batches:
            groups = b.view(-1, 4)
            assert (groups == groups[:, :1] + torch.arange(4)).all() and (groups[:, 0] % 4 == 0).all()
        assert sorted(torch.cat(batches).tolist()) == list(range(rows))
