"""Converters from official formats: exact records on hand-written fixtures, errors naming file and line, real files."""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentlab.data.converters import (
    CONVERTERS,
    convert,
    convert_gsm8k,
    convert_gsm8k_aug,
    convert_hotpotqa,
    convert_prontoqa,
    convert_prosqa,
    equation_parts,
    equation_step,
    extract_corpus,
    get_converter,
    load_hotpotqa,
    register_converter,
)
from latentlab.data.schema import CoTExample, Evidence, QAExample, read_corpus, read_cot, read_qa, write_jsonl
from latentlab.errors import ConfigError, DataError
from tests.conftest import REPO, shared_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"

FIXTURE_OF = {
    "hotpotqa": "hotpotqa_mini.json",
    "gsm8k": "gsm8k_mini.jsonl",
    "gsm8k_aug": "gsm8k_aug_mini.txt",
    "gsm_hard": "gsm_hard_mini.jsonl",
    "svamp": "svamp_mini.json",
    "multiarith": "multiarith_mini.json",
    "prosqa": "prosqa_mini.json",
    "prontoqa": "prontoqa_mini.json",
}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# HotpotQA


def test_hotpotqa_fixture_exact_records_and_skip_counts():
    examples, stats = load_hotpotqa(FIXTURES / "hotpotqa_mini.json")
    arin, kestrel, lumen = "Arin Dask", "Kestrel Observatory", "Lumen Bay"
    assert examples == [
        QAExample(
            id="q-bridge-1",
            question="Which town hosts the observatory founded by Arin Dask?",
            answers=["Velmora"],
            evidence=[
                Evidence(
                    f"{arin}#0", "Arin Dask was a fictional astronomer who founded the Kestrel Observatory.", title=arin
                ),
                Evidence(f"{arin}#1", "She was born in 1901.", title=arin),
                Evidence(f"{kestrel}#0", "The Kestrel Observatory is a fictional observatory.", title=kestrel),
                Evidence(f"{kestrel}#1", "It stands in the town of Velmora.", title=kestrel),
                Evidence(f"{lumen}#0", "Lumen Bay is a fictional harbour.", title=lumen),
            ],
            # ["Kestrel Observatory", 2] is one past the paragraph's last sentence: skipped, not fatal.
            supporting=[f"{arin}#0", f"{kestrel}#1"],
            question_type="bridge",
        ),
        QAExample(
            id="q-compare-2",
            question="Are Lumen Bay and Orrin Cove both harbours?",
            answers=["yes"],
            # Lumen Bay's empty sentence 1 is dropped; ids keep the official index.
            evidence=[
                Evidence(f"{lumen}#0", "Lumen Bay is a fictional harbour.", title=lumen),
                Evidence("Tessel Ridge#0", "Tessel Ridge is a fictional mountain.", title="Tessel Ridge"),
            ],
            # ["Orrin Cove", 0] names a paragraph absent from the context (as in fullwiki): skipped.
            supporting=[f"{lumen}#0"],
            question_type="comparison",
        ),
    ]
    assert (stats.questions, stats.sentences, stats.supporting) == (2, 7, 3)
    assert stats.supporting_index_out_of_range == 1
    assert stats.supporting_title_missing == 1
    assert stats.empty_sentences_skipped == 1
    assert stats.supporting_skipped == 2
    assert examples[0].negative_evidence() == [examples[0].evidence[i] for i in (1, 2, 4)]


def test_convert_hotpotqa_logs_the_skipped_supporting_facts(caplog):
    with caplog.at_level(logging.INFO, logger="latentlab.data.converters"):
        examples = convert_hotpotqa(FIXTURES / "hotpotqa_mini.json")
    assert len(examples) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "hotpotqa_mini.json" in message
    assert "1 supporting facts whose title is not in the context" in message
    assert "1 with a sentence index out of range" in message


def test_hotpotqa_round_trips_through_the_schema_reader(tmp_path):
    examples = convert_hotpotqa(FIXTURES / "hotpotqa_mini.json")
    assert read_qa(write_jsonl(tmp_path / "qa.jsonl", examples)) == examples


