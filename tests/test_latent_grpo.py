"""Latent-SFT and Latent-GRPO: the Gumbel thought policy's noise and log-density on hand-made tensors, invalid-sample
masking, correct-path first-token selection, latent rollouts recomputed exactly, and both tasks end to end through
``fit`` on a 2-layer GPT-2."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from latentlab.configs import load_config
from latentlab.configs.reasoning import GumbelThoughtsConfig
from latentlab.configs.rl import AdvantageConfig
from latentlab.errors import ConfigError
from latentlab.reasoning.curriculum import CurriculumConfig, build_layout
from latentlab.reasoning.latent_sft import (
    GumbelMixturePolicy,
    VocabMixtureThoughts,
    gumbel_log_density,
    mixture_thought,
    soft_token_log_density,
    step_label_loss,
    step_label_targets,
)
from latentlab.reasoning.thoughts import add_thought_tokens
from latentlab.rl.advantages import first_token_selection, group_advantages
from latentlab.rl.rewards import REWARDS
from latentlab.rl.rollout import latent_rollout, recompute_latent
from latentlab.rl.task import load_policy
from latentlab.training import fit
from tests.conftest import REPO
from tests.test_reasoning_task import TINY_CVAE
from tests.test_rl_module import DATA
from tests.test_thoughts import EXAMPLES, tiny_model, tiny_tokenizer

TINY_SFT = REPO / "paper_configs/tiny/latent_sft_arithmetic.yaml"
TINY_LATENT_GRPO = REPO / "paper_configs/tiny/latent_grpo_arithmetic.yaml"
TINY_REASONER = {"tiny": {"arch": "gpt2", "layers": 2, "hidden": 32, "heads": 2}}


def policy_setup(noise: str = "one_sided", topk: int = 4, top_p: float = 1.0):
    tokenizer = tiny_tokenizer()
    model = tiny_model("gpt2", len(tokenizer))
    tokens = add_thought_tokens(tokenizer, model)
    config = GumbelThoughtsConfig(noise=noise, top_p=top_p)
    return model, tokens, GumbelMixturePolicy(model, topk, tokens.eot_id, config)


# ---------------------------------------------------------------- the soft token's log-density


def test_spec_hand_case_density_and_gradient():
    """latent_rl_spec.md §6: K = 2, recovered noise [0.5, -0.2]."""
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    scores = torch.tensor([[-0.5, -2.2]])
    density = soft_token_log_density(scores - logp)
    assert gumbel_log_density(torch.tensor([0.5, -0.2])).tolist() == pytest.approx([-1.10653, -1.02140], abs=1e-5)
    assert float(density) == pytest.approx(-1.06397, abs=1e-5)
    (grad,) = torch.autograd.grad(density.sum(), logp)
    assert grad[0].tolist() == pytest.approx([0.19673, -0.11070], abs=1e-5)


def test_one_sided_noise_is_nonnegative_at_rollout_and_two_sided_is_not():
    model, _, one_sided = policy_setup("one_sided")
    _, _, two_sided = policy_setup("two_sided")
    hidden = torch.randn(64, model.config.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        draws = {
            "one": one_sided.draw(0, hidden, torch.Generator().manual_seed(1)),
            "two": two_sided.draw(0, hidden, torch.Generator().manual_seed(1)),
        }
        logp = one_sided.thoughts.logits(hidden).log_softmax(-1)
    d = {name: draw.sample["scores"] - logp.gather(-1, draw.sample["ids"]) for name, draw in draws.items()}
    assert bool((d["one"] >= -1e-6).all()) and float(d["one"].max()) <= 4.5 + 1e-5  # [-1.5, 3] shifted by 1.5
    # the same draws, unshifted: two-sided noise is the one-sided one less 1.5, so it can be negative
    assert torch.allclose(d["two"], d["one"] - 1.5, atol=1e-5)
    assert float(d["two"].min()) >= -1.5 - 1e-5
    # the shift is a constant on every score: the same candidates and the same mixture are fed
    assert torch.equal(draws["one"].sample["ids"], draws["two"].sample["ids"])
    assert torch.allclose(draws["one"].fed, draws["two"].fed, atol=1e-6)


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_gradient_wrt_each_candidate_has_the_sign_of_the_advantage(advantage):
    """One-sided noise: d >= 0, so d(A log pi)/d log p_i = A (1 - e^-d_i) / K has A's sign for every candidate."""
    model, _, policy = policy_setup("one_sided")
    hidden = torch.randn(8, model.config.n_embd, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        draw = policy.draw(0, hidden, torch.Generator().manual_seed(4))
    logits = policy.thoughts.logits(hidden).detach().requires_grad_(True)
    logp = logits.log_softmax(-1)
    d = draw.sample["scores"] - logp.gather(-1, draw.sample["ids"])
    objective = advantage * soft_token_log_density(d).sum()
    (grad,) = torch.autograd.grad(objective, logp)
    at_candidates = grad.gather(-1, draw.sample["ids"])
    moved = at_candidates.abs() > 1e-9  # a candidate that drew exactly the lower clamp (d = 0) gets no gradient
    assert bool(moved.any())
    assert bool((torch.sign(at_candidates[moved]) == math.copysign(1, advantage)).all())


def test_flip_keeps_value_and_sign_and_bounds_the_gradient():
    d_values = torch.tensor([[-2.0, 0.5]])
    logp = torch.zeros(1, 2, requires_grad=True)
    scores = d_values  # d = scores - logp at logp 0
    plain = soft_token_log_density(scores - logp)
    flipped = soft_token_log_density(scores - logp, flip=torch.tensor([True]))
    assert float(plain) == pytest.approx(float(flipped))
    (g_plain,) = torch.autograd.grad(plain.sum(), logp)
    (g_flip,) = torch.autograd.grad(soft_token_log_density(scores - logp, flip=torch.tensor([True])).sum(), logp)
    # d = -2: plain gradient (1 - e^2) / 2, flipped -(1 - e^-2) / 2; d = 0.5 is untouched
    assert g_plain[0, 0] == pytest.approx((1 - math.exp(2)) / 2)
    assert g_flip[0, 0] == pytest.approx(-(1 - math.exp(-2)) / 2)
    assert g_flip[0, 1] == pytest.approx(g_plain[0, 1])


def test_exit_feeds_the_unnoised_mixture_but_records_the_noisy_scores():
    """The exit decision and what would be fed there carry no noise; the record (and so the loss) keeps the noisy
    scores, so a correct chain's exit slot pushes its <eot> up (see GumbelMixturePolicy's docstring)."""
    model, tokens, policy = policy_setup("one_sided")
    direction = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(5))
    signs = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, -1.0])
    hidden = signs[:, None] * direction  # rows 0 and 1 point along the <eot> output row, the others against it
    with torch.no_grad():
        model.get_output_embeddings().weight[tokens.eot_id] = direction * 50
        draw = policy.draw(0, hidden, torch.Generator().manual_seed(6))
    stop = policy.stop_fn(0)
    assert stop[:2].all() and not stop[2:].any()
    logp = policy.thoughts.logits(hidden).log_softmax(-1)
    clean = logp.topk(policy.topk, dim=-1)
    unnoised = mixture_thought(policy.thoughts.embedding, clean.indices, clean.values)
    assert torch.allclose(draw.fed[:2], unnoised[:2], atol=1e-6)
    assert not torch.allclose(draw.fed[2:], unnoised[2:], atol=1e-4)  # the others are noisy mixtures
    d = draw.sample["scores"] - logp.gather(-1, draw.sample["ids"])
    assert bool((d >= -1e-6).all()) and bool((d[:2] > 0).any())  # the exit rows' record is noisy too
    recomputed = policy.log_prob(0, hidden, draw.fed, draw.sample)
    assert torch.allclose(recomputed, draw.logp, atol=1e-6)


