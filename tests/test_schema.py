"""QA/CoT JSONL readers: round trips and errors that name file and line."""

import json

import pytest

from latentlab.data.schema import CoTExample, Evidence, QAExample, read_corpus, read_cot, read_qa, write_jsonl
from latentlab.errors import DataError


def _qa(**extra):
    record = {
        "id": "q1",
        "question": "Where?",
        "answers": ["Here"],
        "evidence": [{"id": "e1", "text": "It is here."}, {"id": "e2", "text": "Not there."}],
        "supporting": ["e1"],
    }
    record.update(extra)
    return record


def test_qa_round_trip(tmp_path):
    ex = QAExample("q1", "Where?", ["Here"], [Evidence("e1", "It is here.", title="T")], ["e1"])
    path = write_jsonl(tmp_path / "qa.jsonl", [ex])
    assert read_qa(path) == [ex]


def test_question_type_round_trips_and_untyped_records_stay_as_they_were(tmp_path):
    typed = QAExample("q1", "Where?", ["Here"], [Evidence("e1", "It is here.")], ["e1"], question_type="bridge")
    untyped = QAExample("q2", "Who?", ["Ann"], [Evidence("e2", "Ann did.")], ["e2"])
    path = write_jsonl(tmp_path / "qa.jsonl", [typed, untyped])
    assert read_qa(path) == [typed, untyped]
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["question_type"] == "bridge" and "question_type" not in second


@pytest.mark.parametrize("bad", [3, "", "  ", ["bridge"]])
def test_a_question_type_that_is_not_a_name_is_refused_naming_line_and_field(tmp_path, bad):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(_qa()) + "\n" + json.dumps(_qa(id="q2", question_type=bad)) + "\n")
    with pytest.raises(DataError, match=r"qa\.jsonl:2: question 'q2' field 'question_type' must be a non-empty string"):
        read_qa(path)


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(_qa()) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"qa\.jsonl:3: not valid JSON"):
        read_qa(path)


def test_supporting_id_missing_from_evidence(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(_qa(supporting=["e9"])) + "\n")
    with pytest.raises(DataError, match=r"qa\.jsonl:1: question 'q1' lists supporting id 'e9'.*not in its evidence"):
        read_qa(path)


def test_missing_field_and_evidence_without_text_or_image(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"id": "q", "question": "x"}) + "\n")
    with pytest.raises(DataError, match=r":1: missing field 'answers'"):
        read_qa(path)
    path.write_text(json.dumps(_qa(evidence=[{"id": "e1"}], supporting=[])) + "\n")
    with pytest.raises(DataError, match="neither 'text' nor 'image'"):
        read_qa(path)


def test_corpus_duplicate_id_and_missing_image(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(DataError, match="duplicate id 'a'"):
        read_corpus(path)
    # An image item is read as it stands: whether its file exists is checked where it is loaded
    # (latentlab.memory.vision.load_image), so that `index build --skip-bad` can build the rest.
    path.write_text('{"id": "a", "image": "nope.png", "title": "t"}\n')
    (item,) = read_corpus(path)
    assert item.image == str(tmp_path / "nope.png") and item.where == f"{path}:1"


def test_cot_missing_answer(tmp_path):
    path = tmp_path / "cot.jsonl"
    ok = CoTExample("c1", "1+1?", ["<<1+1=2>>"], "2")
    write_jsonl(path, [ok])
    assert read_cot(path) == [ok]
    path.write_text('{"id": "c2", "question": "q", "steps": []}\n')
    with pytest.raises(DataError, match=r"cot\.jsonl:1: example 'c2' is missing its 'answer'"):
        read_cot(path)


def test_write_is_atomic_on_failure(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "1"}])
    before = path.read_bytes()

    def broken():
        yield {"id": "2"}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))
