"""WebQA: the official per-category accuracy on hand-worked answers, and the converter from the official release
(``WebQA_train_val.json`` + ``imgs.tsv`` / ``imgs.lineidx``) on a hand-written fixture, with its errors (issue 16)."""

from __future__ import annotations

import base64
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from latentlab.cli import build_parser, main
from latentlab.data.schema import read_qa
from latentlab.data.webqa import WebQAImages, convert_webqa, read_webqa
from latentlab.errors import DataError
from latentlab.eval.webqa import (
    CATEGORIES,
    COLOR_WORDS,
    SHAPE_WORDS,
    WebQAAccuracy,
    answer_keywords,
    lemmatize,
    normalize_webqa,
    webqa_accuracy,
)
from latentlab.io import ResultsExistError

FIXTURE = Path(__file__).parent / "fixtures" / "webqa"
JSON, TSV, LINEIDX = FIXTURE / "WebQA_train_val.json", FIXTURE / "imgs.tsv", FIXTURE / "imgs.lineidx"
YESNO, COLOR, SHAPE, NUMBER, CHOOSE, OTHERS, TEXT = (f"d5bbc6d{c}0dba11ecb1e81171463288e9" for c in "89abcde")
"""The fixture's seven questions, one per category, in file order (guids differ in their 8th hex digit)."""

# ---------------------------------------------------------------------------------------------------------------
# Normalisation and per-example accuracy, against hand-worked values
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("The two circles.", ["2", "circle"]),  # article dropped, number word -> digits, plural -> lemma
        ("Yes, it is.", ["yes", "it", "be"]),  # punctuation dropped, "is" -> "be"
        ("A.", ["a"]),  # one word keeps its article
        ("a", ["a"]),  # one character: only lower-cased
        ("3.5 m. wide", ["3.5", "m", "wide"]),  # a point before a digit stays, the others go
        ("three hundred", ["3", "100"]),  # word by word, as the official script
        ("twenty-one", ["twentyone"]),  # the hyphen goes before the number words are read
        ("It is 007 feet", ["it", "be", "7", "foot"]),  # leading zeros go; irregular plural
        ("Boxes of berries", ["box", "of", "berry"]),
    ],
)
def test_normalisation(text, words):
    assert normalize_webqa(text) == words


def test_the_vocabularies_are_the_official_ones_and_survive_lemmatisation():
    assert len(COLOR_WORDS) == 36 and len(SHAPE_WORDS) == 69
    assert {"yes", "bluere", "aqua"} <= COLOR_WORDS and {"h", "xs", "point", "torus", "crosse"} <= SHAPE_WORDS
    assert all(lemmatize(word) == word for word in COLOR_WORDS | SHAPE_WORDS)
    assert [lemmatize(w) for w in ("circles", "crosses", "arches", "yes", "glass", "torus", "were")] == [
        "circle",
        "cross",
        "arch",
        "yes",
        "glass",
        "torus",
        "be",
    ]