def test_mixture_thought_is_the_weighted_embedding():
    embedding = torch.arange(12.0).view(4, 3)
    fed = mixture_thought(embedding, torch.tensor([[0, 2]]), torch.tensor([[0.0, math.log(3.0)]]))
    assert fed[0].tolist() == pytest.approx((0.25 * embedding[0] + 0.75 * embedding[2]).tolist())


def test_latent_sft_hooks_stop_where_eot_is_argmax():
    tokenizer = tiny_tokenizer()
    model = tiny_model("gpt2", len(tokenizer))
    tokens = add_thought_tokens(tokenizer, model)
    hooks = VocabMixtureThoughts(model, 3, tokens.eot_id)
    hidden = torch.randn(4, model.config.n_embd)
    with torch.no_grad():
        fed = hooks.thought_fn(0, hidden)
    assert fed.shape == hidden.shape
    assert torch.equal(hooks.stop_fn(0), hooks.logits(hidden).argmax(-1) == tokens.eot_id)
    with pytest.raises(ConfigError, match="topk"):
        VocabMixtureThoughts(model, 10_000, tokens.eot_id)


def test_noisy_training_thoughts_are_seeded_perturbed_and_differentiable():
    tokenizer = tiny_tokenizer()
    model = tiny_model("gpt2", len(tokenizer))
    tokens = add_thought_tokens(tokenizer, model)
    hooks = VocabMixtureThoughts(model, 3, tokens.eot_id)
    hidden = torch.randn(4, model.config.n_embd, requires_grad=True)
    config = GumbelThoughtsConfig(top_p=1.0)
    clean = hooks.thought_fn(0, hidden)
    clean_exits = hooks.stop_fn(0).clone()

    def noisy(seed: int) -> torch.Tensor:
        return hooks.noisy_thought_fn(config, torch.Generator().manual_seed(seed))(0, hidden)

    first = noisy(0)
    assert torch.equal(hooks.stop_fn(0), clean_exits)  # the exit reads the un-noised argmax
    assert torch.equal(first, noisy(0)) and not torch.allclose(first, noisy(1)) and not torch.allclose(first, clean)
    first.sum().backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0


