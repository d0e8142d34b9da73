"""User-facing data faults: each bad file is a DataError naming the file, the line (or record) and the id at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentlab.data.converters import (
    convert_gsm8k,
    convert_gsm8k_aug,
    convert_prosqa,
    extract_corpus,
    load_hotpotqa,
)
from latentlab.data.schema import Evidence, QAExample, read_corpus, read_cot, read_qa, to_record, write_jsonl
from latentlab.data.synthetic import generate_world, write_world
from latentlab.errors import DataError


def qa(qid: str, *evidence: dict, supporting: list[str] | None = None) -> dict:
    """A QA record whose first evidence item supports the answer unless ``supporting`` says otherwise."""
    evidence = evidence or ({"id": f"{qid}-e", "text": "Some fact."},)
    return {
        "id": qid,
        "question": "Where?",
        "answers": ["Here"],
        "evidence": list(evidence),
        "supporting": [evidence[0]["id"]] if supporting is None else supporting,
    }


def cot(qid: str) -> dict:
    return {"id": qid, "question": "1+1?", "steps": ["<<1+1=2>>"], "answer": "2"}


def lines(tmp_path: Path, name: str, *records: dict | str) -> Path:
    """A JSONL file of ``records`` (a string is written as it is, a dict as its JSON)."""
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def message_of(call, *args) -> str:
    with pytest.raises(DataError) as err:
        call(*args)
    return str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# 1. Duplicate question / example ids


def test_qa_file_with_a_duplicate_question_id_names_the_file_both_lines_and_the_id(tmp_path):
    path = lines(tmp_path, "qa.jsonl", qa("q1"), qa("q2"), "", qa("q1"))
    message = message_of(read_qa, path)
    assert f"{path}:4:" in message
    assert "line 1" in message
    assert "'q1'" in message


def test_cot_file_with_a_duplicate_example_id_names_the_file_both_lines_and_the_id(tmp_path):
    path = lines(tmp_path, "cot.jsonl", cot("c1"), cot("c7"), cot("c7"))
    message = message_of(read_cot, path)
    assert f"{path}:3:" in message
    assert "line 2" in message
    assert "'c7'" in message


def test_corpus_duplicate_id_names_both_lines(tmp_path):
    path = lines(tmp_path, "corpus.jsonl", {"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"})
    message = message_of(read_corpus, path)
    assert f"{path}:3: duplicate id 'a'" in message
    assert "line 1" in message


def test_coconut_json_with_a_duplicate_own_id_names_both_records(tmp_path):
    """Converting it would write a reasoning file that read_cot refuses; refuse at conversion instead."""
    record = {"id": "p-1", "question": "Q?", "steps": ["s."], "answer": "A"}
    path = tmp_path / "prosqa_dev.json"
    path.write_text(json.dumps([record, {**record, "id": "p-2"}, record]), encoding="utf-8")
    message = message_of(convert_prosqa, path)
    assert f"{path}: record 2" in message
    assert "record 0" in message
    assert "'p-1'" in message


# ---------------------------------------------------------------------------------------------------------------------
# 2. One evidence id with two contents across questions


def test_qa_file_where_two_questions_give_one_evidence_id_two_texts_names_both_questions_lines_and_the_id(tmp_path):
    path = lines(
        tmp_path,
        "qa.jsonl",
        qa("q1", {"id": "fact-7", "text": "Ann was born in Oslo."}),
        qa("q2", {"id": "other", "text": "Unrelated."}),
        qa("q3", {"id": "fact-7", "text": "Ann was born in Rome."}),
    )
    message = message_of(read_qa, path)
    assert f"{path}:3:" in message and f"({path}:1)" in message
    for expected in ("'fact-7'", "'q1'", "'q3'", "Oslo", "Rome"):
        assert expected in message


def test_qa_file_where_two_questions_give_one_evidence_id_two_titles_is_refused(tmp_path):
    path = lines(
        tmp_path,
        "qa.jsonl",
        qa("q1", {"id": "T#0", "text": "He was born in 1950.", "title": "Bob Smith"}),
        qa("q2", {"id": "T#0", "text": "He was born in 1950.", "title": "Tom Jones"}),
    )
    message = message_of(read_qa, path)
    for expected in (f"{path}:2:", "'T#0'", "'q1'", "'q2'", "Bob Smith", "Tom Jones"):
        assert expected in message


def test_qa_file_sharing_one_evidence_item_with_identical_content_across_questions_loads(tmp_path):
    shared = {"id": "fact-7", "text": "Ann was born in Oslo.", "title": "Ann"}
    path = lines(tmp_path, "qa.jsonl", qa("q1", shared), qa("q2", {"id": "x", "text": "X."}, shared))
    assert [ex.id for ex in read_qa(path)] == ["q1", "q2"]
    assert [e.id for e in extract_corpus(read_qa(path))] == ["fact-7", "x"]


def test_hotpotqa_records_giving_one_sentence_id_two_texts_name_the_file_both_records_and_the_id(tmp_path):
    def record(qid: str, sentence: str) -> dict:
        return {
            "_id": qid,
            "question": "Q?",
            "answer": "A",
            "supporting_facts": [["T", 0]],
            "context": [["T", [sentence]]],
        }

    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([record("x1", "Old text."), record("x2", "New text.")]), encoding="utf-8")
    message = message_of(load_hotpotqa, path)
    assert f"{path}: record 1" in message and "record 0" in message
    for expected in ("'T#0'", "'x1'", "'x2'", "Old text.", "New text."):
        assert expected in message


def test_extract_corpus_clash_on_the_image_names_both_images():
    """Evidence built in code may carry an image (the field stays for the coming image encoder)."""
    first = QAExample("q1", "?", ["a"], [Evidence("fig-1", "A chart.", image="a.png")], ["fig-1"])
    second = QAExample("q2", "?", ["a"], [Evidence("fig-1", "A chart.", image="b.png")], [])
    message = message_of(extract_corpus, [first, second])
    for expected in ("'fig-1'", "'q1'", "'q2'", "a.png", "b.png"):
        assert expected in message


def test_synthetic_world_sharing_facts_across_questions_still_loads(tmp_path):
    """The synthetic world reuses one fact (same id, same text) in many questions' pools on purpose."""
    world = generate_world(num_people=30, seed=3)
    train = world.questions["train"]
    ids = [e.id for ex in train for e in ex.evidence]
    assert len(ids) > len(set(ids))  # the case under test: shared facts
    paths = write_world(world, tmp_path)
    for split in ("train", "validation", "test"):
        assert read_qa(paths[split]) == world.questions[split]
    assert read_corpus(paths["corpus"]) == world.corpus()
    corpus = extract_corpus(train)
    assert len(corpus) == len(set(ids))
    assert all(world.facts[e.id] == e.text for e in corpus)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Image evidence: read with its path resolved and where it was read, loaded (and refused) later