def test_extract_corpus_deduplicates_by_id(tmp_path):
    corpus = extract_corpus(convert_hotpotqa(FIXTURES / "hotpotqa_mini.json"))
    assert [e.id for e in corpus] == [
        "Arin Dask#0",
        "Arin Dask#1",
        "Kestrel Observatory#0",
        "Kestrel Observatory#1",
        "Lumen Bay#0",
        "Tessel Ridge#0",
    ]
    assert read_corpus(write_jsonl(tmp_path / "corpus.jsonl", corpus)) == corpus


def test_extract_corpus_rejects_one_id_with_two_texts():
    first = QAExample("q1", "?", ["a"], [Evidence("T#0", "Old text.", title="T")], ["T#0"])
    second = QAExample("q2", "?", ["a"], [Evidence("T#0", "New text.", title="T")], [])
    with pytest.raises(DataError) as err:
        extract_corpus([first, second])
    message = str(err.value)
    for expected in ("T#0", "q1", "q2", "Old text.", "New text."):
        assert expected in message


HOTPOT_OK = {
    "_id": "x1",
    "answer": "A",
    "question": "Q?",
    "supporting_facts": [["T", 0]],
    "context": [["T", ["S0."]]],
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"answer": None}, "field 'answer'"),
        ({"context": [["T", "not a list"]]}, "context[0] must be [title, [sentence, ...]]"),
        ({"supporting_facts": [["T", "0"]]}, "supporting_facts[0] must be [title, sentence_index]"),
        ({"context": [["T", ["S0."]], ["T", ["Other."]]]}, "two different paragraphs titled 'T'"),
        ({"type": ""}, "field 'type' must be the question type"),
        ({"type": 1}, "field 'type' must be the question type"),
    ],
)
def test_hotpotqa_malformed_record_names_file_and_record(tmp_path, change, expected):
    bad = {**HOTPOT_OK, **change}
    path = write(tmp_path, "hotpot.json", json.dumps([HOTPOT_OK, bad]))
    with pytest.raises(DataError) as err:
        load_hotpotqa(path)
    message = str(err.value)
    assert f"{path}: record 1" in message
    assert expected in message


def test_hotpotqa_invalid_json_and_wrong_top_level(tmp_path):
    broken = write(tmp_path, "broken.json", '[{"_id": "x1",\n "answer": }]')
    with pytest.raises(DataError, match=rf"{broken}:2: not valid JSON"):
        load_hotpotqa(broken)
    not_list = write(tmp_path, "obj.json", json.dumps(HOTPOT_OK))
    with pytest.raises(DataError, match="expected a JSON list of HotpotQA questions"):
        load_hotpotqa(not_list)
    duplicate = write(tmp_path, "dup.json", json.dumps([HOTPOT_OK, HOTPOT_OK]))
    with pytest.raises(DataError, match="records 0 and 1 share _id 'x1'"):
        load_hotpotqa(duplicate)


# ---------------------------------------------------------------------------------------------------------------------
# GSM8K and GSM8k-Aug

GSM_EXPECTED = [
    (["<<48/2=24>>", "<<48+24=72>>"], "72"),
    (["<<1200*2=2400>>", "<<2400*5=12000>>"], "12000"),
    ([], "3"),
]


def test_gsm8k_fixture_exact_records():
    examples = convert_gsm8k(FIXTURES / "gsm8k_mini.jsonl")
    assert [e.id for e in examples] == ["gsm8k-mini-0", "gsm8k-mini-1", "gsm8k-mini-2"]
    assert [(e.steps, e.answer) for e in examples] == GSM_EXPECTED
    assert examples[2].question == "Tom has 3 apples. How many apples does Tom have?"


def test_gsm8k_aug_fixture_matches_the_gsm8k_converter():
    aug = convert_gsm8k_aug(FIXTURES / "gsm8k_aug_mini.txt")
    assert [e.id for e in aug] == ["gsm8k_aug-mini-0", "gsm8k_aug-mini-1", "gsm8k_aug-mini-2"]
    assert [(e.steps, e.answer) for e in aug] == GSM_EXPECTED
    gsm = convert_gsm8k(FIXTURES / "gsm8k_mini.jsonl")
    assert [(e.question, e.steps, e.answer) for e in aug] == [(e.question, e.steps, e.answer) for e in gsm]