def test_supervise_eot_labels_the_exit():
    tokenizer = tiny_tokenizer()
    model = tiny_model("gpt2", len(tokenizer))
    tokens = add_thought_tokens(tokenizer, model)
    from latentlab.reasoning.curriculum import LayoutVocab

    vocab = LayoutVocab.from_tokenizer(tokenizer, tokens.bot_id, tokens.thought_id, tokens.eot_id)
    on = build_layout(EXAMPLES[1], 2, CurriculumConfig(supervise_eot=True, pad_latent_to_max=False), vocab)
    off = build_layout(EXAMPLES[1], 2, CurriculumConfig(pad_latent_to_max=False), vocab)
    assert on.suffix_labels[0] == tokens.eot_id and off.suffix_labels[0] == -100
    assert on.suffix_labels[1:] == off.suffix_labels[1:]


def test_step_labels_cut_each_group_into_its_thoughts():
    step_ids = torch.tensor([[[5, 6, 7, 0], [8, 0, 0, 0]]])  # group 0: 3 tokens, group 1: 1 token
    ids, mask = step_label_targets(step_ids, torch.tensor([[3, 1]]), thoughts_per_group=2)
    assert ids.shape == (1, 4, 4)
    labels = [ids[0, s][mask[0, s]].tolist() for s in range(4)]
    assert labels == [[5, 6], [7], [8], []]  # the first chunk takes the extra token; an empty chunk has no label
    one, one_mask = step_label_targets(step_ids, torch.tensor([[3, 0]]), thoughts_per_group=1)
    assert [one[0, s][one_mask[0, s]].tolist() for s in range(2)] == [[5, 6, 7], []]
    with pytest.raises(ConfigError, match="thoughts_per_group"):
        step_label_targets(step_ids, torch.tensor([[3, 1]]), thoughts_per_group=0)


