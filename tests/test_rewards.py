"""Rewards by hand (answer, format, DAPO overlong length), their weighted sum, skipped samples and the error messages."""

from __future__ import annotations

import math

import pytest
import torch

from latentlab.configs.rl import RewardConfig
from latentlab.errors import ConfigError, DataError
from latentlab.registry import RegistryError
from latentlab.rl.rewards import (
    REWARDS,
    RewardError,
    answer_reward,
    format_reward,
    length_reward,
    score,
)

# ---------------------------------------------------------------------------------------------------------------
# answer
# ---------------------------------------------------------------------------------------------------------------

ANSWER_CASES = [
    # (completion, gold, expected)
    ("3*4=12\n12+5=17\n### 17", "17", 1.0),
    ("### 16", "17", 0.0),
    ("### 1,000", "1000", 1.0),  # the evaluation's canonical numbers: commas, $, trailing zeros
    ("### $1000.0", "1,000", 1.0),
    ("### 3\n### 4", "4", 1.0),  # the last marker counts, as in extract_answer
    ("### Paris", "paris", 1.0),  # text answers: SQuAD normalisation
    ("### 1e3", "1000", 0.0),  # not a plain number for answers_match, so not one here either
    ("the answer is 17", "17", None),  # no marker: no parsable answer
    ("### ", "17", None),  # a marker with nothing after it
    ("### 1000.0000001", "1000", 1.0),  # within the relative tolerance 1e-6 (1e-7 <= 1e-3)
    ("### 1001", "1000", 0.0),  # 1 > 1e-3
]


def test_answer_reward_by_hand():
    completions, gold, expected = zip(*ANSWER_CASES)
    scores = answer_reward(["q"] * len(completions), list(completions), answer=list(gold))
    assert scores == list(expected)


def test_answer_tolerance_comes_from_the_config():
    completions, gold = ["### 1000.0000001", "### 1001", "### 0.0", "### 0.001"], ["1000", "1000", "0", "0"]
    exact = answer_reward(["q"] * 4, completions, answer=gold, reward_config=RewardConfig(numeric_tolerance=0.0))
    assert exact == [0.0, 0.0, 1.0, 0.0]
    loose = answer_reward(["q"] * 4, completions, answer=gold, reward_config=RewardConfig(numeric_tolerance=1e-3))
    assert loose == [1.0, 1.0, 1.0, 0.0]  # relative to a gold of 0 only 0 is within


def test_answer_reward_accepts_numeric_gold():
    assert answer_reward(["q", "q"], ["### 42", "### 4.5"], answer=[42, 4.5]) == [1.0, 1.0]


def test_answer_reward_needs_the_gold_column():
    with pytest.raises(DataError, match="reward 'answer' needs a column 'answer'.*columns: question"):
        answer_reward(["q"], ["### 1"], question=["q"])


# ---------------------------------------------------------------------------------------------------------------
# format and length
# ---------------------------------------------------------------------------------------------------------------


def test_format_reward_by_hand():
    completions = ["step\n### 17", "17", "###", "# 17", "## # 17"]
    assert format_reward(["q"] * 5, completions) == [1.0, 0.0, 1.0, 0.0, 0.0]


def test_length_reward_by_hand():
    # L_max 10 tokens, buffer 4: free up to 6 tokens, then -1/4 per token, -1 from 10 on
    config = RewardConfig(overlong_buffer=4, max_completion=10)
    lengths = [0, 6, 7, 8, 9, 10, 12]
    scores = length_reward(["q"] * 7, ["c"] * 7, completion_lengths=lengths, reward_config=config)
    assert scores == pytest.approx([0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0], abs=1e-12, rel=0)


def test_length_reward_takes_a_tensor_and_is_off_without_a_buffer():
    config = RewardConfig(overlong_buffer=4, max_completion=10)
    tensor_lengths = torch.tensor([7, 20])
    assert length_reward(["q"] * 2, ["c"] * 2, completion_lengths=tensor_lengths, reward_config=config) == [-0.25, -1.0]
    assert length_reward(["q"] * 2, ["c"] * 2, completion_lengths=[5, 10_000]) == [0.0, 0.0]