@pytest.mark.parametrize(
    ("prediction", "answer", "category", "expected"),
    [
        # color: sets of colour words. pred {red, white}, gold {red}: P = 1/2, R = 1, F1 = 2(1/2)(1)/(3/2) = 2/3.
        ("It is red and white.", "The flag of Testland is red.", "color", 2 / 3),
        ("Red.", "The flag of Testland is red.", "color", 1.0),  # {red} vs {red}
        ("Red, red and red.", "red", "color", 1.0),  # sets: repeats do not count
        ("It is blue.", "It is dark.", "color", 0.0),  # the answer names no listed colour: nothing to match
        ("Yes, red.", "red", "color", 2 / 3),  # official quirk: "yes" is a colour word, {yes, red} vs {red}
        # shape: pred {circle, square} ("squares" -> "square"), gold {circle}: F1 = 2/3.
        ("The pond is a circle surrounded by squares.", "The pond in the Green Garden is a circle.", "shape", 2 / 3),
        ("Two circles", "a circle", "shape", 1.0),  # plural lemmatised: {circle} vs {circle}
        # YesNo: sets over {yes, no}.
        ("Yes.", "Yes, the flag of Testland is red.", "YesNo", 1.0),
        ("No, it is blue.", "Yes, the flag of Testland is red.", "YesNo", 0.0),  # {no} vs {yes}
        ("Yes and no.", "Yes", "YesNo", 2 / 3),  # {yes, no} vs {yes}: P = 1/2, R = 1
        # number: bags of integers. pred [4, 2], gold [4]: P = 1/2, R = 1, F1 = 2/3.
        ("There are four towers and 2 gates.", "Grey Castle has four towers.", "number", 2 / 3),
        ("4", "four", "number", 1.0),
        ("007", "seven", "number", 1.0),  # leading zeros go
        ("2.5", "2", "number", 0.0),  # a decimal is no integer: pred [] -> 0
        ("three hundred", "300", "number", 0.0),  # word by word: [3, 100] vs [300]
        ("4 and 4", "4", "number", 2 / 3),  # bags: [4, 4] vs [4], P = 1/2, R = 1
        # Others / choose / text: recall of the answer's content words. Gold "Green grass surrounds the pond in the
        # Green Garden." -> green grass surround pond (in) green garden, less "in": 6 keywords.
        ("Grass", "Green grass surrounds the pond in the Green Garden.", "Others", 1 / 6),
        ("green grass", "Green grass surrounds the pond in the Green Garden.", "Others", 2 / 6),  # green once of 2
        # "The flag of Testland is red." -> flag testland red (of, is dropped): 2 of 3 recalled.
        ("The flag of Testland", "The flag of Testland is red.", "choose", 2 / 3),
        ("A", "A", "choose", 1.0),  # only a stop word left: it is kept as the keyword
        # silver river flow testville capital testland (through, of dropped): 2 of 6.
        ("the Silver River", "The Silver River flows through Testville, the capital of Testland.", "text", 2 / 6),
        ("", "The Silver River.", "text", 0.0),
    ],
)
def test_accuracy_on_hand_worked_examples(prediction, answer, category, expected):
    assert webqa_accuracy(prediction, [answer], category) == pytest.approx(expected, abs=1e-12, rel=0)


def test_the_authors_validation_approximation_keeps_every_word():
    answer = "Green grass surrounds the pond in the Green Garden."
    # stop_words=() keeps "in": 7 words, "grass" recalls 1 of them.
    assert webqa_accuracy("Grass", [answer], "Others", stop_words=frozenset()) == pytest.approx(1 / 7, abs=1e-12)
    assert answer_keywords(answer) == ["green", "grass", "surround", "pond", "green", "garden"]


def test_keywords_replace_the_answer_and_the_best_answer_counts():
    # Keywords "red flag" -> [red, flag]; "red" recalls 1 of 2.
    assert webqa_accuracy("red", ["It is a red flag."], "Others", keywords="red flag") == pytest.approx(0.5)
    assert webqa_accuracy("It is red", ["It is blue."], "color", keywords="red") == 1.0  # keywords win over A
    assert webqa_accuracy("red", ["blue", "red"], "color") == 1.0  # the best of several answers
    with pytest.raises(DataError, match=r"unknown WebQA question category 'colour' \(expected one of YesNo"):
        webqa_accuracy("red", ["red"], "colour")
    with pytest.raises(DataError, match="no gold answers"):
        webqa_accuracy("red", [], "color")