def test_step_label_loss_is_the_bag_cross_entropy_of_used_labelled_slots():
    logp = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]]))
    ids = torch.tensor([[[0, 1], [2, 0], [0, 0]]])
    mask = torch.tensor([[[True, True], [True, False], [False, False]]])  # slot 2 has no label
    used = torch.tensor([[1, 1, 1]])
    expected = (-(math.log(0.5) + math.log(0.25)) / 2 - math.log(0.8)) / 2
    assert float(step_label_loss(logp, ids, mask, used)) == pytest.approx(expected)
    # an unused slot does not count, and no labelled used slot gives 0
    assert float(step_label_loss(logp, ids, mask, torch.tensor([[1, 0, 1]]))) == pytest.approx(-math.log(0.125) / 2)
    assert float(step_label_loss(logp, ids, mask, torch.tensor([[0, 0, 1]]))) == 0.0
    # the gradient raises exactly the labelled tokens' log-probs
    leaf = logp.clone().requires_grad_(True)
    step_label_loss(leaf, ids, mask, used).backward()
    assert (leaf.grad[0, 0, :2] < 0).all() and leaf.grad[0, 0, 2] == 0 and (leaf.grad[0, 2] == 0).all()


# ---------------------------------------------------------------- advantages


def test_invalid_samples_get_zero_and_leave_the_group_statistics():
    rewards = torch.tensor([1.0, 0.0, 0.0, 5.0, 1.0, 0.0, 9.0, 9.0])
    valid = torch.tensor([True, True, True, False, True, False, False, False])
    adv = group_advantages(rewards, AdvantageConfig(group_size=4), valid)
    # group 0: mean and std of [1, 0, 0] only; the invalid 5 gets 0
    std = torch.tensor([1.0, 0.0, 0.0]).std()
    expected = ((torch.tensor([1.0, 0.0, 0.0]) - 1 / 3) / (std + 1e-4)).tolist()
    assert adv[:3].tolist() == pytest.approx(expected, abs=1e-5)
    assert float(adv[3]) == 0.0
    assert adv[4:].tolist() == [0.0] * 4  # one valid sample: no baseline, no signal (see group_advantages)


def test_first_token_selection_keeps_one_first_position_per_group():
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, -0.5, -0.5, 0.5, 0.5, -1.0, -1.0, -1.0, -1.0])
    old = torch.tensor(
        [
            [-1.0, -1.0, 0.0],  # mean -1
            [-0.1, -0.1, 0.0],  # negative, best mean: never the winner
            [-0.2, -0.4, -0.6],  # mean -0.4: the winner of group 0
            [-3.0, 0.0, 0.0],
            [-1.0, -1.0, -1.0],
            [-1.0, -1.0, -1.0],
            [-0.5, -0.5, -0.5],  # a tie with the next row: the lower index wins
            [-0.5, -0.5, -0.5],
        ]
        + [[-1.0, -1.0, -1.0]] * 4
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]] + [[1, 1, 1]] * 8)
    out = first_token_selection(advantages, old, mask, group_size=4)
    first = out[:, 0]
    assert first[:4].tolist() == [0.0, 0.0, 1.0, 0.0]  # negatives zeroed too (the reference's rule)
    assert first[4:8].tolist() == [0.0, 0.0, 0.5, 0.0]
    assert first[8:].tolist() == [-1.0] * 4  # no positive row: unchanged
    assert torch.equal(out[:, 1:], advantages[:, None].expand(-1, 2))
    kept = (first[:8] != 0).view(2, 4).sum(dim=1)
    assert kept.tolist() == [1, 1]


def test_first_token_selection_first_position_follows_the_mask():
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])  # row 0 has no thought slot: its first token is position 1
    old = torch.zeros(2, 3)
    out = first_token_selection(advantages, old, mask, 2)
    assert out.tolist() == [[1.0, 1.0, 1.0], [0.0, -1.0, -1.0]]


# ---------------------------------------------------------------- rollouts


