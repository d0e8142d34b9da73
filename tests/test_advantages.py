"""Group advantages against the spec's hand-computed GRPO group (§6), a loop reference, and DAPO dynamic sampling."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from latentlab.configs.rl import AdvantageConfig
from latentlab.errors import ConfigError, DataError
from latentlab.rl.advantages import GenerationBatch, fill_batch, group_advantages, keep_informative_groups

SPEC_REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
SIGNS = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)


def advantages(rewards, valid=None, **config):
    return group_advantages(rewards, AdvantageConfig(**{"group_size": 4, **config}), valid)


# ---------------------------------------------------------------------------------------------------------------
# The spec's group r = [1, 0, 0, 1]
# ---------------------------------------------------------------------------------------------------------------


def test_unbiased_std_without_eps():
    # std(n - 1) = sqrt(1/3) = 0.57735, so A = 0.5 / 0.57735 = 0.86603
    result = advantages(SPEC_REWARDS, std="unbiased", eps=0.0)
    torch.testing.assert_close(result, 0.86603 * SIGNS, atol=5e-6, rtol=0)
    torch.testing.assert_close(result, math.sqrt(3) / 2 * SIGNS, atol=1e-12, rtol=0)


def test_trl_eps():
    result = advantages(SPEC_REWARDS, std="unbiased", eps=1e-4)
    torch.testing.assert_close(result, 0.86588 * SIGNS, atol=5e-6, rtol=0)
    torch.testing.assert_close(result, 0.5 / (1 / math.sqrt(3) + 1e-4) * SIGNS, atol=1e-12, rtol=0)


def test_population_std():
    torch.testing.assert_close(advantages(SPEC_REWARDS, std="population", eps=0.0), SIGNS, atol=1e-12, rtol=0)


@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_dr_grpo_is_mean_only(eps):
    result = advantages(SPEC_REWARDS, scale_rewards="none", eps=eps)
    torch.testing.assert_close(result, 0.5 * SIGNS, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("rewards", [[1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]])
def test_all_equal_group_gets_zero_even_without_eps(scale_rewards, rewards):
    # 0.1 * 4 / 4 is not 0.1 in floats: a std test with eps 0 would turn that residue into +-1.
    result = advantages(torch.tensor(rewards, dtype=torch.float64), scale_rewards=scale_rewards, eps=0.0)
    assert torch.equal(result, torch.zeros(4, dtype=torch.float64))
    assert keep_informative_groups(torch.tensor(rewards), group_size=4).tolist() == [False]


def test_batch_scaling_on_two_groups():
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 0], dtype=torch.float64)
    # group means 0.5 and 0.75; the batch of 5 ones and 3 zeros has mean 5/8 and squared deviations
    # 5 * (3/8)^2 + 3 * (5/8)^2 = 15/8, so its unbiased std is sqrt(15/8 / 7) = sqrt(15/56) = 0.51755
    centred = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75], dtype=torch.float64)
    result = advantages(rewards, scale_rewards="batch", eps=0.0)
    torch.testing.assert_close(result, centred / math.sqrt(15 / 56), atol=1e-12, rtol=0)
    torch.testing.assert_close(result[:4], 0.96609 * SIGNS, atol=5e-6, rtol=0)
    # population: sqrt(15/8 / 8) = sqrt(15/64)
    population = advantages(rewards, scale_rewards="batch", std="population", eps=0.0)
    torch.testing.assert_close(population, centred / math.sqrt(15 / 64), atol=1e-12, rtol=0)


def test_group_scaling_ignores_the_other_groups():
    other = torch.tensor([5.0, -3.0, 2.0, 7.0], dtype=torch.float64)
    together = advantages(torch.cat([SPEC_REWARDS, other]))
    torch.testing.assert_close(together[:4], advantages(SPEC_REWARDS), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Invalid samples (spec §5.7)
# ---------------------------------------------------------------------------------------------------------------


def test_invalid_sample_is_left_out_of_the_baseline():
    rewards = torch.tensor([1.0, 0.0, float("nan"), 1.0], dtype=torch.float64)
    valid = torch.tensor([True, True, False, True])
    # valid rewards [1, 0, 1]: mean 2/3, deviations [1/3, -2/3, 1/3], squared sum 2/3
    population = advantages(rewards, valid, std="population", eps=0.0)  # std sqrt(2/9)
    torch.testing.assert_close(
        population, torch.tensor([1 / math.sqrt(2), -math.sqrt(2), 0.0, 1 / math.sqrt(2)], dtype=torch.float64)
    )
    unbiased = advantages(rewards, valid, std="unbiased", eps=0.0)  # std sqrt(1/3)
    expected = torch.tensor([1 / 3, -2 / 3, 0.0, 1 / 3], dtype=torch.float64) * math.sqrt(3)
    torch.testing.assert_close(unbiased, expected, atol=1e-12, rtol=0)
    mean_only = advantages(rewards, valid, scale_rewards="none")
    torch.testing.assert_close(mean_only, torch.tensor([1 / 3, -2 / 3, 0, 1 / 3], dtype=torch.float64))


def test_invalid_sample_would_have_changed_the_baseline():
    # The same group with the 0 counted: the masked result must differ, else the mask did nothing.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    masked = advantages(rewards, torch.tensor([True, True, False, True]), eps=0.0)
    assert not torch.allclose(masked, advantages(rewards, eps=0.0))
    assert masked[2] == 0


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_single_or_no_valid_sample_gets_zero(scale_rewards):
    # The reference falls back to mean 0, std 1 and would give the survivor its raw reward (1.0) as advantage.
    rewards = torch.tensor([1.0, float("nan"), float("nan"), float("nan")] + [float("nan")] * 4 + [1, 0, 0, 1])
    valid = torch.tensor([True, False, False, False] + [False] * 4 + [True] * 4)
    result = advantages(rewards, valid, scale_rewards=scale_rewards, eps=0.0)
    assert torch.equal(result[:8], torch.zeros(8))
    assert torch.isfinite(result).all()
    assert keep_informative_groups(rewards, 4, valid).tolist() == [False, False, True]


def test_invalid_samples_are_left_out_of_the_batch_std():
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 100], dtype=torch.float64)  # 100 would dominate the batch std
    valid = torch.tensor([True] * 7 + [False])
    # valid: five 1s and two 0s: mean 5/7, squared deviations 5 * (2/7)^2 + 2 * (5/7)^2 = 10/7, std sqrt(10/7 / 6)
    result = advantages(rewards, valid, scale_rewards="batch", eps=0.0)
    # group 2's valid rewards are all 1: no signal
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64) / math.sqrt(5 / 21)
    torch.testing.assert_close(result, expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# A Python loop reference on random data
# ---------------------------------------------------------------------------------------------------------------


def loop_reference(rewards: list[float], valid: list[bool], config: AdvantageConfig) -> list[float]:
    """The documented rules, one sample at a time (statistics.stdev is n - 1, pstdev is n)."""
    spread = statistics.stdev if config.std == "unbiased" else statistics.pstdev
    g = config.group_size
    batch_valid = [r for r, v in zip(rewards, valid) if v]
    batch_std = spread(batch_valid) if len(batch_valid) >= 2 else 0.0
    out = []
    for start in range(0, len(rewards), g):
        group = [(r, v) for r, v in zip(rewards[start : start + g], valid[start : start + g])]
        kept = [r for r, v in group if v]
        informative = len(kept) >= 2 and max(kept) != min(kept)
        for r, v in group:
            if not (v and informative):
                out.append(0.0)
                continue
            centred = r - statistics.fmean(kept)
            if config.scale_rewards == "group":
                out.append(centred / (spread(kept) + config.eps))
            elif config.scale_rewards == "batch":
                out.append(centred / (batch_std + config.eps))
            else:
                out.append(centred)
    return out


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("std", ["unbiased", "population"])
@pytest.mark.parametrize("eps", [0.0, 1e-4])
@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_matches_loop_reference_on_random_data(scale_rewards, std, eps, kind):
    generator = torch.Generator().manual_seed(0)
    config = AdvantageConfig(group_size=5, scale_rewards=scale_rewards, std=std, eps=eps)
    n = 5 * 40
    if kind == "binary":
        rewards = torch.randint(0, 2, (n,), generator=generator).double()
    else:
        rewards = torch.randn(n, generator=generator, dtype=torch.float64)
        rewards[:10] = 0.3  # two all-equal groups
    valid = torch.rand(n, generator=generator) > 0.25
    result = group_advantages(rewards, config, valid)
    expected = torch.tensor(loop_reference(rewards.tolist(), valid.tolist(), config), dtype=torch.float64)
    torch.testing.assert_close(result, expected, atol=1e-10, rtol=0)
    assert (result[~valid] == 0).all()
    assert (result != 0).any()


# ---------------------------------------------------------------------------------------------------------------
# Shapes, dtypes, errors
# ---------------------------------------------------------------------------------------------------------------


def test_group_size_must_divide_n():
    with pytest.raises(ConfigError, match=r"advantage\.group_size=4 .*N=6"):
        advantages(torch.zeros(6))
    with pytest.raises(ConfigError, match=r"advantage\.group_size=4 .*N=6"):
        keep_informative_groups(torch.zeros(6), group_size=4)


def test_dtypes():
    assert advantages(SPEC_REWARDS.float()).dtype == torch.float32
    assert advantages(torch.tensor([1, 0, 0, 1])).dtype == torch.get_default_dtype()
    torch.testing.assert_close(advantages(torch.tensor([1, 0, 0, 1])), (0.86588 * SIGNS).float(), atol=5e-6, rtol=0)


def test_non_finite_valid_reward_is_a_data_error():
    with pytest.raises(DataError, match="sample 2"):
        advantages(torch.tensor([1.0, 0.0, float("nan"), 1.0]))


def test_valid_mask_must_match_rewards():
    with pytest.raises(DataError, match="valid has shape"):
        advantages(torch.zeros(8), torch.ones(4, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------------
# Dynamic sampling
# ---------------------------------------------------------------------------------------------------------------


def test_keep_informative_groups():
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0.5, 0, 0, 0])
    assert keep_informative_groups(rewards, 4).tolist() == [True, False, False, True]
    # group 0 with its 0s invalid has only equal valid rewards left
    valid = torch.tensor([True, False, False, True] + [True] * 12)
    assert keep_informative_groups(rewards, 4, valid).tolist() == [False, False, False, True]


def scripted_draws(batches):
    """A ``draw`` returning the given batches in turn, counting its calls."""
    calls = []

    def draw():
        calls.append(len(calls))
        return batches[len(calls) - 1]

    return draw, calls


def g2_batch(draw_id, groups, valid=None):
    """A batch of G = 2 groups with rewards ``groups`` and payload items named d<draw>p<prompt>."""
    rewards = torch.tensor([r for group in groups for r in group], dtype=torch.float32)
    payload = [f"d{draw_id}p{p}" for p in range(len(groups))]
    return GenerationBatch(rewards=rewards, payload=payload, valid=valid)


def test_fill_batch_draws_until_full_and_cuts_the_surplus():
    config = AdvantageConfig(group_size=2, dynamic_sampling=True, max_draws=4)
    draw, calls = scripted_draws(
        [
            g2_batch(0, [[1, 0], [1, 1], [0, 1]]),
            g2_batch(1, [[0, 0], [1, 0], [0, 1]], valid=torch.tensor([True, True, True, True, False, True])),
            g2_batch(2, [[1, 0], [1, 0], [1, 0]]),
        ]
    )
    batch, info = fill_batch(draw, want_groups=3, config=config)
    assert len(calls) == 2  # full after the second draw: no third
    assert batch.payload == ["d0p0", "d0p2", "d1p1"]
    assert torch.equal(batch.rewards, torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0]))
    assert batch.valid.tolist() == [True] * 6
    assert info.draws == 2 and info.full
    assert info.groups_drawn == 6 and info.informative_groups == 3 and info.groups_kept == 3


def test_fill_batch_stops_at_max_draws_and_says_so():
    config = AdvantageConfig(group_size=2, dynamic_sampling=True, max_draws=3)
    draw, calls = scripted_draws([g2_batch(i, [[1, 1], [0, 1] if i == 1 else [0, 0]]) for i in range(5)])
    batch, info = fill_batch(draw, want_groups=4, config=config)
    assert len(calls) == 3
    assert batch.payload == ["d1p1"] and batch.rewards.tolist() == [0.0, 1.0]
    assert info.draws == 3 and not info.full and info.groups_kept == 1 and info.groups_drawn == 6


def test_fill_batch_with_nothing_informative_returns_an_empty_batch():
    config = AdvantageConfig(group_size=2, dynamic_sampling=True, max_draws=2)
    draw, _ = scripted_draws([g2_batch(i, [[1, 1]]) for i in range(2)])
    batch, info = fill_batch(draw, want_groups=1, config=config)
    assert batch.rewards.shape == (0,) and batch.payload == [] and batch.valid.shape == (0,)
    assert not info.full and info.draws == 2


def test_fill_batch_without_dynamic_sampling_draws_once_unfiltered():
    config = AdvantageConfig(group_size=2, dynamic_sampling=False, max_draws=4)
    draw, calls = scripted_draws([g2_batch(0, [[1, 1], [0, 1], [0, 0]]), g2_batch(1, [[1, 0]])])
    batch, info = fill_batch(draw, want_groups=2, config=config)
    assert len(calls) == 1
    assert batch.payload == ["d0p0", "d0p1", "d0p2"]
    assert info.draws == 1 and info.informative_groups == 1 and info.groups_kept == 3 and info.full


def test_fill_batch_payload_indexed_by_group_tensor():
    config = AdvantageConfig(group_size=2, dynamic_sampling=True)
    payload = torch.arange(6).reshape(3, 2)  # [num_prompts, ...]
    draw, _ = scripted_draws([GenerationBatch(torch.tensor([1.0, 1, 1, 0, 0, 1]), payload)])
    batch, _ = fill_batch(draw, want_groups=2, config=config)
    assert [row.tolist() for row in batch.payload] == [[2, 3], [4, 5]]


def test_fill_batch_errors():
    config = AdvantageConfig(group_size=2, dynamic_sampling=True)
    with pytest.raises(ConfigError, match="want_groups >= 1"):
        fill_batch(lambda: g2_batch(0, [[1, 0]]), want_groups=0, config=config)
    bad_payload = GenerationBatch(torch.tensor([1.0, 0, 1, 0]), payload=["only one"])
    with pytest.raises(DataError, match="draw 1 .*2 groups of 2.* payload of 1"):
        fill_batch(lambda: bad_payload, want_groups=1, config=config)
    with pytest.raises(ConfigError, match=r"advantage\.group_size=2 .*N=3"):
        fill_batch(lambda: GenerationBatch(torch.zeros(3), ["a"]), want_groups=1, config=config)
