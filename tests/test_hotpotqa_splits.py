"""Real-data training splits from official HotpotQA files: evaluation questions out, splits disjoint by ``_id``,
positives and hard negatives from the supporting facts, seeded, written whole (issue 17)."""

import hashlib
import json
from pathlib import Path

import pytest

from latentlab.cli import main
from latentlab.data.hotpotqa_splits import (
    DEFAULT_EVALUATION,
    DEFAULT_SOURCES,
    SPLITS,
    build_hotpotqa_splits,
    make_hotpotqa_splits,
)
from latentlab.data.schema import read_corpus, read_qa
from latentlab.errors import ConfigError, DataError
from latentlab.io import ResultsExistError
from tests.conftest import shared_file


def _record(qid: str, kind: str = "bridge", answer: str = "A", shared: bool = False, gold: bool = True) -> dict:
    """An official-format record: two gold paragraphs (both sentences 0 supporting), one distractor paragraph.

    ``shared`` adds the paragraph "Common" that the evaluation record also holds; ``gold=False`` names supporting
    titles absent from the context, as fullwiki retrieval often does.
    """
    context = [
        [f"{qid} gold A", [f"{qid} gold A first.", f" {qid} gold A second."]],
        [f"{qid} gold B", [f"{qid} gold B first."]],
        [f"{qid} distractor", [f"{qid} distractor only."]],
    ]
    if shared:
        context.append(["Common", ["Common sentence."]])
    facts = [[f"{qid} gold A", 0], [f"{qid} gold B", 0]] if gold else [["Elsewhere", 0], ["Nowhere", 1]]
    return {
        "_id": qid,
        "answer": answer,
        "question": f"Question {qid}?",
        "supporting_facts": facts,
        "context": context,
        "type": kind,
        "level": "easy",
    }


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    """A train file (t0..t9), a fullwiki file (f0..f9, plus ev-1 also in evaluation and f-miss without its gold
    paragraphs) and an evaluation file (ev-1, ev-2)."""
    train = [_record(f"t{i}", "comparison" if i % 3 == 0 else "bridge", shared=i == 0) for i in range(10)]
    fullwiki = [_record(f"f{i}", answer="yes" if i == 1 else "A") for i in range(10)]
    fullwiki += [_record("ev-1", shared=True), _record("f-miss", gold=False)]
    evaluation = [_record("ev-1", shared=True), _record("ev-2")]
    return (
        _write(tmp_path / "train.json", train),
        _write(tmp_path / "fullwiki.json", fullwiki),
        _write(tmp_path / "eval.json", evaluation),
    )


def _build(files, **kwargs):
    train, fullwiki, evaluation = files
    return build_hotpotqa_splits([train, fullwiki], [evaluation], **kwargs)