def test_gsm8k_split_name_override():
    assert convert_gsm8k(FIXTURES / "gsm8k_mini.jsonl", split="dev")[0].id == "gsm8k-dev-0"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"question": "Q?", "answer": "It is <<1+1=2>>2."}', "no '#### <number>'"),
        ('{"question": "Q?", "answer": "#### "}', "nothing after '####'"),
        ('{"answer": "#### 2"}', "missing field 'question'"),
        ('{"question": "Q?", "answer": "#### 2"', "not valid JSON"),
        ('["Q?", "#### 2"]', "expected a JSON object"),
    ],
)
def test_gsm8k_malformed_line_names_file_and_line(tmp_path, line, expected):
    good = json.dumps({"question": "Q?", "answer": "<<1+1=2>>2\n#### 2"})
    path = write(tmp_path, "gsm.jsonl", f"{good}\n\n{line}\n")
    with pytest.raises(DataError) as err:
        convert_gsm8k(path)
    assert f"{path}:3:" in str(err.value)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("How many? <<1+1=2>> #### 2", "no '||'"),
        ("How many?||<<1+1=2>> 2", "no '####'"),
        ("How many?||<<1+1=2>> so <<2*2=4>> #### 4", "text 'so' outside the <<...>> steps"),
        ("||<<1+1=2>> #### 2", "empty question"),
        ("How many?||<<1+1=2>> ####  ", "nothing after '####'"),
    ],
)
def test_gsm8k_aug_malformed_line_names_file_and_line(tmp_path, line, expected):
    path = write(tmp_path, "aug.txt", f"Q?||<<1+1=2>> #### 2\n{line}\n")
    with pytest.raises(DataError) as err:
        convert_gsm8k_aug(path)
    assert f"{path}:2:" in str(err.value)
    assert expected in str(err.value)


def test_equation_step_helpers():
    assert equation_step("48/2", 24) == "<<48/2=24>>"
    assert equation_parts("<<48/2=24>>") == ("48/2", "24")
    assert equation_parts("2/.5=4") == ("2/.5", "4")
    with pytest.raises(ValueError, match="not an equation"):
        equation_parts("<<48/2>>")


# ---------------------------------------------------------------------------------------------------------------------
# ProsQA and ProntoQA


def test_prosqa_fixture_exact_records():
    assert convert_prosqa(FIXTURES / "prosqa_mini.json") == [
        CoTExample(
            id="prosqa-mini-0",
            question="Every wumpus is a yumpus. Tom is a wumpus. Every yumpus is a rempus. Bob is a zorpus. "
            "Is Tom a rempus or zorpus?",
            steps=["Tom is a wumpus.", "Every wumpus is a yumpus.", "Every yumpus is a rempus."],
            answer="Tom is a rempus.",
        ),
        CoTExample(
            id="prosqa-mini-1",
            question="Sally is a gerpus. Every gerpus is a lempus. Alex is a tumpus. Is Sally a tumpus or lempus?",
            steps=["Sally is a gerpus.", "Every gerpus is a lempus."],
            answer="Sally is a lempus.",
        ),
    ]


def test_prontoqa_fixture_exact_records():
    examples = convert_prontoqa(FIXTURES / "prontoqa_mini.json")
    assert [e.id for e in examples] == ["prontoqa-mini-0", "prontoqa-mini-1"]
    assert examples[1] == CoTExample(
        id="prontoqa-mini-1",
        question="Every lorpus is sour. Rex is a lorpus. True or false: Rex is not sour.",
        steps=["Rex is a lorpus. Every lorpus is sour.", "Rex is sour."],
        answer="False",
    )
    assert examples[0].answer == "True" and len(examples[0].steps) == 3


def test_coconut_json_keeps_a_records_own_id(tmp_path):
    records = [
        {"id": "custom-7", "question": "Q?", "steps": ["s."], "answer": "A"},
        {"idx": 12, "question": "Q2?", "steps": [], "answer": "B"},
    ]
    path = write(tmp_path, "prosqa_dev.json", json.dumps(records))
    assert [e.id for e in convert_prosqa(path)] == ["custom-7", "prosqa-dev-12"]


@pytest.mark.parametrize("convert_fn", [convert_prosqa, convert_prontoqa])
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"steps": "Tom is a wumpus."}, "field 'steps' must be a list of non-empty strings"),
        ({"steps": ["ok.", ""]}, "field 'steps' must be a list of non-empty strings"),
        ({"answer": ""}, "field 'answer' must be a non-empty string"),
        ({"question": None}, "field 'question'"),
    ],
)
def test_coconut_json_malformed_record_names_file_and_record(tmp_path, convert_fn, change, expected):
    good = {"question": "Q?", "steps": ["s."], "answer": "A"}
    path = write(tmp_path, "data.json", json.dumps([good, good, {**good, **change}]))
    with pytest.raises(DataError) as err:
        convert_fn(path)
    assert f"{path}: record 2" in str(err.value)
    assert expected in str(err.value)