def test_corpus_image_item_is_read_with_its_resolved_path_and_line(tmp_path):
    (tmp_path / "chart.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    path = lines(tmp_path, "corpus.jsonl", {"id": "a", "text": "Text."}, {"id": "img-1", "image": "chart.png"})
    text, image = read_corpus(path)
    assert image == Evidence("img-1", image=str(tmp_path / "chart.png"))
    assert image.where == f"{path}:2" and text.where == f"{path}:1"
    # Where an item was read is not part of its content: the record written back has no such field.
    assert "where" not in to_record(image)


def test_qa_image_evidence_is_read_naming_file_line_question_and_evidence(tmp_path):
    image = {"id": "img-1", "image": "pics/chart.png", "text": "A caption.", "title": "Sales"}
    path = lines(tmp_path, "train.jsonl", qa("q1"), qa("q2", {"id": "t", "text": "T."}, image))
    item = read_qa(path)[1].evidence[1]
    assert item.image == str(tmp_path / "pics" / "chart.png") and item.title == "Sales"
    assert item.where == f"{path}:2 (question 'q2', evidence 1)"
    blank = lines(tmp_path, "blank.jsonl", qa("q1", {"id": "img-2", "image": " "}))
    assert "'img-2' has a blank 'image'" in message_of(read_qa, blank)


def test_display_text_of_an_image_item_without_text_raises_instead_of_a_placeholder():
    item = Evidence("img-1", image="chart.png", title="Sales")
    with pytest.raises(DataError, match=r"'img-1'.*with no text description: a text reader.*has nothing to read"):
        item.display_text()
    with pytest.raises(DataError, match="'bare'.*no text"):
        Evidence("bare").display_text()


def test_display_text_of_text_items_is_unchanged():
    assert Evidence("e", "He was born in 1950.", title="Bob").display_text() == "Bob: He was born in 1950."
    assert Evidence("e", "Ann was born in Oslo.").display_text() == "Ann was born in Oslo."
    # An item with text and an image (built in code) reads its text.
    assert Evidence("e", "A chart of sales.", image="c.png").display_text() == "A chart of sales."


# ---------------------------------------------------------------------------------------------------------------------
# 4. Bytes that are not UTF-8, lone surrogates


@pytest.mark.parametrize(
    ("reader", "good"),
    [(read_qa, qa("q1")), (read_corpus, {"id": "a", "text": "Text."}), (read_cot, cot("c1"))],
)
def test_jsonl_byte_that_is_not_utf8_names_the_file_and_line(tmp_path, reader, good):
    path = tmp_path / "data.jsonl"
    bad = json.dumps({**good, "id": "z"}).encode().replace(b'"z"', b'"caf\xe9"')  # latin-1 e-acute
    path.write_bytes(json.dumps(good).encode() + b"\n\n" + bad + b"\n")
    message = message_of(reader, path)
    assert f"{path}:3:" in message
    assert "0xE9" in message and "UTF-8" in message


@pytest.mark.parametrize(
    ("reader", "record"),
    [
        (read_qa, qa("q1", {"id": "e1", "text": "Cut \ud800 here."})),
        (read_corpus, {"id": "a", "text": "Cut \udc00 here."}),
        (read_cot, {**cot("c1"), "steps": ["<<1+1=2>>", "\ud83d"]}),
    ],
)
def test_jsonl_lone_surrogate_escape_names_the_file_and_line(tmp_path, reader, record):
    good = {read_qa: qa("q0"), read_corpus: {"id": "b", "text": "Fine."}, read_cot: cot("c0")}[reader]
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(record) + "\n", encoding="ascii")  # ascii: \uXXXX escapes
    message = message_of(reader, path)
    assert f"{path}:2:" in message
    assert "lone" in message and "surrogate" in message


