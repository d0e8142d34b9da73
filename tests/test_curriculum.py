"""Curriculum layouts on a hand-written 3-step example, with exact token-level expectations."""

from __future__ import annotations

import random
import re

import pytest

from latentlab.data.schema import CoTExample
from latentlab.errors import ConfigError
from latentlab.reasoning.curriculum import (
    IGNORE_INDEX,
    CurriculumConfig,
    LayoutVocab,
    build_layout,
    build_prompt,
    is_stage_start,
    sample_stage,
    stage_for_epoch,
    step_token_ids,
)

# word-level vocabulary; "\n" is a token of its own
TOKENS = ["<eos>", "<bos>", "<bot>", "<thought>", "<eot>", "\n", "###", "q", "s1", "a", "s2", "s3", "b", "c", "ans"]
ID = {token: index for index, token in enumerate(TOKENS)}
X = IGNORE_INDEX


def encode(text: str) -> list[int]:
    return [ID[token] for token in re.findall(r"\n|[^\s]+", text)]


VOCAB = LayoutVocab(
    encode=encode, bot_id=ID["<bot>"], thought_id=ID["<thought>"], eot_id=ID["<eot>"], eos_id=ID["<eos>"]
)
EXAMPLE = CoTExample(id="ex", question="q", steps=["s1 a", "s2", "s3 b c"], answer="ans")


def ids(text: str) -> list[int]:
    """Space-separated token names -> ids (``\\n`` written as NL)."""
    return [ID["\n" if token == "NL" else token] for token in text.split()]


def config(**overrides) -> CurriculumConfig:
    base = {"thoughts_per_step": 2, "max_latent_stage": 2, "epochs_per_stage": 3}
    return CurriculumConfig(**{**base, **overrides})


def test_stage_0_is_full_cot_between_markers():
    layout = build_layout(EXAMPLE, 0, config(), VOCAB)
    assert layout.prefix_ids == ids("q NL <bot>")
    assert layout.n_thoughts == 0
    assert layout.suffix_ids == ids("<eot> s1 a NL s2 NL s3 b c NL ### ans <eos>")
    assert layout.suffix_labels == [X] + ids("s1 a NL s2 NL s3 b c NL ### ans <eos>")
    assert layout.language_text == "s1 a\ns2\ns3 b c\n### ans"
    assert layout.n_latent_steps == 0


def test_stage_1_replaces_the_first_step_with_c_thoughts():
    layout = build_layout(EXAMPLE, 1, config(), VOCAB)
    assert layout.prefix_ids == ids("q NL <bot>")
    assert layout.n_thoughts == 2
    assert layout.suffix_ids == ids("<eot> s2 NL s3 b c NL ### ans <eos>")
    assert layout.input_ids(VOCAB.thought_id) == ids(
        "q NL <bot> <thought> <thought> <eot> s2 NL s3 b c NL ### ans <eos>"
    )
    assert layout.labels == [X, X, X, X, X, X] + ids("s2 NL s3 b c NL ### ans <eos>")
    assert layout.language_text == "s2\ns3 b c\n### ans"
    assert layout.n_latent_steps == 1


def test_stage_max_keeps_the_steps_after_the_first_max():
    layout = build_layout(EXAMPLE, 2, config(), VOCAB)
    assert layout.n_thoughts == 4
    assert layout.suffix_ids == ids("<eot> s3 b c NL ### ans <eos>")


@pytest.mark.parametrize("stage", [3, 7])
def test_final_stage_makes_every_step_latent_with_max_stage_times_c_thoughts(stage):
    layout = build_layout(EXAMPLE, stage, config(), VOCAB)
    assert layout.prefix_ids == ids("q NL <bot>")
    assert layout.n_thoughts == 4  # max_latent_stage * c, although the example has 3 steps
    assert layout.input_ids(VOCAB.thought_id) == ids(
        "q NL <bot> <thought> <thought> <thought> <thought> <eot> ### ans <eos>"
    )
    assert layout.labels == [X] * 8 + ids("### ans <eos>")
    assert layout.language_text == "### ans"
    assert layout.n_latent_steps == 3


def test_without_pad_latent_to_max_the_count_follows_the_removed_steps():
    one_step = CoTExample(id="one", question="q", steps=["s1 a"], answer="ans")
    padded = build_layout(one_step, 2, config(), VOCAB)
    unpadded = build_layout(one_step, 2, config(pad_latent_to_max=False), VOCAB)
    assert (padded.n_thoughts, unpadded.n_thoughts) == (4, 2)  # Coconut gives k*c even with fewer than k steps
    assert padded.suffix_ids == unpadded.suffix_ids == ids("<eot> ### ans <eos>")
    big = config(max_latent_stage=5, pad_latent_to_max=False)
    assert build_layout(EXAMPLE, 6, big, VOCAB).n_thoughts == 6  # min(M, S) * c at the final stage