def test_splits_are_disjoint_and_leave_out_every_evaluation_question(files):
    splits = _build(files, val_fraction=0.2, test_fraction=0.2)
    ids = {name: [ex.id for ex in splits.split(name)] for name in SPLITS}
    assert all(len(v) == len(set(v)) for v in ids.values())
    assert not set(ids["train"]) & set(ids["val"]) and not set(ids["train"]) & set(ids["test"])
    assert not set(ids["val"]) & set(ids["test"])
    everything = {qid for v in ids.values() for qid in v}
    assert everything == {f"t{i}" for i in range(10)} | {f"f{i}" for i in range(10)}
    assert "ev-1" not in everything and "f-miss" not in everything
    # round(0.2 * 10) = 2 of each source in val and in test: each split holds both files alike
    assert [len(ids[n]) for n in SPLITS] == [12, 4, 4]
    assert all(sum(q.startswith("t") for q in ids[n]) == len(ids[n]) // 2 for n in SPLITS)
    manifest = splits.manifest()
    assert manifest["excluded"]["evaluation"] == [{"id": "ev-1", "source": str(files[1])}]
    assert manifest["excluded"]["too_few_supporting"] == [{"id": "f-miss", "source": str(files[1])}]


def test_positives_are_the_supporting_sentences_and_hard_negatives_the_others(files):
    splits = _build(files)
    every = {ex.id: ex for name in SPLITS for ex in splits.split(name)}
    t0 = every["t0"]
    assert t0.supporting == ["t0 gold A#0", "t0 gold B#0"]
    assert [e.id for e in t0.supporting_evidence()] == t0.supporting
    assert [e.id for e in t0.negative_evidence()] == ["t0 gold A#1", "t0 distractor#0", "Common#0"]
    assert t0.question_type == "comparison" and every["t1"].question_type == "bridge"
    assert t0.supporting_evidence()[0].text == "t0 gold A first."


def test_unlabelled_text_is_the_training_side_minus_positives_and_held_out_sentences(files):
    splits = _build(files, val_fraction=0.2, test_fraction=0.2)
    unlabelled = {e.id for e in splits.unlabelled}
    assert len(unlabelled) == len(splits.unlabelled)
    train_negatives = {e.id for ex in splits.train for e in ex.negative_evidence()}
    held_out = {e.id for name in ("val", "test") for ex in splits.split(name) for e in ex.evidence}
    # "Common" is also evidence of the evaluation question ev-1: never unlabelled text, though t0 reads it
    held_out |= {"Common#0"}
    miss = {"f-miss gold A#0", "f-miss gold A#1", "f-miss gold B#0", "f-miss distractor#0"}
    assert unlabelled == (train_negatives | miss) - held_out
    assert not unlabelled & {s for ex in splits.train for s in ex.supporting}
    assert ("t0" in [ex.id for ex in splits.train]) == (splits.train_evidence_held_out == 1)


def test_the_assignment_is_seeded_and_does_not_depend_on_file_order(files, tmp_path):
    first, again = _build(files, seed=3), _build(files, seed=3)
    assert first.split_of == again.split_of
    assert [ex.id for ex in first.train] == [ex.id for ex in again.train]
    train, fullwiki, evaluation = files
    reversed_train = _write(tmp_path / "reversed.json", json.loads(train.read_text())[::-1])
    reordered = build_hotpotqa_splits([reversed_train, fullwiki], [evaluation], seed=3)
    assert reordered.split_of == first.split_of
    assert any(_build(files, seed=seed).split_of != first.split_of for seed in (4, 5, 6))


def test_written_folder_reads_back_and_is_not_overwritten_unless_asked(files, tmp_path):
    out = tmp_path / "splits"
    train, fullwiki, evaluation = files
    splits = make_hotpotqa_splits(out, [train, fullwiki], [evaluation], seed=1)
    assert sorted(p.name for p in out.iterdir()) == [
        "evaluation.jsonl",
        "manifest.json",
        "test.jsonl",
        "train.jsonl",
        "unlabelled.jsonl",
        "val.jsonl",
    ]
    for name in SPLITS:
        assert read_qa(out / f"{name}.jsonl") == splits.split(name)
    assert read_corpus(out / "unlabelled.jsonl") == splits.unlabelled
    evaluated = read_qa(out / "evaluation.jsonl")
    assert evaluated == splits.evaluation_examples and len(evaluated) == 2
    assert not {ex.id for ex in evaluated} & {ex.id for name in SPLITS for ex in splits.split(name)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["counts"]["train"]["questions"] == len(splits.train)
    assert manifest["counts"]["train"]["positives"] == 2 * len(splits.train)
    assert manifest["sources"][0]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert manifest["evaluation"][0]["records"] == 2
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ResultsExistError, match="already holds results"):
        make_hotpotqa_splits(out, [train, fullwiki], [evaluation], seed=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    make_hotpotqa_splits(out, [train, fullwiki], [evaluation], seed=2, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "fullwiki.json", "splits", "train.json"]


def test_missing_file_malformed_record_and_repeated_question_are_named(files, tmp_path):
    train, fullwiki, evaluation = files
    with pytest.raises(DataError, match=r"nope\.json: file not found"):
        build_hotpotqa_splits([train, tmp_path / "nope.json"], [evaluation])
    with pytest.raises(DataError, match=r"gone\.json: file not found"):
        build_hotpotqa_splits([train], [tmp_path / "gone.json"])
    broken = json.loads(fullwiki.read_text())
    del broken[3]["question"]
    bad = _write(tmp_path / "bad.json", broken)
    with pytest.raises(DataError, match=r"bad\.json: record 3 \(_id f3\): missing field 'question'"):
        build_hotpotqa_splits([train, bad], [evaluation])
    twice = _write(tmp_path / "twice.json", [_record("t4")])
    with pytest.raises(DataError, match=r"twice\.json: record 0: _id 't4' is also a question of .*train\.json"):
        build_hotpotqa_splits([train, twice], [evaluation])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, "val_fraction must be a number in"),
        ({"test_fraction": -0.1}, "test_fraction must be a number in"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction \\+ test_fraction must be < 1"),
        ({"min_supporting_paragraphs": 0}, "min_supporting_paragraphs must be >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_argument(files, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _build(files, **kwargs)


def test_both_hops_can_be_required(files, tmp_path):
    train, fullwiki, evaluation = files
    one_hop = json.loads(fullwiki.read_text())
    one_hop[0]["supporting_facts"] = [["f0 gold A", 0], ["Missing title", 0]]
    source = _write(tmp_path / "one_hop.json", one_hop)
    assert "f0" in build_hotpotqa_splits([source], [evaluation]).split_of
    strict = build_hotpotqa_splits([source], [evaluation], min_supporting_paragraphs=2)
    assert "f0" not in strict.split_of
    assert {e.id for e in strict.excluded if e.reason == "too_few_supporting"} == {"f0", "f-miss"}


def test_cli_writes_the_splits_and_refuses_an_existing_folder(files, tmp_path, capsys):
    train, fullwiki, evaluation = files
    out = tmp_path / "cli-splits"
    argv = ["data", "hotpotqa-splits", "--out", str(out), "--source", str(train), "--source", str(fullwiki)]
    argv += ["--exclude", str(evaluation), "--val-fraction", "0.2", "--test-fraction", "0.2"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "train: 12 questions" in printed and "excluded: 1 evaluation questions" in printed
    assert main(argv) == 2
    assert "already holds results; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--seed", "7"]) == 0


def test_real_files_leave_out_the_four_dev_distractor_questions_and_stay_disjoint():
    sources = [shared_file(p) for p in DEFAULT_SOURCES]
    evaluation = [shared_file(p) for p in DEFAULT_EVALUATION]
    dev_ids = {r["_id"] for r in json.loads(evaluation[0].read_text(encoding="utf-8"))}
    fullwiki_ids = {r["_id"] for r in json.loads(sources[1].read_text(encoding="utf-8"))}
    overlap = dev_ids & fullwiki_ids
    assert len(overlap) == 4
    splits = build_hotpotqa_splits(sources, evaluation)
    assert {e.id for e in splits.excluded if e.reason == "evaluation"} == overlap
    ids = [ex.id for name in SPLITS for ex in splits.split(name)]
    assert len(ids) == len(set(ids)) and not set(ids) & dev_ids
    assert all(ex.supporting for name in SPLITS for ex in splits.split(name))
    assert not {e.id for e in splits.unlabelled} & {s for ex in splits.train for s in ex.supporting}