def test_latent_rollout_recomputes_mu_exactly_and_is_seeded():
    model, tokens, policy = policy_setup("one_sided")
    prompts = [[2, 3, tokens.bot_id], [4, tokens.bot_id]]

    def roll(seed):
        return latent_rollout(
            model,
            prompts,
            3,
            policy,
            n_slots=4,
            eot_id=tokens.eot_id,
            max_new_tokens=5,
            eos_id=0,
            pad_id=1,
            temperature=0.7,
            generator=torch.Generator().manual_seed(seed),
        )

    first, again = roll(0), roll(0)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.thoughts.fed, again.thoughts.fed)
    assert first.thoughts.fed.shape[:2] == (6, 4) and first.thought_mask.shape == (6, 4)
    out = recompute_latent(model, policy, first, prompts, temperature=0.7, flip=torch.ones(6, dtype=torch.bool))
    used = first.thought_mask.bool()
    assert torch.allclose(out.thought_logp[used], first.thoughts.logp[used], atol=1e-5)
    assert torch.allclose(out.token_logp, first.tempered_logprobs, atol=1e-5)
    assert torch.equal(first.exited, first.thought_mask.sum(1) < 4)


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("path", "overrides", "match"),
    [
        (TINY_SFT, {"reasoning.curriculum.supervise_eot": False}, "supervise_eot"),
        (TINY_SFT, {"reasoning.method": "coconut"}, "latent_sft"),
        (TINY_SFT, {"reasoning.latent_sft.step_label_weight": -1.0}, "step_label_weight"),
        (REPO / "paper_configs/tiny/grpo_arithmetic.yaml", {"advantage.invalid_samples": ["no_exit"]}, "no_exit"),
        (TINY_LATENT_GRPO, {"reasoning.method": "cot"}, "latent_sft"),
        (TINY_LATENT_GRPO, {"reasoning.latent_sft.gumbel.clamp_low": 0.5}, "clamp_low"),
        (TINY_LATENT_GRPO, {"advantage.invalid_samples": ["late"]}, "invalid_samples"),
        (TINY_LATENT_GRPO, {"policy_loss.name": "dppo", "policy_loss.divergence": "topk_kl"}, "divergence"),
    ],
)
def test_config_errors(path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(path, overrides)


def test_paper_configs_differ_from_tiny_only_in_values():
    tiny, paper = load_config(TINY_LATENT_GRPO), load_config(REPO / "paper_configs/rl/latent_grpo_gsm8k_llama1b.yaml")
    assert paper.reasoning.reasoner == "meta-llama/Llama-3.2-1B-Instruct"
    assert (paper.rl.prompts_per_step, paper.advantage.group_size, paper.optim.lr) == (64, 8, 1e-6)
    assert paper.reasoning.latent_sft.topk == tiny.reasoning.latent_sft.topk == 10
    assert paper.reasoning.latent_sft.gumbel.noise == tiny.reasoning.latent_sft.gumbel.noise == "one_sided"
    assert tiny.advantage.first_token_selection and paper.advantage.first_token_selection
    math_cfg = load_config(REPO / "paper_configs/rl/latent_grpo_math_qwen7b.yaml")
    assert math_cfg.reasoning.reasoner == "Qwen/Qwen2.5-Math-7B"
    assert "truncated" in math_cfg.advantage.invalid_samples and math_cfg.policy_loss.kl_beta == 0.001


# ---------------------------------------------------------------- end to end


def metrics_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "logs" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def rl_overrides(tmp_path: Path, init_dir: Path, **extra) -> dict:
    """A seconds-long latent_rl run from ``init_dir``: 2 prompts x 4 rollouts, 2 optimizer steps, every rollout kept
    (an untrained reasoner never answers)."""
    return {
        **DATA,
        "reasoning.init_from": str(init_dir),
        "reasoning.data.batch_size": 2,
        "advantage.group_size": 4,
        "advantage.invalid_samples": [],
        "rl.prompts_per_step": 2,
        "rl.minibatch_size": 8,
        "rl.log_completions_every": 1,
        "trainer.max_steps": 2,
        "trainer.checkpoint_every_n_steps": 2,
        "trainer.val_check_interval": None,
        "trainer.limit_val_batches": 1,
        "output_dir": str(tmp_path / "runs"),
        **extra,
    }


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latent_sft")
    overrides = {
        **DATA,
        "name": "latent_sft",
        "reasoning.curriculum.stage_epochs": [0, 1, 1, 1, 1],
        "reasoning.latent_sft.max_latents": 5,
        "trainer.max_steps": 3,
        "trainer.checkpoint_every_n_steps": 3,
        "output_dir": str(out),
    }
    return fit(load_config(TINY_SFT, overrides), run_name="r").run_dir


@pytest.fixture
def varied_reward():
    """A reward that varies within a group even for an untrained reasoner (whose answers are never parsable)."""
    REWARDS.register(
        "test_latent_distinct", lambda prompts, completions, **_: [float(len(set(c))) for c in completions]
    )
    try:
        yield "test_latent_distinct"
    finally:
        del REWARDS._items["test_latent_distinct"]


@pytest.mark.parametrize("freeze", [False, True])
def test_latent_grpo_end_to_end(sft_run, tmp_path, freeze, varied_reward):
    overrides = rl_overrides(
        tmp_path,
        sft_run,
        **{
            "rl.freeze_embeddings": freeze,
            "reward.weights": {varied_reward: 1.0},
            "reasoning.curriculum.stage_epochs": [0, 1, 1, 1, 1],
            "reasoning.latent_sft.max_latents": 5,
        },
    )
    run = fit(load_config(TINY_LATENT_GRPO, overrides), run_name="r").run_dir
    rows = metrics_rows(run)
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/latent_tokens", "train/no_exit_fraction", "train/ratio_mean", "val/latent_tokens"} <= logged
    first = next(row for row in rows if row.get("train/ratio_mean"))
    assert float(first["train/mismatch_prob_diff"]) < 1e-4  # mu and pi_old agree on thoughts and tokens
    policy = load_policy(run)
    answers = policy.generate_answers(["1 + 2 = ?"], policy.config.reasoning.final_stage)
    assert 0 <= answers.n_latent[0] <= 5
    start = load_policy(run)  # the same architecture, then the SFT run's weights
    start.load_reasoner_from(sft_run)
    same = torch.equal(policy.reasoner.get_input_embeddings().weight, start.reasoner.get_input_embeddings().weight)
    assert same == freeze  # frozen embeddings stay the SFT run's; otherwise the update moves them
    moved = policy.reasoner.transformer.h[0].attn.c_attn.weight
    assert not torch.equal(moved, start.reasoner.transformer.h[0].attn.c_attn.weight)


# ---------------------------------------------------------------- SofT-GRPO end to end


@pytest.fixture(scope="module")
def cot_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cot")
    overrides = {**DATA, "name": "cot", "trainer.max_steps": 2, "trainer.checkpoint_every_n_steps": 2}
    return fit(
        load_config(REPO / "paper_configs/tiny/coconut_arithmetic_cot.yaml", overrides | {"output_dir": str(out)}),
        run_name="r",
    ).run_dir


def test_soft_grpo_end_to_end(cot_run, tmp_path):
    overrides = rl_overrides(tmp_path, cot_run, **{"soft_thinking.max_thinking": 6, "reward.weights": {"format": 1.0}})
    run = fit(load_config(REPO / "paper_configs/tiny/soft_grpo_arithmetic.yaml", overrides), run_name="r").run_dir
    rows = metrics_rows(run)
    first = next(row for row in rows if row.get("train/ratio_mean"))
    assert float(first["train/mismatch_prob_diff"]) < 1e-4  # soft tokens and answer tokens: mu = pi_old
    assert 0 < float(first["train/latent_tokens"]) <= 6
    policy = load_policy(run)
    sampled = policy.generate_answers(["1 + 2 = ?"] * 3, 0, temperature=1.0, generator=torch.Generator().manual_seed(0))
    greedy = policy.generate_answers(["1 + 2 = ?"], 0)
    assert all(0 <= n <= 6 for n in sampled.n_latent + greedy.n_latent)
    assert all(text for text in sampled.texts)  # the thinking block's tokens are part of the answer text


def test_soft_thinking_needs_a_cot_reasoner():
    with pytest.raises(ConfigError, match="soft_thinking"):
        load_config(REPO / "paper_configs/tiny/soft_grpo_arithmetic.yaml", {"reasoning.method": "no_cot"})


# ---------------------------------------------------------------- ATP-Latent RL end to end


@pytest.mark.parametrize("stop_head", [True, False])
def test_atp_latent_rl_end_to_end(tmp_path, stop_head):
    cvae = {**TINY_CVAE, "stop_head": stop_head}
    curriculum = {"thoughts_per_step": 1, "max_latent_stage": 2, "pad_latent_to_max": not stop_head}
    shapes = {**DATA, "reasoning.cvae": cvae, "reasoning.curriculum": curriculum}
    sft_overrides = {
        **shapes,
        "name": "atp",
        "reasoning.curriculum": {**curriculum, "stage_epochs": [0, 1, 1]},
        "trainer.max_steps": 2,
        "trainer.checkpoint_every_n_steps": 2,
        "output_dir": str(tmp_path / "sft"),
    }
    sft = fit(load_config(REPO / "paper_configs/tiny/atp_latent_arithmetic.yaml", sft_overrides), run_name="r").run_dir
    overrides = rl_overrides(tmp_path, sft, **shapes)
    config = load_config(REPO / "paper_configs/tiny/atp_latent_rl_arithmetic.yaml", overrides)
    assert config.reward.gates == {"coherence": "answer"}
    run = fit(config, run_name="r").run_dir
    first = next(row for row in metrics_rows(run) if row.get("train/ratio_mean"))
    assert float(first["train/mismatch_prob_diff"]) < 1e-4  # latents, stop decisions and tokens: mu = pi_old
    assert 0 < float(first["train/latent_tokens"]) <= 2
    policy = load_policy(run)
    sampled = policy.generate_answers(["1 + 2 = ?"] * 2, 3, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert sampled.latents is not None and all(0 <= n <= 2 for n in sampled.n_latent)


def test_reward_weights_and_gates_replace_their_base():
    only = load_config(REPO / "paper_configs/tiny/atp_latent_rl_arithmetic_coherence_only.yaml")
    assert only.reward.weights == {"format": 0.5, "coherence": 1.0} and only.reward.gates == {}
    plain = load_config(REPO / "paper_configs/tiny/atp_latent_rl_arithmetic_no_coherence.yaml")
    assert plain.reward.weights == {"answer": 1.0, "format": 0.5} and plain.reward.gates == {}
    with pytest.raises(ConfigError, match="coherence"):
        load_config(REPO / "paper_configs/tiny/grpo_arithmetic.yaml", {"reward.weights": {"coherence": 1.0}})
    with pytest.raises(ConfigError, match="gates.answer"):
        load_config(REPO / "paper_configs/tiny/grpo_arithmetic.yaml", {"reward.gates": {"answer": "format"}})


def test_latent_sft_run_evaluates_with_the_shuffled_thought_control(sft_run, tmp_path):
    from latentlab.reasoning.evaluate import evaluate_cot

    overrides = {**DATA, "eval.limit": 2, "sampling.num_samples": 2, "eval.pass_k": [1, 2]}
    result = evaluate_cot(load_config(TINY_SFT, overrides), checkpoint=sft_run, out_dir=tmp_path / "eval")
    row = result.rows[0]
    assert row["method"] == "Latent-SFT" and "shuffled_thought_accuracy" in row and "pass@2" in row


def test_soft_thinking_end_text_must_start_the_answer_marker():
    """Checked once, when the module is built: thinking must end where the trained answer marker starts."""
    from latentlab.rl.module import GRPOModule

    config = load_config(
        REPO / "paper_configs/tiny/soft_grpo_arithmetic.yaml", {**DATA, "soft_thinking.end_text": "<<"}
    )
    with pytest.raises(ConfigError, match=r"soft_thinking.end_text.*'<<'.*thinking must end where the answer starts"):
        GRPOModule(config)