def test_length_reward_errors():
    with pytest.raises(DataError, match="needs a column 'completion_lengths'"):
        length_reward(["q"], ["c"])
    with pytest.raises(DataError, match=r"completion_lengths\[1\] is -3"):
        length_reward(["q"] * 2, ["c"] * 2, completion_lengths=[1, -3])
    with pytest.raises(DataError, match="has 1 entries; expected one entry per completion \\(2\\)"):
        length_reward(["q"] * 2, ["c"] * 2, completion_lengths=[1])


def test_every_registered_reward_gives_one_score_per_completion():
    assert {"answer", "format", "length"} <= set(REWARDS.names())
    config = RewardConfig(overlong_buffer=2, max_completion=8)
    for name in REWARDS:
        values = REWARDS.get(name)(
            ["q"] * 3,
            ["### 1", "x", "### 2"],
            answer=["1", "1", "1"],
            completion_lengths=[3, 7, 9],
            decoded_steps=[[], [], []],  # coherence reads each completion's decoded latent steps
            reward_config=config,
        )
        assert len(values) == 3, name
        assert all(v is None or isinstance(v, float) for v in values), name


# ---------------------------------------------------------------------------------------------------------------
# score: the weighted sum and skipped samples
# ---------------------------------------------------------------------------------------------------------------

PROMPTS = ["What is 3*4+5?"] * 2 + ["What is 2+2?"] * 2
COMPLETIONS = ["3*4=12\n12+5=17\n### 17", "### 16", "2+2=4 so 4", "### 4"]
COLUMNS = {"answer": ["17", "17", "4", "4"], "completion_lengths": [9, 3, 8, 12]}