def test_jsonl_surrogate_pair_escape_is_a_valid_character(tmp_path):
    path = lines(tmp_path, "corpus.jsonl", '{"id": "a", "text": "Smile \\ud83d\\ude00."}')
    assert read_corpus(path)[0].text == "Smile \U0001f600."


def test_converters_byte_that_is_not_utf8_names_the_file_and_line(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_bytes(b'{"question": "Q?", "answer": "#### 2"}\n{"question": "Caf\xe9?", "answer": "#### 2"}\n')
    assert f"{gsm}:2:" in message_of(convert_gsm8k, gsm)
    aug = tmp_path / "aug.txt"
    aug.write_bytes(b"Q?||<<1+1=2>> #### 2\n\nCaf\xe9?||<<1+1=2>> #### 2\n")
    assert f"{aug}:3:" in message_of(convert_gsm8k_aug, aug)
    hotpot = tmp_path / "hotpot.json"
    hotpot.write_bytes(b'[\n{"_id": "x1",\n "question": "Caf\xe9?"}]')
    message = message_of(load_hotpotqa, hotpot)
    assert f"{hotpot}:3:" in message and "0xE9" in message


def test_converters_lone_surrogate_names_the_file_and_the_record(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text('{"question": "Q?", "answer": "#### 2"}\n{"question": "Q \\udfff?", "answer": "#### 2"}\n')
    assert f"{gsm}:2:" in message_of(convert_gsm8k, gsm)
    good = {"question": "Q?", "steps": ["s."], "answer": "A"}
    prosqa = tmp_path / "prosqa.json"
    prosqa.write_text(json.dumps([good, {**good, "steps": ["s \ud800."]}]), encoding="ascii")
    message = message_of(convert_prosqa, prosqa)
    assert f"{prosqa}: record 1" in message and "surrogate" in message


# ---------------------------------------------------------------------------------------------------------------------
# 5. Blank texts


def test_corpus_item_with_a_blank_text_names_file_line_and_id(tmp_path):
    path = lines(tmp_path, "corpus.jsonl", {"id": "a", "text": "Text."}, {"id": "blank-1", "text": " \t "})
    message = message_of(read_corpus, path)
    assert f"{path}:2:" in message and "'blank-1'" in message and "blank" in message


def test_corpus_whose_texts_are_all_blank_is_refused(tmp_path):
    path = lines(tmp_path, "corpus.jsonl", {"id": "a", "text": "  "}, {"id": "b", "text": "\n"})
    message = message_of(read_corpus, path)
    assert f"{path}:1:" in message and "'a'" in message


def test_corpus_file_without_any_record_is_refused(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    assert str(path) in message_of(read_corpus, path)


def test_qa_evidence_with_a_blank_text_names_file_line_question_and_evidence_id(tmp_path):
    path = lines(tmp_path, "qa.jsonl", qa("q1", {"id": "e1", "text": "Fine."}, {"id": "e2", "text": "   "}))
    message = message_of(read_qa, path)
    assert f"{path}:1 (question 'q1', evidence 1)" in message
    assert "'e2'" in message and "blank" in message


def test_round_trip_of_written_records_still_loads(tmp_path):
    """What write_jsonl writes (text items, titles, unicode) reads back equal."""
    corpus = [Evidence("a", "Zoë lives in Åre.", title="Zoë"), Evidence("b", "Smile \U0001f600.")]
    assert read_corpus(write_jsonl(tmp_path / "corpus.jsonl", corpus)) == corpus