def test_baselines_share_the_code_path():
    cot = build_layout(EXAMPLE, 5, config(mode="cot"), VOCAB)  # stage ignored: CoT forever
    assert cot.prefix_ids == ids("q NL") and cot.n_thoughts == 0
    assert cot.suffix_ids == cot.suffix_labels == ids("s1 a NL s2 NL s3 b c NL ### ans <eos>")
    no_cot = build_layout(EXAMPLE, 0, config(mode="no_cot"), VOCAB)
    assert no_cot.input_ids(VOCAB.thought_id) == ids("q NL ### ans <eos>")
    assert no_cot.labels == [X, X] + ids("### ans <eos>")
    no_thoughts = build_layout(EXAMPLE, 1, config(mode="no_thoughts"), VOCAB)
    assert no_thoughts.input_ids(VOCAB.thought_id) == ids("q NL s2 NL s3 b c NL ### ans <eos>")
    assert no_thoughts.labels == [X, X] + ids("s2 NL s3 b c NL ### ans <eos>")


def test_bos_is_prepended_and_never_supervised():
    vocab = LayoutVocab(encode, ID["<bot>"], ID["<thought>"], ID["<eot>"], ID["<eos>"], bos_id=ID["<bos>"])
    layout = build_layout(EXAMPLE, 1, config(), vocab)
    assert layout.prefix_ids == ids("<bos> q NL <bot>")
    assert layout.labels[:7] == [X] * 7


def test_prompt_thought_count_ignores_gold_steps():
    assert build_prompt("q", 1, config(), VOCAB) == (ids("q NL <bot>"), 2)
    assert build_prompt("q", 9, config(pad_latent_to_max=False), VOCAB) == (ids("q NL <bot>"), 4)
    assert build_prompt("q", 2, config(mode="cot"), VOCAB) == (ids("q NL"), 0)
    assert step_token_ids(EXAMPLE.steps, VOCAB) == [ids("s1 a"), ids("s2"), ids("s3 b c")]


def test_stage_for_epoch():
    three = config(epochs_per_stage=3, max_latent_stage=2)
    assert [stage_for_epoch(epoch, three) for epoch in range(12)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert stage_for_epoch(100, three) == 3
    assert stage_for_epoch(4, config(epochs_per_stage=1, max_latent_stage=6)) == 4
    # start_stage 1 (Coconut's resume of a CoT run): the first epoch trains stage 1 for its whole length.
    assert [stage_for_epoch(epoch, three, start_stage=1) for epoch in range(8)] == [1, 1, 1, 2, 2, 2, 3, 3]
    with pytest.raises(ConfigError):
        stage_for_epoch(-1, three)
    with pytest.raises(ConfigError, match="epochs_per_stage"):
        config(epochs_per_stage=0)


def test_stage_epochs_give_stages_their_own_lengths():
    """stage_epochs[k] epochs for stage k, epochs_per_stage past the list, 0 skips a stage; resets follow."""
    uneven = config(epochs_per_stage=1, max_latent_stage=3, stage_epochs=[0, 3])
    assert [stage_for_epoch(e, uneven, start_stage=1) for e in range(8)] == [1, 1, 1, 2, 3, 4, 4, 4]
    assert [stage_for_epoch(e, uneven) for e in range(6)] == [1, 1, 1, 2, 3, 4]  # stage 0 lasts 0 epochs
    assert [e for e in range(8) if is_stage_start(e, uneven, start_stage=1)] == [0, 3, 4, 5]
    with pytest.raises(ConfigError, match=r"stage_epochs\[1\] must be an integer >= 0"):
        config(stage_epochs=[1, -2])


def test_optimizer_resets_at_stage_starts_only():
    starts = [epoch for epoch in range(12) if is_stage_start(epoch, config())]
    assert starts == [0, 3, 6, 9]


def test_uniform_stage_sampling():
    rng = random.Random(0)
    always = config(uniform_prob=1.0)
    drawn = {sample_stage(EXAMPLE, 1, always, rng) for _ in range(200)}
    assert drawn == {0, 1, 2, 3}  # 0..S with S = 3 steps
    assert {sample_stage(EXAMPLE, 1, config(), rng) for _ in range(20)} == {1}
    assert sample_stage(EXAMPLE, 2, config(mode="cot", uniform_prob=1.0), rng) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "latent"},
        {"thoughts_per_step": -1},
        {"epochs_per_stage": 0},
        {"uniform_prob": 1.5},
        {"max_latent_stage": -2},
    ],
)
def test_bad_config_values_raise_config_error(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"curriculum.{key}"):
        config(**bad)