def test_score_weighted_sum_by_hand():
    config = RewardConfig(weights={"answer": 1.0, "format": 0.5, "length": 2.0}, overlong_buffer=4, max_completion=12)
    total, per_reward, valid = score(PROMPTS, COMPLETIONS, config, **COLUMNS)
    nan = float("nan")
    torch.testing.assert_close(per_reward["answer"], torch.tensor([1.0, 0.0, nan, 1.0]), equal_nan=True)
    torch.testing.assert_close(per_reward["format"], torch.tensor([1.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(per_reward["length"], torch.tensor([-0.25, 0.0, 0.0, -1.0]))  # free up to 8 tokens
    assert valid.tolist() == [True, True, False, True]
    # 1 + 0.5 - 0.5 = 1.0; 0 + 0.5 + 0 = 0.5; skipped -> 0; 1 + 0.5 - 2 = -0.5
    torch.testing.assert_close(total, torch.tensor([1.0, 0.5, 0.0, -0.5]), atol=1e-7, rtol=0)
    assert total.dtype == torch.float32 and valid.dtype == torch.bool
    assert list(per_reward) == ["answer", "format", "length"]


def test_score_default_config_is_the_answer_alone():
    total, per_reward, valid = score(PROMPTS, COMPLETIONS, RewardConfig(), answer=COLUMNS["answer"])
    assert total.tolist() == [1.0, 0.0, 0.0, 1.0] and valid.tolist() == [True, True, False, True]
    assert list(per_reward) == ["answer"]


def test_none_from_any_reward_skips_the_sample(monkeypatch):
    def skip_second(prompts, completions, **columns):
        return [None if i == 1 else 2.0 for i in range(len(completions))]

    monkeypatch.setitem(REWARDS._items, "skip_second", skip_second)
    config = RewardConfig(weights={"format": 1.0, "skip_second": 0.25})
    total, per_reward, valid = score(PROMPTS, COMPLETIONS, config)
    assert valid.tolist() == [True, False, True, True]
    assert total.tolist() == [1.5, 0.0, 0.5, 1.5]
    assert math.isnan(per_reward["skip_second"][1]) and per_reward["format"][1] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# score: errors
# ---------------------------------------------------------------------------------------------------------------

LONG_PROMPT = "A bad question, long enough that only the first forty characters are shown"


def test_unknown_reward_lists_the_known_ones():
    with pytest.raises(
        RegistryError, match=r"reward\.weights: unknown reward 'corect' \(known: answer, format, length"
    ):
        score(PROMPTS, COMPLETIONS, RewardConfig(weights={"answer": 1.0, "corect": 1.0}), **COLUMNS)


def test_raising_reward_names_the_function_and_the_prompt(monkeypatch):
    def picky(prompts, completions, **columns):
        if any("bad" in p for p in prompts):
            raise ValueError("cannot score this")
        return [0.0] * len(completions)

    monkeypatch.setitem(REWARDS._items, "picky", picky)
    prompts = ["What is 2+2?", LONG_PROMPT, "fine"]
    with pytest.raises(RewardError) as caught:
        score(prompts, ["### 4"] * 3, RewardConfig(weights={"picky": 1.0}))
    message = str(caught.value)
    assert "reward 'picky'" in message and "picky" in message.split("(", 1)[1]
    assert f"prompt 1 ('{LONG_PROMPT[:40]}...')" in message
    assert "ValueError: cannot score this" in message
    assert isinstance(caught.value.__cause__, ValueError)


def test_reward_failing_only_on_the_whole_batch(monkeypatch):
    def batch_only(prompts, completions, **columns):
        if len(completions) > 1:
            raise RuntimeError("out of memory")
        return [0.0]

    monkeypatch.setitem(REWARDS._items, "batch_only", batch_only)
    with pytest.raises(RewardError, match=r"batch of 2 completions \(from prompt 0 \('What is 2\+2\?'\)\).*no single"):
        score(["What is 2+2?", "q"], ["a", "b"], RewardConfig(weights={"batch_only": 1.0}))


def test_missing_column_is_named_through_score():
    with pytest.raises(RewardError, match="reward 'length' .*prompt 0 .*needs a column 'completion_lengths'"):
        score(PROMPTS, COMPLETIONS, RewardConfig(weights={"length": 1.0}), answer=COLUMNS["answer"])


@pytest.mark.parametrize(
    ("returned", "pattern"),
    [
        ([1.0], r"returned 1 scores for 3 completions; prompt 1 \('second'\) and those after it got none"),
        ([1.0] * 5, r"returned 5 scores for 3 completions, 2 after the last one, prompt 2 \('third'\)"),
        ("1.0", r"returned a str for 3 completions"),
        ([1.0, float("nan"), 0.0], r"returned nan for prompt 1 \('second'\); expected a finite number, or None"),
        ([1.0, 0.0, "yes"], r"returned 'yes' for prompt 2 \('third'\)"),
    ],
)
def test_wrong_return_names_the_function_and_the_prompt(monkeypatch, returned, pattern):
    def sloppy(prompts, completions, **columns):
        return returned

    monkeypatch.setitem(REWARDS._items, "sloppy", sloppy)
    with pytest.raises(RewardError, match=r"reward 'sloppy' \(.*sloppy\) " + pattern):
        score(["first", "second", "third"], ["a", "b", "c"], RewardConfig(weights={"sloppy": 1.0}))


def test_column_lengths_are_checked():
    # gold answers per prompt, not repeated G times per completion: a prompt-major bug
    with pytest.raises(DataError, match="column 'answer' has 2 entries for 4 completions.*repeat per-prompt"):
        score(PROMPTS, COMPLETIONS, RewardConfig(), answer=["17", "4"])
    with pytest.raises(DataError, match="3 prompts for 4 completions"):
        score(PROMPTS[:3], COMPLETIONS, RewardConfig(), **COLUMNS)


def test_reserved_column_name():
    with pytest.raises(ConfigError, match="'reward_config' is reserved"):
        score(PROMPTS, COMPLETIONS, RewardConfig(), reward_config=None, **COLUMNS)
