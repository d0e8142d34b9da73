"""Typed records of latentlab's data formats and their JSONL readers and writers.

Readers check every line and raise ``DataError`` naming the file, the line number and what was expected.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from latentlab.errors import DataError


def titled(title: str | None, body: str) -> str:
    """``Title: body`` when the item has a title, else the body.

    HotpotQA sentences often name their subject only in their paragraph's title ("He was born in 1950."), so the
    title is part of what every reader of the item sees: the compressor, BM25, the dense encoder and the generator.
    """
    return f"{title}: {body}" if title else body


@dataclass(frozen=True)
class Evidence:
    """One evidence item: a sentence or passage (``text``) or an image (``image`` path) with an optional title."""

    id: str
    text: str | None = None
    image: str | None = None
    title: str | None = None

    def display_text(self) -> str:
        """What the compressor, the text retrievers and a raw-text prompt read for this item (``titled``)."""
        return titled(self.title, self.text if self.text is not None else f"[image {self.image}]")


@dataclass(frozen=True)
class QAExample:
    """A question with its gold answers, its evidence pool and the ids of the supporting evidence."""

    id: str
    question: str
    answers: list[str]
    evidence: list[Evidence] = field(default_factory=list)
    supporting: list[str] = field(default_factory=list)

    def supporting_evidence(self) -> list[Evidence]:
        by_id = {e.id: e for e in self.evidence}
        return [by_id[i] for i in self.supporting]

    def negative_evidence(self) -> list[Evidence]:
        gold = set(self.supporting)
        return [e for e in self.evidence if e.id not in gold]


@dataclass(frozen=True)
class CoTExample:
    """A reasoning problem with its step trace and final answer."""

    id: str
    question: str
    steps: list[str]
    answer: str


def _where(path: str | os.PathLike, line: int) -> str:
    return f"{path}:{line}"


def _require(obj: dict, key: str, kind: type | tuple[type, ...], where: str, what: str) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}' (expected {what})")
    value = obj[key]
    if not isinstance(value, kind) or (kind is str and value == ""):
        raise DataError(f"{where}: field '{key}' must be {what}, got {json.dumps(value)[:80]}")
    return value


def _optional_str(obj: dict, key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {json.dumps(value)[:80]}")
    return value


def parse_evidence(obj: Any, where: str, base_dir: Path | None = None) -> Evidence:
    """An evidence (or corpus) record: ``{"id", "text"?, "image"?, "title"?}`` with text or image."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: evidence must be a JSON object, got {json.dumps(obj)[:80]}")
    eid = obj.get("id")
    if isinstance(eid, int) and not isinstance(eid, bool):
        eid = str(eid)
    if not isinstance(eid, str) or not eid:
        raise DataError(f"{where}: evidence needs a non-empty string 'id', got {json.dumps(eid)}")
    text = _optional_str(obj, "text", where)
    image = _optional_str(obj, "image", where)
    title = _optional_str(obj, "title", where)
    if not text and not image:
        raise DataError(f"{where}: evidence '{eid}' has neither 'text' nor 'image' (expected at least one)")
    if image and base_dir is not None and not Path(image).is_absolute():
        image = str(base_dir / image)
    if image and not Path(image).exists():
        raise DataError(f"{where}: evidence '{eid}' names image '{image}', which does not exist")
    return Evidence(id=eid, text=text, image=image, title=title)


def parse_qa(obj: Any, where: str, base_dir: Path | None = None) -> QAExample:
    """A QA-with-evidence record; every supporting id must be in the question's evidence list."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {json.dumps(obj)[:80]}")
    qid = _require(obj, "id", str, where, "a non-empty string")
    question = _require(obj, "question", str, where, "a non-empty string")
    answers = _require(obj, "answers", list, where, "a list of answer strings")
    if not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(f"{where}: question '{qid}' field 'answers' must be a non-empty list of strings")
    raw_evidence = obj.get("evidence", [])
    if not isinstance(raw_evidence, list):
        raise DataError(f"{where}: question '{qid}' field 'evidence' must be a list of evidence objects")
    evidence = [
        parse_evidence(e, f"{where} (question '{qid}', evidence {i})", base_dir) for i, e in enumerate(raw_evidence)
    ]
    ids = [e.id for e in evidence]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise DataError(f"{where}: question '{qid}' has duplicate evidence ids {sorted(dup)}")
    supporting = obj.get("supporting", [])
    if not isinstance(supporting, list) or not all(isinstance(s, str) for s in supporting):
        raise DataError(f"{where}: question '{qid}' field 'supporting' must be a list of evidence ids")
    known = set(ids)
    for sid in supporting:
        if sid not in known:
            raise DataError(
                f"{where}: question '{qid}' lists supporting id '{sid}', which is not in its evidence list "
                f"(known ids: {', '.join(ids[:10])}{', ...' if len(ids) > 10 else ''})"
            )
    return QAExample(id=qid, question=question, answers=list(answers), evidence=evidence, supporting=list(supporting))


def parse_cot(obj: Any, where: str, base_dir: Path | None = None) -> CoTExample:
    """A reasoning record ``{"id", "question", "steps": [..], "answer"}``."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {json.dumps(obj)[:80]}")
    qid = obj.get("id")
    if isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    if not isinstance(qid, str) or not qid:
        raise DataError(f"{where}: missing field 'id' (expected a non-empty string)")
    question = _require(obj, "question", str, where, "a non-empty string")
    steps = _require(obj, "steps", list, where, "a list of step strings")
    if not all(isinstance(s, str) for s in steps):
        raise DataError(f"{where}: example '{qid}' field 'steps' must be a list of strings")
    answer = obj.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{where}: example '{qid}' is missing its 'answer' (expected a non-empty string)")
    return CoTExample(id=qid, question=question, steps=list(steps), answer=answer)


T = TypeVar("T")


def iter_jsonl(path: str | os.PathLike, parse: Callable[[Any, str, Path | None], T]) -> Iterator[T]:
    """Yield parsed records of a JSONL file; blank lines are skipped, anything else malformed is an error."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = _where(path, number)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            yield parse(obj, where, path.parent)


def read_jsonl(path: str | os.PathLike, parse: Callable[[Any, str, Path | None], T]) -> list[T]:
    return list(iter_jsonl(path, parse))


def read_qa(path: str | os.PathLike) -> list[QAExample]:
    return read_jsonl(path, parse_qa)


def read_corpus(path: str | os.PathLike) -> list[Evidence]:
    """A corpus for an index; ids must be unique across the file."""
    items = read_jsonl(path, parse_evidence)
    seen: dict[str, int] = {}
    for position, item in enumerate(items):
        if item.id in seen:
            raise DataError(f"{path}: duplicate id '{item.id}' (records {seen[item.id] + 1} and {position + 1})")
        seen[item.id] = position
    return items


def read_cot(path: str | os.PathLike) -> list[CoTExample]:
    return read_jsonl(path, parse_cot)


def to_record(item: Evidence | QAExample | CoTExample) -> dict:
    """A JSON-ready dict; ``None`` fields of evidence are dropped."""
    record = asdict(item)
    if isinstance(item, QAExample):
        record["evidence"] = [{k: v for k, v in e.items() if v is not None} for e in record["evidence"]]
    elif isinstance(item, Evidence):
        record = {k: v for k, v in record.items() if v is not None}
    return record


def write_jsonl(path: str | os.PathLike, items: Iterable[Evidence | QAExample | CoTExample | dict]) -> Path:
    """Write records atomically: a crash mid-write leaves any earlier file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for item in items:
                record = item if isinstance(item, dict) else to_record(item)
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