def test_missing_file_is_a_data_error(tmp_path):
    for name in CONVERTERS:
        with pytest.raises(DataError, match="file not found"):
            convert(name, tmp_path / "absent.json")


# ---------------------------------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_every_registered_converter_round_trips_its_fixture(tmp_path, name):
    records = convert(name, FIXTURES / FIXTURE_OF[name])
    assert records
    out = write_jsonl(tmp_path / "out.jsonl", records)
    reader = read_qa if isinstance(records[0], QAExample) else read_cot
    assert reader(out) == records


def test_registry_names_and_errors():
    assert set(CONVERTERS) == set(FIXTURE_OF)
    with pytest.raises(ConfigError) as err:
        get_converter("hotpot")
    assert "unknown dataset 'hotpot'" in str(err.value)
    assert "gsm8k, gsm8k_aug, gsm_hard, hotpotqa, multiarith, prontoqa, prosqa, svamp" in str(err.value)
    with pytest.raises(ConfigError, match="registered twice"):
        register_converter("gsm8k", convert_gsm8k)


# ---------------------------------------------------------------------------------------------------------------------
# data/convert.py, run as a user runs it


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "data" / "convert.py"), *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def test_convert_script_writes_records_and_corpus(tmp_path):
    out, corpus = tmp_path / "hotpot.jsonl", tmp_path / "corpus.jsonl"
    done = run_script("hotpotqa", str(FIXTURES / "hotpotqa_mini.json"), str(out), "--corpus", str(corpus))
    assert done.returncode == 0, done.stderr
    assert read_qa(out) == convert_hotpotqa(FIXTURES / "hotpotqa_mini.json")
    assert len(read_corpus(corpus)) == 6
    assert "wrote 2 hotpotqa records" in done.stdout

    done = run_script("gsm8k_aug", str(FIXTURES / "gsm8k_aug_mini.txt"), str(tmp_path / "aug.jsonl"))
    assert done.returncode == 0, done.stderr
    assert [e.answer for e in read_cot(tmp_path / "aug.jsonl")] == ["72", "12000", "3"]


def test_convert_script_reports_errors_without_a_traceback(tmp_path):
    done = run_script("mathqa", str(FIXTURES / "gsm8k_mini.jsonl"), str(tmp_path / "x.jsonl"))
    assert done.returncode == 2
    assert "unknown dataset 'mathqa'" in done.stderr and "gsm8k_aug" in done.stderr

    bad = write(tmp_path, "bad.txt", "Q?||<<1+1=2>> #### 2\nno separator here\n")
    done = run_script("gsm8k_aug", str(bad), str(tmp_path / "x.jsonl"))
    assert done.returncode == 2
    assert f"{bad}:2: no '||'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Real files in ../shared/data (skipped with the path when absent)


@pytest.mark.parametrize(
    ("name", "relative", "count"),
    [
        ("hotpotqa", "hotpotqa/hotpot_dev_distractor_shared.json", 50),
        ("hotpotqa", "hotpotqa/hotpot_dev_fullwiki_subset.json", 480),
        ("hotpotqa", "hotpotqa/hotpot_train_v1.1_subset_hipporag100.json", 100),
        ("gsm8k", "gsm8k/train.jsonl", 7473),
        ("gsm8k", "gsm8k/test.jsonl", 1319),
        ("gsm8k_aug", "gsm8k_aug/valid.txt", 500),
        ("gsm8k_aug", "gsm8k_aug/test.txt", 1319),
        ("prosqa", "prosqa/prosqa_valid.json", 300),
        ("prosqa", "prosqa/prosqa_test.json", 500),
        ("prontoqa", "prontoqa/prontoqa_train.json", 9000),
        ("prontoqa", "prontoqa/prontoqa_valid.json", 200),
        ("prontoqa", "prontoqa/prontoqa_test.json", 800),
    ],
)
def test_real_file_counts(name, relative, count):
    records = convert(name, shared_file(relative))
    assert len(records) == count
    assert len({r.id for r in records}) == count


