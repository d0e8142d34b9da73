"""Typed records of latentlab's data formats and their JSONL readers and writers.

Readers check every line and raise ``DataError`` naming the file, the line number and what was expected.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from latentlab import io as atomic_io
from latentlab.errors import DataError


def titled(title: str | None, body: str) -> str:
    """``Title: body`` when the item has a title, else the body.

    HotpotQA sentences often name their subject only in their paragraph's title ("He was born in 1950."), so the
    title is part of what every reader of the item sees: the compressor, BM25, the dense encoder and the generator.
    """
    return f"{title}: {body}" if title else body


def described_item(item: Evidence) -> bool:
    """Whether an item has text: a sentence, or for an image a description (its caption) a text reader can use."""
    return bool(item.text and item.text.strip())


@dataclass(frozen=True)
class Evidence:
    """One evidence item: a sentence or passage (``text``), or an image (``image`` path) with an optional title and,
    where the data has one, a text description of the image in ``text``.

    The image path is resolved when the item is read (against its file's folder); ``where`` says where it was read
    (``corpus.jsonl:3``), so that an image that fails to load later is named with its file and line.
    """

    id: str
    text: str | None = None
    image: str | None = None
    title: str | None = None
    where: str | None = field(default=None, compare=False, repr=False)
    """Where the item was read (``file:line``), when it was read from a file; not part of its content."""

    def display_text(self) -> str:
        """What the compressor, the text retrievers and a raw-text prompt read for this item (``titled``).

        For an image item that is its text description. One without a description raises rather than reading as a
        placeholder such as ``"[image chart.png]"``: a text reader would encode that string, and retrieval would
        match it, as if it were the image's content.
        """
        if self.text is None or not self.text.strip():
            if self.image:
                raise DataError(
                    f"evidence '{self.id}' is an image ('{self.image}') with no text description: a text reader "
                    f"(BM25, dense, a raw-text prompt) has nothing to read (expected a non-blank 'text' describing it)"
                )
            raise DataError(f"evidence '{self.id}' has no text (expected a non-blank 'text')")
        return titled(self.title, self.text)


@dataclass(frozen=True)
class QAExample:
    """A question with its gold answers, its evidence pool, the ids of the supporting evidence and, where the
    dataset says, its kind (``question_type``: HotpotQA's ``bridge`` or ``comparison``)."""

    id: str
    question: str
    answers: list[str]
    evidence: list[Evidence] = field(default_factory=list)
    supporting: list[str] = field(default_factory=list)
    question_type: str | None = None
    """The dataset's own kind of question (HotpotQA's ``type``); evaluation breaks its tables down by it."""

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


# What ``errors="surrogateescape"`` decodes a byte that is not UTF-8 to; valid UTF-8 never decodes to a surrogate.
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON ``\uD800``-``\uDFFF`` escape: the only way a lone surrogate gets into text that decoded as UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def refuse_undecodable(text: str, path: str | os.PathLike, first_line: int = 1) -> None:
    """Raise naming ``path:line`` if ``text`` (read with ``errors="surrogateescape"``) held a byte that is not UTF-8.

    Reading with the strict codec instead raises a bare ``UnicodeDecodeError`` with a byte offset and no line, far
    from anything a user can act on. ``first_line`` is the line number of the first line of ``text``.
    """
    bad = _UNDECODED_BYTE.search(text)
    if bad is None:
        return
    line = first_line + text.count("\n", 0, bad.start())
    column = bad.start() - text.rfind("\n", 0, bad.start())
    raise DataError(
        f"{path}:{line}: byte 0x{ord(bad.group()) - 0xDC00:02X} at column {column} is not UTF-8 (expected a UTF-8 "
        f"file; re-encode it, e.g. `iconv -f latin1 -t utf-8`)"
    )


def has_surrogate_escape(raw: str) -> bool:
    """Whether raw JSON text holds a ``\\uD800``-``\\uDFFF`` escape: a cheap test before ``refuse_lone_surrogates``."""
    return _SURROGATE_ESCAPE.search(raw) is not None


def _surrogate_field(value: Any, at: str) -> str | None:
    """The path (``evidence[1].text``) of the first string in ``value``, key or value, holding a surrogate."""
    if isinstance(value, str):
        return (at or "(top level)") if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = f"{at}.{key}" if at else str(key)
            found = name if _SURROGATE.search(str(key)) else _surrogate_field(item, name)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _surrogate_field(item, f"{at}[{index}]")
            if found:
                return found
    return None


def refuse_lone_surrogates(obj: Any, where: str) -> None:
    """Raise naming ``where`` and the field if a parsed JSON value holds a lone UTF-16 surrogate.

    ``json`` turns an unpaired escape such as ``"\\ud800"`` into a string that cannot be encoded as UTF-8, so it
    would crash the tokenizer (or ``write_jsonl``) much later, far from the line that holds it. A proper pair
    (``"\\ud83d\\ude00"``) decodes to one character and passes.
    """
    found = _surrogate_field(obj, "")
    if found is None:
        return
    rid = obj.get("id") if isinstance(obj, dict) else None
    whose = f"record '{rid}' " if isinstance(rid, str) else ""
    raise DataError(
        f"{where}: {whose}field '{found}' holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its "
        f"pair), which no tokenizer can encode (expected valid Unicode text)"
    )


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
    """An evidence (or corpus) record: ``{"id", "text"?, "image"?, "title"?}`` with a non-blank text or an image.

    A relative ``image`` path is resolved against ``base_dir`` (the file's folder). Whether the file exists and
    decodes is checked where it is loaded (``latentlab.memory.vision.load_image``), with ``where`` in the message, so
    that ``index build --skip-bad`` can build the rest. A blank text is refused: it would compress to a latent that
    carries nothing and still take a slot in every index and batch.
    """
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
    if image is not None:
        if not image.strip():
            raise DataError(f"{where}: evidence '{eid}' has a blank 'image' (expected the path of an image file)")
        path = Path(image).expanduser()
        image = os.path.normpath(base_dir / path) if base_dir is not None and not path.is_absolute() else str(path)
    elif text is None:
        raise DataError(f"{where}: evidence '{eid}' has neither 'text' nor 'image' (expected a non-blank 'text')")
    if text is not None and not text.strip():
        raise DataError(
            f"{where}: evidence '{eid}' has a blank 'text' {json.dumps(text)} (expected a non-blank 'text')"
        )
    return Evidence(id=eid, text=text, image=image, title=title, where=where)


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
    question_type = obj.get("question_type")
    if question_type is not None and (not isinstance(question_type, str) or not question_type.strip()):
        raise DataError(
            f"{where}: question '{qid}' field 'question_type' must be a non-empty string such as \"bridge\" "
            f"(or absent), got {json.dumps(question_type)[:80]}"
        )
    return QAExample(
        id=qid,
        question=question,
        answers=list(answers),
        evidence=evidence,
        supporting=list(supporting),
        question_type=question_type,
    )


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


def iter_numbered_jsonl(
    path: str | os.PathLike, parse: Callable[[Any, str, Path | None], T]
) -> Iterator[tuple[int, T]]:
    """Yield ``(line number, parsed record)`` of a JSONL file; blank lines are skipped, anything malformed is an error.

    The line numbers let the readers name both lines of a clash (a repeated id). Bytes that are not UTF-8 and lone
    surrogate escapes are refused here, at their line, rather than as a bare ``UnicodeDecodeError`` now or a
    tokenizer crash later.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, start=1):
            refuse_undecodable(line, path, number)
            if not line.strip():
                continue
            where = _where(path, number)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            if has_surrogate_escape(line):
                refuse_lone_surrogates(obj, where)
            yield number, parse(obj, where, path.parent)


def iter_jsonl(path: str | os.PathLike, parse: Callable[[Any, str, Path | None], T]) -> Iterator[T]:
    """Yield parsed records of a JSONL file (``iter_numbered_jsonl`` without the line numbers)."""
    for _, record in iter_numbered_jsonl(path, parse):
        yield record


def read_jsonl(path: str | os.PathLike, parse: Callable[[Any, str, Path | None], T]) -> list[T]:
    return list(iter_jsonl(path, parse))


def _read_unique(path: str | os.PathLike, parse: Callable[[Any, str, Path | None], T], why: str) -> list[tuple[int, T]]:
    """``(line, record)`` of a file whose records' ids must be unique; a repeat names both lines and the id."""
    numbered = list(iter_numbered_jsonl(path, parse))
    first_line: dict[str, int] = {}
    for number, record in numbered:
        if record.id in first_line:
            raise DataError(
                f"{_where(path, number)}: duplicate id '{record.id}' (also on line {first_line[record.id]}); "
                f"expected each id once, {why}"
            )
        first_line[record.id] = number
    return numbered


def read_qa(path: str | os.PathLike) -> list[QAExample]:
    """QA examples; question ids are unique and each evidence id names one content across the file."""
    numbered = _read_unique(path, parse_qa, "since predictions, metrics and mined negatives are keyed by question id")
    examples = [example for _, example in numbered]
    merge_evidence(examples, [_where(path, number) for number, _ in numbered])
    return examples


def read_corpus(path: str | os.PathLike) -> list[Evidence]:
    """A corpus for an index: at least one item, ids unique across the file, each a non-blank text or an image."""
    numbered = _read_unique(path, parse_evidence, "since the index returns items by id")
    if not numbered:
        raise DataError(f'{path}: no evidence records (expected one JSON object {{"id", "text"}} per line)')
    return [item for _, item in numbered]


def read_cot(path: str | os.PathLike) -> list[CoTExample]:
    """Reasoning examples; ids are unique (an id names one example in predictions and reports)."""
    return [example for _, example in _read_unique(path, parse_cot, "since predictions are keyed by example id")]


def merge_evidence(examples: Iterable[QAExample], wheres: Sequence[str] | None = None) -> dict[str, Evidence]:
    """Id -> evidence over many questions' pools, in first-seen order; one id with two contents is an error.

    The global corpus, the evaluation's lookups and the mined rankings all find evidence by id across questions, so
    two contents under one id would silently read one question's item in place of the other's. The same id with the
    same content is fine (the synthetic world shares facts across questions on purpose). ``wheres[i]`` says where
    example ``i`` was read (``"qa.jsonl:3"``), so the error can name the file and both lines.
    """
    merged: dict[str, tuple[Evidence, int, str]] = {}
    for position, example in enumerate(examples):
        for item in example.evidence:
            first = merged.get(item.id)
            if first is None:
                merged[item.id] = (item, position, example.id)
            elif first[0] != item:
                raise DataError(_clash_message(item, example.id, position, first, wheres))
    return {eid: item for eid, (item, _, _) in merged.items()}


def _clash_message(
    item: Evidence, qid: str, position: int, first: tuple[Evidence, int, str], wheres: Sequence[str] | None
) -> str:
    earlier, first_position, first_qid = first
    differences = "; ".join(
        f"{name} {json.dumps(a)[:120]} vs {json.dumps(b)[:120]}"
        for name, a, b in (
            ("text", earlier.text, item.text),
            ("title", earlier.title, item.title),
            ("image", earlier.image, item.image),
        )
        if a != b
    )
    here = f"{wheres[position]}: " if wheres else ""
    there = f" ({wheres[first_position]})" if wheres else ""
    return (
        f"{here}question '{qid}' has evidence '{item.id}' with a different content from question '{first_qid}'"
        f"{there}: {differences} (expected one content per evidence id, since evidence is looked up by id across "
        f"questions; give one of them a new id)"
    )


def to_record(item: Evidence | QAExample | CoTExample) -> dict:
    """A JSON-ready dict; ``None`` fields of evidence and an absent ``question_type`` are dropped."""
    record = asdict(item)
    if isinstance(item, QAExample):
        record["evidence"] = [
            {k: v for k, v in e.items() if v is not None and k != "where"} for e in record["evidence"]
        ]
        if record["question_type"] is None:
            del record["question_type"]  # records of untyped data stay as they were
    elif isinstance(item, Evidence):
        record = {k: v for k, v in record.items() if v is not None and k != "where"}
    return record


def write_jsonl(path: str | os.PathLike, items: Iterable[Evidence | QAExample | CoTExample | dict]) -> Path:
    """Write records atomically (through ``latentlab.io``): a crash mid-write leaves any earlier file untouched."""
    return atomic_io.write_jsonl(path, (item if isinstance(item, dict) else to_record(item) for item in items))