def test_metric_accumulates_per_category_means():
    metric = WebQAAccuracy()
    assert math.isnan(float(metric.compute()["all"]))
    metric.update(["Red.", "It is red and white."], [["The flag is red."], ["The flag is red."]], ["color", "color"])
    metric.update(
        ["4", "Grass"], [["four"], ["Green grass surrounds the pond in the Green Garden."]], ["number", "Others"]
    )
    result = metric.compute()
    # color: (1 + 2/3) / 2 = 5/6; number: 1; Others: 1/6; all: (1 + 2/3 + 1 + 1/6) / 4 = 17/24.
    assert set(result) == {"color", "number", "Others", "all"}
    expected = {"color": 5 / 6, "number": 1.0, "Others": 1 / 6, "all": 17 / 24}
    for name, value in expected.items():
        torch.testing.assert_close(result[name], torch.tensor(value, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="one entry per question"):
        metric.update(["a"], [["a"], ["b"]], ["text"])
    assert tuple(CATEGORIES) == ("YesNo", "choose", "color", "shape", "number", "Others", "text")


# ---------------------------------------------------------------------------------------------------------------
# The converter on the hand-written fixture
# ---------------------------------------------------------------------------------------------------------------


def _tsv_bytes() -> dict[str, bytes]:
    """image_id -> the image file's bytes, read from imgs.tsv independently of the converter."""
    rows = (line.split("\t") for line in TSV.read_text(encoding="ascii").splitlines())
    return {image_id: base64.b64decode(data) for image_id, data in rows}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fixture_converts_to_questions_evidence_and_images(tmp_path):
    out = tmp_path / "webqa"
    stats = convert_webqa(JSON, TSV, out)
    assert sorted(p.name for p in out.iterdir()) == ["images", "train.jsonl", "val.jsonl"]
    train, val = read_qa(out / "train.jsonl"), read_qa(out / "val.jsonl")
    assert [e.id for e in train] == [COLOR, SHAPE, CHOOSE, TEXT] and [e.id for e in val] == [YESNO, NUMBER, OTHERS]
    by_id = {e.id: e for e in train + val}
    assert {e.question_type for e in by_id.values()} == set(CATEGORIES)
    assert by_id[NUMBER].question_type == "number"

    yesno = by_id[YESNO]  # quotes are taken off Q and A
    assert yesno.question == "Is the flag of Testland red?" and yesno.answers == ["Yes, the flag of Testland is red."]
    assert [e.id for e in yesno.supporting_evidence()] == ["30000000"]
    assert [e.id for e in yesno.negative_evidence()] == ["d5bc0e9a0dba11ecb1e81171463288e9", "30000001"]
    flag = yesno.evidence[0]
    assert (flag.title, flag.text) == ("Flag of Testland", "The national flag of Testland.")
    assert flag.image == str(out / "images" / "30000000.png")
    on_disk = json.loads((out / "val.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert on_disk["evidence"][0]["image"] == "images/30000000.png"  # relative to the JSONL

    assert by_id[CHOOSE].supporting == ["30000000", "30000001"]  # two positive images
    text = by_id[TEXT]  # a text question: two positive snippets, one negative snippet, one negative image
    assert text.question == "Which river flows through the capital of Testland?"  # stored unquoted, kept as is
    assert text.supporting == ["d5bc0e9a0dba11ecb1e81171463288e9", "d5bc0e9c0dba11ecb1e81171463288e9"]
    assert [(e.id, e.image is None) for e in text.negative_evidence()] == [
        ("d5bc0e9d0dba11ecb1e81171463288e9", True),
        ("30000002", False),
    ]
    assert text.evidence[1].text == "The Silver River flows north through Testville."

    # Each image decoded once, byte-identical to the tsv's base64, with the extension of its format.
    expected = {"30000000.png", "30000001.png", "30000002.png", "30000003.jpg"}
    assert {p.name for p in (out / "images").iterdir()} == expected
    for name in expected:
        assert (out / "images" / name).read_bytes() == _tsv_bytes()[name.split(".")[0]]
    with Image.open(out / "images" / "30000000.png") as flag_image:  # the fixture's flag: 4x3, all red
        assert flag_image.size == (4, 3) and set(flag_image.getdata()) == {(255, 0, 0)}
    assert (stats.images, stats.text_facts, stats.repeated_facts_skipped) == (4, 6, 0)
    assert dict(stats.questions) == {"train": 4, "val": 3}
    assert "7 questions (train 4, val 3" in stats.summary()


def test_one_split_and_an_unknown_split(tmp_path):
    convert_webqa(JSON, TSV, tmp_path / "val-only", splits=["val"])
    assert sorted(p.name for p in (tmp_path / "val-only").iterdir()) == ["images", "val.jsonl"]
    # The val questions use images 0, 1, 2 and 3: all four, each once.
    assert len(list((tmp_path / "val-only" / "images").iterdir())) == 4
    with pytest.raises(DataError, match=r"no question has split 'test' \(the file has: train, val\)"):
        read_webqa(JSON, splits=["test"])


def test_an_existing_folder_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "webqa"
    convert_webqa(JSON, TSV, out)
    with pytest.raises(ResultsExistError, match="already holds results; pass --overwrite"):
        convert_webqa(JSON, TSV, out)
    convert_webqa(JSON, TSV, out, overwrite=True)
    assert len(read_qa(out / "train.jsonl")) == 4


# ---------------------------------------------------------------------------------------------------------------
# Errors: each names the image id and the file, and leaves an existing output as it was
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path):
    """A copy of the fixture to damage, and an earlier good conversion in ``out`` that must survive each failure."""
    copy = tmp_path / "release"
    shutil.copytree(FIXTURE, copy)
    out = tmp_path / "out"
    convert_webqa(JSON, TSV, out)
    return copy, out, _snapshot(out)


def _replace_tsv_line(tsv: Path, index: int, new_line: bytes) -> None:
    """Replace line ``index`` (0-based) of a tsv and rewrite the lineidx beside it to match."""
    lines = tsv.read_bytes().splitlines(keepends=True)
    lines[index] = new_line
    tsv.write_bytes(b"".join(lines))
    offsets = [sum(len(line) for line in lines[:i]) for i in range(len(lines))]
    tsv.with_suffix(".lineidx").write_text("".join(f"{o}\n" for o in offsets))


def _check_failure(broken, error: pytest.ExceptionInfo, *parts: str) -> None:
    _, out, before = broken
    for part in parts:
        assert part in str(error.value), str(error.value)
    assert _snapshot(out) == before  # the earlier output is untouched
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_bad_base64_names_the_image_the_file_and_the_line(broken):
    copy, out, _ = broken
    _replace_tsv_line(copy / "imgs.tsv", 1, b"30000001\tnot*base64!\n")
    with pytest.raises(DataError) as error:
        convert_webqa(copy / JSON.name, copy / "imgs.tsv", out, overwrite=True)
    _check_failure(broken, error, f"{copy / 'imgs.tsv'}:2: image_id 30000001", "not valid base64", YESNO)


def test_base64_of_no_image_names_the_image(broken):
    copy, out, _ = broken
    _replace_tsv_line(copy / "imgs.tsv", 2, b"30000002\t" + base64.b64encode(b"no picture here") + b"\n")
    with pytest.raises(DataError) as error:
        convert_webqa(copy / JSON.name, copy / "imgs.tsv", out, overwrite=True)
    _check_failure(broken, error, f"{copy / 'imgs.tsv'}:3: image_id 30000002", "pillow cannot decode")


def test_an_image_id_missing_from_the_tsv_names_id_record_and_files(broken):
    copy, out, _ = broken
    data = json.loads((copy / JSON.name).read_text(encoding="utf-8"))
    data[SHAPE]["img_negFacts"][0]["image_id"] = 30000007
    (copy / JSON.name).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError) as error:
        convert_webqa(copy / JSON.name, copy / "imgs.tsv", out, overwrite=True)
    lineidx = copy / "imgs.lineidx"
    _check_failure(broken, error, "image_id 30000007", str(copy / "imgs.tsv"), f"{lineidx} indexes only 4 lines", SHAPE)


def test_a_lineidx_that_does_not_match_the_tsv_names_the_id_and_the_lineidx(broken):
    copy, out, _ = broken
    lineidx = copy / "imgs.lineidx"
    lineidx.write_text("0\n111\n228\n366\n")  # line 2 points one byte into the row
    with pytest.raises(DataError) as error:
        convert_webqa(copy / JSON.name, copy / "imgs.tsv", out, overwrite=True)
    _check_failure(broken, error, f"{lineidx}:2: offset 111 (of image_id 30000001", "is not the start of a line")

    lineidx.write_text("0\n228\n366\n")  # a line left out: image 30000001 finds image 30000002's row
    with pytest.raises(DataError) as error:
        convert_webqa(copy / JSON.name, copy / "imgs.tsv", out, overwrite=True)
    _check_failure(broken, error, "imgs.tsv:2: image_id 30000001", "holds image_id '30000002'", str(lineidx))

    lineidx.write_text("0\n228\n110\n")
    with pytest.raises(DataError) as error:
        WebQAImages(copy / "imgs.tsv")
    _check_failure(broken, error, f"{lineidx}:3: offset 110 is not past the previous line's 228")
    lineidx.write_text("0\nabc\n")
    with pytest.raises(DataError, match=r"imgs.lineidx:2: b'abc' is not a byte offset"):
        WebQAImages(copy / "imgs.tsv")
    lineidx.unlink()
    with pytest.raises(DataError, match="imgs.lineidx: file not found.*pass --lineidx"):
        WebQAImages(copy / "imgs.tsv")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r.pop("A"), "field 'A' must be a non-empty list of answer strings"),
        (lambda r: r.update(Qcate=""), "field 'Qcate' must be the question category"),
        (lambda r: r.update(split="../x"), "field 'split' is '../x'"),
        (lambda r: r.pop("txt_negFacts"), "missing field 'txt_negFacts'"),
        (lambda r: r["img_posFacts"][0].update(image_id="abc"), "img_posFacts[0]: field 'image_id' must be"),
        (lambda r: r["txt_negFacts"][0].pop("snippet_id"), "txt_negFacts[0]: missing field 'snippet_id'"),
    ],
)
def test_a_malformed_record_names_the_file_the_guid_and_the_field(tmp_path, change, expected):
    data = json.loads(JSON.read_text(encoding="utf-8"))
    change(data[YESNO])
    path = tmp_path / "WebQA_train_val.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_webqa(path)
    assert f"{path}: record '{YESNO}'" in str(error.value) and expected in str(error.value)