def test_real_hotpotqa_distractor_first_record_and_round_trip(tmp_path):
    examples, stats = load_hotpotqa(shared_file("hotpotqa/hotpot_dev_distractor_shared.json"))
    first = examples[0]
    assert first.id == "5a85ea095542994775f606a8"
    assert first.answers == ["Animorphs"] and first.question_type == "bridge"
    chronicles = "The Hork-Bajir Chronicles"
    assert first.supporting == [f"{chronicles}#0", f"{chronicles}#1", f"{chronicles}#2", "Animorphs#0", "Animorphs#1"]
    assert first.evidence[0].id == "Andre Norton Award#0"
    assert first.evidence[1].text.startswith("It is named to honor prolific science fiction")  # leading space stripped
    assert stats.supporting_skipped == 0
    assert read_qa(write_jsonl(tmp_path / "dev.jsonl", examples)) == examples


def test_real_hotpotqa_fullwiki_skips_supporting_facts_outside_the_retrieved_context():
    _, stats = load_hotpotqa(shared_file("hotpotqa/hotpot_dev_fullwiki_subset.json"))
    assert stats.questions == 480
    assert stats.supporting_title_missing == 471  # gold paragraphs the fullwiki retrieval missed (counted here)
    assert stats.supporting_index_out_of_range == 0


def test_real_hotpotqa_corpus_has_no_conflicting_ids():
    examples = []
    for relative in (
        "hotpotqa/hotpot_dev_distractor_shared.json",
        "hotpotqa/hotpot_dev_fullwiki_subset.json",
        "hotpotqa/hotpot_train_v1.1_subset_hipporag100.json",
    ):
        examples += load_hotpotqa(shared_file(relative))[0]
    corpus = extract_corpus(examples)
    assert len({e.id for e in corpus}) == len(corpus) == 25417


def test_real_gsm8k_first_records_checked_by_hand():
    train = convert_gsm8k(shared_file("gsm8k/train.jsonl"))
    assert (train[0].steps, train[0].answer) == (["<<48/2=24>>", "<<48+24=72>>"], "72")
    test = convert_gsm8k(shared_file("gsm8k/test.jsonl"))
    assert test[0].id == "gsm8k-test-0"
    assert (test[0].steps, test[0].answer) == (["<<16-3-4=9>>", "<<9*2=18>>"], "18")
    assert all("," not in e.answer for e in train + test)


def test_real_gsm8k_aug_first_record_checked_by_hand():
    valid = convert_gsm8k_aug(shared_file("gsm8k_aug/valid.txt"))
    assert valid[0].steps == ["<<4-2=2>>", "<<2/.5=4>>", "<<12/4=3>>", "<<100*3=300>>"]
    assert valid[0].answer == "300"


def test_real_gsm8k_test_and_gsm8k_aug_test_agree_record_for_record():
    """The iCoT test file is GSM8K test with the calculator annotations as steps; both converters must agree."""
    gsm = convert_gsm8k(shared_file("gsm8k/test.jsonl"))
    aug = convert_gsm8k_aug(shared_file("gsm8k_aug/test.txt"))
    assert [(e.question, e.steps, e.answer) for e in gsm] == [(e.question, e.steps, e.answer) for e in aug]


def test_real_prosqa_first_record_and_step_counts():
    test = convert_prosqa(shared_file("prosqa/prosqa_test.json"))
    assert test[0].id == "prosqa-test-0"
    assert test[0].steps == ["Sally is a scrompus.", "Every scrompus is a rempus.", "Every rempus is a sterpus."]
    assert test[0].answer == "Sally is a sterpus."
    assert test[0].question.endswith("Is Sally a hilpus or sterpus?")
    assert collections.Counter(len(e.steps) for e in test) == {3: 202, 4: 217, 5: 69, 6: 12}


def test_real_prontoqa_first_record():
    test = convert_prontoqa(shared_file("prontoqa/prontoqa_test.json"))
    assert test[0].answer == "False"
    assert test[0].steps[0] == "Stella is a zumpus. Zumpuses are gorpuses."
    assert test[0].steps[-1] == "Stella is floral."
    assert test[0].question.endswith("True or false: Stella is not floral.")
    assert collections.Counter(e.answer for e in test) == {"False": 403, "True": 397}