def test_repeated_facts_are_kept_once_and_clashing_ones_refused(tmp_path):
    data = json.loads(JSON.read_text(encoding="utf-8"))
    data[SHAPE]["img_negFacts"].append(data[SHAPE]["img_posFacts"][0])  # the positive image also listed negative
    path = tmp_path / "repeated.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    stats = convert_webqa(path, TSV, tmp_path / "out")
    shape = next(e for e in read_qa(tmp_path / "out" / "train.jsonl") if e.id == SHAPE)
    assert shape.supporting == ["30000002"] and [e.id for e in shape.evidence] == ["30000002", "30000003"]
    assert stats.repeated_facts_skipped == 1

    data = json.loads(JSON.read_text(encoding="utf-8"))
    data[COLOR]["txt_negFacts"][0]["fact"] = "Testville lies on the Silver River."  # same snippet_id, new text
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(DataError) as error:
        convert_webqa(path, TSV, tmp_path / "clash")
    assert f"record '{COLOR}'" in str(error.value) and "d5bc0e9a0dba11ecb1e81171463288e9" in str(error.value)
    assert not (tmp_path / "clash").exists()


# ---------------------------------------------------------------------------------------------------------------
# `latentlab data webqa`
# ---------------------------------------------------------------------------------------------------------------


def test_cli_converts_and_refuses_an_existing_folder(tmp_path, capsys):
    out = tmp_path / "webqa"
    argv = ["data", "webqa", "--json", str(JSON), "--imgs", str(TSV), "--lineidx", str(LINEIDX), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "7 questions (train 4, val 3" in printed and f"written to {out}" in printed
    assert main(argv) == 2
    assert "already holds results; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--split", "train"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["images", "train.jsonl"]


def test_data_actions_take_only_their_own_options(capsys):
    parser = build_parser()
    args = parser.parse_args(["data", "hotpotqa-splits", "--out", "x", "--seed", "3", "--overwrite"])
    assert (args.action, args.seed, args.overwrite) == ("hotpotqa-splits", 3, True)
    with pytest.raises(SystemExit) as exit_code:
        main(["data", "webqa", "--json", "a", "--imgs", "b", "--out", "c", "--seed", "3"])
    assert exit_code.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --seed 3 (--seed is an option of `latentlab data hotpotqa-splits / nlvr`)" in err
    assert "`data webqa` takes --imgs, --json, --lineidx, --out, --overwrite, --split" in err
    with pytest.raises(SystemExit):
        main(["data", "webqa", "--out", "c"])
    assert "the following arguments are required: --json, --imgs" in capsys.readouterr().err


# --------------------------------------------------------------------------- the memory evaluation's `eval.f1: webqa`


def test_memory_evaluation_scores_webqa_accuracy_by_category_on_hand_made_answers():
    from latentlab.data.schema import QAExample
    from latentlab.memory.evaluate import _score, question_scores, table_metric
    from latentlab.memory.pipeline import Answer

    cases = [  # (category, gold, prediction, hand-worked accuracy)
        ("color", "The Blue Lake sign is blue.", "It is blue and white.", 2 / 3),  # colours {blue, white} vs {blue}
        ("number", "Grey Castle has four towers.", "Grey Castle has 3 towers.", 0.0),  # integers [3] vs [4]
        ("YesNo", "Yes, the flag of Testland is red.", "Yes.", 1.0),  # {yes} vs {yes}
        # recall of the content words green, grass, surround, pond, green, garden: green once and grass -> 2 / 6
        ("Others", "Green grass surrounds the pond in the Green Garden.", "green grass", 1 / 3),
    ]
    examples = [
        QAExample(id=f"q{i}", question="?", answers=[gold], question_type=category)
        for i, (category, gold, _, _) in enumerate(cases)
    ]
    answers = [Answer(question="?", answer=prediction) for _, _, prediction, _ in cases]
    scores = question_scores(examples, answers, "webqa")
    assert scores["webqa_accuracy"].tolist() == pytest.approx([c[3] for c in cases], abs=1e-12)
    assert {"exact_match", "f1"} <= set(scores) and "hotpotqa_f1" not in scores
    row = _score("no_retrieval", examples, answers, k=5, seconds=0.0, f1="webqa")  # nothing ranked
    assert row["webqa_accuracy"] == pytest.approx(0.5, abs=1e-12)  # (2/3 + 0 + 1 + 1/3) / 4
    assert [table_metric(c, "webqa") for c in ("f1", "f1_low", "f1_high", "rouge_l")] == [
        "webqa_accuracy",
        "webqa_accuracy_low",
        "webqa_accuracy_high",
        "rouge_l",
    ]


def test_webqa_scoring_refuses_a_question_without_a_webqa_category():
    from latentlab.data.schema import QAExample
    from latentlab.memory.evaluate import check_webqa_categories

    examples = [QAExample(id="ok", question="?", answers=["a"], question_type="color")]
    check_webqa_categories(examples, "run.yaml: key 'eval.f1'")
    examples.append(QAExample(id="hotpot-1", question="?", answers=["a"], question_type="bridge"))
    with pytest.raises(DataError, match=r"run\.yaml: key 'eval\.f1' is 'webqa'.*question 'hotpot-1'.*'bridge'"):
        check_webqa_categories(examples, "run.yaml: key 'eval.f1'")
