"""Converters from the official formats of HotpotQA, GSM8K, GSM8k-Aug, GSM-Hard, SVAMP, MultiArith, ProsQA and
ProntoQA to latentlab records.

Every malformed record is a ``DataError`` naming the file, the line or record index, and what was expected.

Arithmetic steps are kept in the calculator form ``<<48/2=24>>`` everywhere (GSM8K, GSM8k-Aug and the synthetic
chains): that is how Coconut's GSM8k-Aug data writes them, and the rewards of the reference code (format score,
coherence) parse the ``<<``/``>>`` delimiters. ``equation_parts`` recovers ``("48/2", "24")`` from a step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from latentlab.data.schema import (
    CoTExample,
    Evidence,
    QAExample,
    has_surrogate_escape,
    merge_evidence,
    refuse_lone_surrogates,
    refuse_undecodable,
)
from latentlab.errors import DataError
from latentlab.registry import Registry

log = logging.getLogger(__name__)

_CALCULATOR = re.compile(r"<<([^<>]*)>>")


# ---------------------------------------------------------------------------------------------------------------------
# Equation steps shared by GSM8K, GSM8k-Aug and the synthetic arithmetic chains


def equation_step(expression: str, result: str | int) -> str:
    """The step string of one calculation: ``equation_step("48/2", 24) == "<<48/2=24>>"``."""
    return f"<<{expression}={result}>>"


def equation_parts(step: str) -> tuple[str, str]:
    """``"<<48/2=24>>" -> ("48/2", "24")``; the brackets are optional. The result is the text after the last ``=``."""
    body = step.strip()
    if body.startswith("<<") and body.endswith(">>"):
        body = body[2:-2]
    expression, sep, result = body.rpartition("=")
    if not sep:
        raise ValueError(f"step {step!r} is not an equation (expected 'expression=result')")
    return expression, result


def normalise_number(text: str) -> str:
    """A final numeric answer as GSM8K states it, with thousands separators removed: ``" 1,450,000" -> "1450000"``."""
    return text.strip().replace(",", "")


def format_number(value: int | float) -> str:
    """A numeric answer stored as a JSON number, as answer text: ``6.0 -> "6"``, ``-2.5 -> "-2.5"``,
    ``2.0107e-06 -> "0.0000020107"``.

    Positional, never an exponent (the answer matcher reads only plain decimals as numbers); a float keeps its
    shortest round-trip digits (``repr``), so nothing is rounded: GSM-Hard's ``3244047.0999999996`` stays as stored.
    """
    exact = Decimal(value) if isinstance(value, int) else Decimal(repr(float(value)))
    if exact == exact.to_integral_value():
        return str(int(exact))  # int() also maps -0.0 to 0
    return format(exact.normalize(), "f")


# ---------------------------------------------------------------------------------------------------------------------
# Shared file helpers


def _load_json(path: Path) -> Any:
    """The parsed file; a byte that is not UTF-8 or a lone surrogate escape is refused naming its line or record."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        text = handle.read()
    refuse_undecodable(text, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if has_surrogate_escape(text):
        for index, record in enumerate(data if isinstance(data, list) else [data]):
            refuse_lone_surrogates(record, f"{path}: record {index}" if isinstance(data, list) else str(path))
    return data


def _load_json_list(path: Path, what: str) -> list:
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {what}, got a JSON {type(data).__name__}")
    return data


def _text_lines(path: Path) -> Iterable[tuple[int, str]]:
    """(1-based line number, line without its newline) for every non-blank line; a byte that is not UTF-8 is refused
    naming its line."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, start=1):
            refuse_undecodable(line, path, number)
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _jsonl_objects(path: Path, what: str) -> Iterator[tuple[str, dict]]:
    """``("<path>:<line>", object)`` for every non-blank line of a JSON Lines file; a line that is not JSON, holds a
    lone surrogate escape or is not an object is refused naming its line (``what``: the keys an object needs)."""
    for number, line in _text_lines(path):
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if has_surrogate_escape(line):
            refuse_lone_surrogates(record, where)
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object with {what}, got {json.dumps(record)[:80]}")
        yield where, record


def _string_field(record: dict, key: str, where: str, what: str = "a non-empty string") -> str:
    if key not in record:
        raise DataError(f"{where}: missing field '{key}' (expected {what})")
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{key}' must be {what}, got {json.dumps(value)[:80]}")
    return value


def _number_value(value: Any, key: str, where: str, what: str) -> str:
    """``format_number`` of a finite JSON number; a string, a boolean, NaN or an infinity is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: field '{key}' must be {what}, got {json.dumps(value)[:80]}")
    return format_number(value)


def _number_field(record: dict, key: str, where: str, what: str) -> str:
    if key not in record:
        raise DataError(f"{where}: missing field '{key}' (expected {what})")
    return _number_value(record[key], key, where, what)


def _refuse_repeated_ids(examples: list[CoTExample], wheres: list[str]) -> None:
    """A repeated id is refused here: read_cot would refuse the converted file (predictions are keyed by id)."""
    first: dict[str, int] = {}
    for index, example in enumerate(examples):
        if example.id in first:
            raise DataError(
                f"{wheres[index]}: id '{example.id}' is also the id of record {first[example.id]} (expected unique ids)"
            )
        first[example.id] = index


def default_split(path: str | os.PathLike, dataset: str) -> str:
    """The split name used in generated ids: the file stem without a leading ``<dataset>_`` (``prosqa_test`` -> ``test``)."""
    stem = Path(path).stem
    prefix = f"{dataset}_"
    return stem[len(prefix) :] if stem.startswith(prefix) and len(stem) > len(prefix) else stem


# ---------------------------------------------------------------------------------------------------------------------
# HotpotQA


@dataclass
class HotpotQAStats:
    """What ``load_hotpotqa`` kept and skipped; the skipped counts are official quirks, not errors."""

    questions: int = 0
    sentences: int = 0
    supporting: int = 0
    empty_sentences_skipped: int = 0
    duplicate_paragraphs_skipped: int = 0
    supporting_title_missing: int = 0
    supporting_index_out_of_range: int = 0
    supporting_empty_sentence: int = 0

    @property
    def supporting_skipped(self) -> int:
        return self.supporting_title_missing + self.supporting_index_out_of_range + self.supporting_empty_sentence

    def summary(self) -> str:
        return (
            f"{self.questions} questions, {self.sentences} evidence sentences, {self.supporting} supporting facts kept; "
            f"skipped {self.supporting_title_missing} supporting facts whose title is not in the context, "
            f"{self.supporting_index_out_of_range} with a sentence index out of range, "
            f"{self.supporting_empty_sentence} pointing at an empty sentence, "
            f"{self.empty_sentences_skipped} empty sentences, {self.duplicate_paragraphs_skipped} repeated paragraphs"
        )


def _hotpot_paragraphs(record: dict, where: str) -> list[tuple[str, list[str]]]:
    context = record.get("context")
    if not isinstance(context, list):
        raise DataError(
            f"{where}: field 'context' must be a list of [title, [sentence, ...]], got {json.dumps(context)[:80]}"
        )
    paragraphs = []
    for position, paragraph in enumerate(context):
        if (
            not isinstance(paragraph, list)
            or len(paragraph) != 2
            or not isinstance(paragraph[0], str)
            or not isinstance(paragraph[1], list)
            or not all(isinstance(s, str) for s in paragraph[1])
        ):
            raise DataError(
                f"{where}: context[{position}] must be [title, [sentence, ...]] with string sentences, "
                f"got {json.dumps(paragraph)[:80]}"
            )
        paragraphs.append((paragraph[0], paragraph[1]))
    return paragraphs


def _hotpot_supporting_facts(record: dict, where: str) -> list[tuple[str, int]]:
    facts = record.get("supporting_facts")
    if not isinstance(facts, list):
        raise DataError(
            f"{where}: field 'supporting_facts' must be a list of [title, sentence_index], got {json.dumps(facts)[:80]}"
        )
    parsed = []
    for position, fact in enumerate(facts):
        ok = isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)
        ok = ok and isinstance(fact[1], int) and not isinstance(fact[1], bool)
        if not ok:
            raise DataError(
                f"{where}: supporting_facts[{position}] must be [title, sentence_index], got {json.dumps(fact)[:80]}"
            )
        parsed.append((fact[0], fact[1]))
    return parsed


def _hotpot_example(record: Any, where: str, stats: HotpotQAStats) -> QAExample:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a HotpotQA object with _id, question, answer, context, supporting_facts")
    qid = _string_field(record, "_id", where)
    where = f"{where} (_id {qid})"
    question = _string_field(record, "question", where)
    answer = _string_field(
        record, "answer", where, "a non-empty string (test-set records without answers cannot be converted)"
    )

    evidence: list[Evidence] = []
    sentences_by_title: dict[str, list[str]] = {}
    for title, sentences in _hotpot_paragraphs(record, where):
        if title in sentences_by_title:
            # Ids are title#index, so a second paragraph with the same title can only be kept if it is the same text.
            if sentences_by_title[title] != sentences:
                raise DataError(f"{where}: context has two different paragraphs titled '{title}' (ids would clash)")
            stats.duplicate_paragraphs_skipped += 1
            continue
        sentences_by_title[title] = sentences
        for index, sentence in enumerate(sentences):
            text = sentence.strip()
            if not text:
                stats.empty_sentences_skipped += 1
                continue
            evidence.append(Evidence(id=f"{title}#{index}", text=text, title=title))
    stats.sentences += len(evidence)

    supporting: list[str] = []
    for title, index in _hotpot_supporting_facts(record, where):
        if title not in sentences_by_title:
            stats.supporting_title_missing += 1
        elif not 0 <= index < len(sentences_by_title[title]):
            stats.supporting_index_out_of_range += 1
            log.debug("%s: supporting fact [%r, %d] is out of range; skipped", where, title, index)
        elif not sentences_by_title[title][index].strip():
            stats.supporting_empty_sentence += 1
        elif f"{title}#{index}" not in supporting:
            supporting.append(f"{title}#{index}")
    stats.supporting += len(supporting)
    stats.questions += 1
    question_type = record.get("type")
    if question_type is not None and (not isinstance(question_type, str) or not question_type.strip()):
        raise DataError(
            f"{where}: field 'type' must be the question type as a non-empty string (\"bridge\" or "
            f'"comparison"), got {json.dumps(question_type)[:80]}'
        )
    return QAExample(
        id=qid,
        question=question,
        answers=[answer],
        evidence=evidence,
        supporting=supporting,
        question_type=question_type,
    )


def load_hotpotqa(path: str | os.PathLike) -> tuple[list[QAExample], HotpotQAStats]:
    """Official HotpotQA JSON (train, dev distractor or dev fullwiki) -> questions with every context sentence.

    Evidence ids are ``f"{title}#{sentence_index}"`` with the official index, so they match ``supporting_facts``.
    The official ``type`` (bridge / comparison) is kept as ``question_type`` (None where a record has none).
    Supporting facts absent from the context (fullwiki retrieval missed the paragraph, or an official index past the
    paragraph's end) are skipped and counted in the stats, never fatal. Empty sentences are skipped too.
    """
    path = Path(path)
    stats = HotpotQAStats()
    records = _load_json_list(path, "HotpotQA questions")
    wheres = [f"{path}: record {i}" for i in range(len(records))]
    examples = [_hotpot_example(record, where, stats) for record, where in zip(records, wheres)]
    seen: dict[str, int] = {}
    for i, example in enumerate(examples):
        if example.id in seen:
            raise DataError(f"{path}: records {seen[example.id]} and {i} share _id '{example.id}'")
        seen[example.id] = i
    # Ids are title#index across the whole file, so a title whose sentences differ between questions would clash.
    merge_evidence(examples, wheres)
    return examples, stats


def convert_hotpotqa(path: str | os.PathLike) -> list[QAExample]:
    """``load_hotpotqa`` with its skip counts logged (a warning when supporting facts were skipped)."""
    examples, stats = load_hotpotqa(path)
    level = logging.WARNING if stats.supporting_skipped else logging.INFO
    log.log(level, "%s: %s", path, stats.summary())
    return examples


def extract_corpus(examples: Iterable[QAExample]) -> list[Evidence]:
    """The unique evidence of many questions, in first-seen order, deduplicated by id (``schema.merge_evidence``).

    The same id with a different text, title or image is an error naming the id, both questions and both contents.
    The files are not known here: each QA file was checked on its own when read, so a clash left here is between
    questions of different files (say a train and a validation split).
    """
    return list(merge_evidence(examples).values())


# ---------------------------------------------------------------------------------------------------------------------
# GSM8K (official JSONL) and GSM8k-Aug (iCoT text)


def convert_gsm8k(path: str | os.PathLike, split: str | None = None) -> list[CoTExample]:
    """Official GSM8K JSONL -> ``CoTExample(id=f"gsm8k-{split}-{i}", steps=["<<48/2=24>>", ...], answer="72")``.

    Steps are the calculator annotations in order (a solution without any gives no steps, as in GSM8k-Aug); the answer
    is the text after ``####`` with commas removed.
    """
    path = Path(path)
    split = split or default_split(path, "gsm8k")
    examples = []
    for where, record in _jsonl_objects(path, "'question' and 'answer'"):
        question = _string_field(record, "question", where)
        solution = _string_field(record, "answer", where, "the worked solution ending in '#### <number>'")
        if "####" not in solution:
            raise DataError(f"{where}: field 'answer' has no '#### <number>' final line")
        worked, _, final = solution.rpartition("####")
        answer = normalise_number(final)
        if not answer:
            raise DataError(f"{where}: nothing after '####' (expected the final number)")
        steps = [f"<<{body}>>" for body in _CALCULATOR.findall(worked)]
        examples.append(CoTExample(id=f"gsm8k-{split}-{len(examples)}", question=question, steps=steps, answer=answer))
    return examples


def convert_gsm8k_aug(path: str | os.PathLike, split: str | None = None) -> list[CoTExample]:
    """iCoT/Coconut GSM8k-Aug text, ``question||<<a*b=c>> <<...>> #### answer`` a line, -> ``CoTExample``.

    The steps are the ``<<...>>`` blocks; anything else between ``||`` and ``####`` is an error. The answer has its
    commas removed (Coconut keeps them, e.g. ``2,125``) so that it equals the GSM8K converter's answer.
    """
    path = Path(path)
    split = split or default_split(path, "gsm8k_aug")
    examples = []
    for number, line in _text_lines(path):
        where = f"{path}:{number}"
        if "||" not in line:
            raise DataError(f"{where}: no '||' (expected 'question||<<step>> <<step>> #### answer')")
        question, _, trace = line.partition("||")
        if "####" not in trace:
            raise DataError(f"{where}: no '####' after '||' (expected 'question||<<step>> <<step>> #### answer')")
        step_text, _, final = trace.rpartition("####")
        if not question.strip():
            raise DataError(f"{where}: empty question before '||'")
        stray = _CALCULATOR.sub(" ", step_text).strip()
        if stray:
            raise DataError(
                f"{where}: text {stray[:40]!r} outside the <<...>> steps (expected only <<expr=value>> blocks)"
            )
        answer = normalise_number(final)
        if not answer:
            raise DataError(f"{where}: nothing after '####' (expected the final answer)")
        steps = [f"<<{body}>>" for body in _CALCULATOR.findall(step_text)]
        examples.append(
            CoTExample(id=f"gsm8k_aug-{split}-{len(examples)}", question=question.strip(), steps=steps, answer=answer)
        )
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# GSM-Hard (PAL JSONL), SVAMP and MultiArith (JSON lists): test sets with a numeric answer and no worked steps
#
# None of the three has gold step text, so ``steps`` is empty. SVAMP's ``Equation`` and MultiArith's ``lEquations``
# are a single expression over the question's numbers, not a worked step in the calculator form the other data use,
# and GSM-Hard's ``code`` is a program: none is a step a reasoner could be trained or scored on, so none is kept.


def convert_gsm_hard(path: str | os.PathLike, split: str | None = None) -> list[CoTExample]:
    """PAL's GSM-Hard JSONL (``{"input", "code", "target"}`` a line) -> ``CoTExample(id=f"gsm_hard-{split}-{i}",
    question=input, steps=[], answer=format_number(target))``.

    ``target`` is the float PAL's program returned; it is kept as stored, only written without ``.0`` or an exponent
    (303 of the 1,319 targets are not whole numbers, 146 are negative). ``code`` is not needed and not checked.
    """
    path = Path(path)
    split = split or default_split(path, "gsm_hard")
    examples = []
    for where, record in _jsonl_objects(path, "'input' and 'target'"):
        where = f"{where} (record {len(examples)})"
        question = _string_field(record, "input", where, "the question as a non-empty string")
        answer = _number_field(record, "target", where, "the answer as a finite JSON number (e.g. 3431580.0)")
        examples.append(
            CoTExample(id=f"gsm_hard-{split}-{len(examples)}", question=question.strip(), steps=[], answer=answer)
        )
    return examples


def convert_svamp(path: str | os.PathLike) -> list[CoTExample]:
    """SVAMP's JSON list (``ID, Body, Question, Equation, Answer, Type``) -> ``CoTExample(id=f"svamp-{ID}",
    question=Body + " " + Question, steps=[], answer=format_number(Answer))``.

    The question is the two texts joined by one space, as Zero-shot-CoT and ATP-Latent pose it.
    """
    path = Path(path)
    examples, wheres = [], []
    for index, record in enumerate(_load_json_list(path, "SVAMP problems")):
        where = f"{path}: record {index}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with 'ID', 'Body', 'Question' and 'Answer'")
        own_id = _string_field(record, "ID", where, "the problem id as a non-empty string (e.g. 'chal-1')")
        where = f"{where} (ID {own_id})"
        body = _string_field(record, "Body", where, "the problem text as a non-empty string")
        question = _string_field(record, "Question", where, "the question sentence as a non-empty string")
        answer = _number_field(record, "Answer", where, "the answer as a finite JSON number (e.g. 51.0)")
        examples.append(
            CoTExample(
                id=f"svamp-{own_id.strip()}", question=f"{body.strip()} {question.strip()}", steps=[], answer=answer
            )
        )
        wheres.append(where)
    _refuse_repeated_ids(examples, wheres)
    return examples


def convert_multiarith(path: str | os.PathLike) -> list[CoTExample]:
    """MultiArith's JSON list as Zero-shot-CoT ships it (``iIndex, sQuestion, lSolutions, lEquations, lAlignments``)
    -> ``CoTExample(id=f"multiarith-{iIndex}", question=sQuestion, steps=[], answer=format_number(lSolutions[0]))``.

    ``lSolutions`` must hold exactly one number (MultiArith has one unknown per problem). The question loses the
    space the file puts on both of its ends. 20 questions occur twice under different ``iIndex``; both are kept.
    """
    path = Path(path)
    examples, wheres = [], []
    what = "a list holding exactly one finite JSON number (e.g. [39.0])"
    for index, record in enumerate(_load_json_list(path, "MultiArith problems")):
        where = f"{path}: record {index}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with 'iIndex', 'sQuestion' and 'lSolutions'")
        if "iIndex" not in record:
            raise DataError(f"{where}: missing field 'iIndex' (expected the problem index as an integer)")
        own_index = record["iIndex"]
        if isinstance(own_index, bool) or not isinstance(own_index, int):
            raise DataError(
                f"{where}: field 'iIndex' must be the problem index as an integer, got {json.dumps(own_index)[:80]}"
            )
        where = f"{where} (iIndex {own_index})"
        question = _string_field(record, "sQuestion", where, "the question as a non-empty string")
        if "lSolutions" not in record:
            raise DataError(f"{where}: missing field 'lSolutions' (expected {what})")
        solutions = record["lSolutions"]
        if not isinstance(solutions, list) or len(solutions) != 1:
            raise DataError(f"{where}: field 'lSolutions' must be {what}, got {json.dumps(solutions)[:80]}")
        answer = _number_value(solutions[0], "lSolutions", where, what)
        examples.append(CoTExample(id=f"multiarith-{own_index}", question=question.strip(), steps=[], answer=answer))
        wheres.append(where)
    _refuse_repeated_ids(examples, wheres)
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# ProsQA and ProntoQA (Coconut JSON)


def _convert_coconut_json(path: str | os.PathLike, dataset: str, split: str | None) -> list[CoTExample]:
    """Coconut's JSON list of ``{"question", "steps", "answer", ...}``; extra keys (ProsQA's graph) are dropped."""
    path = Path(path)
    split = split or default_split(path, dataset)
    examples = []
    first_record: dict[str, int] = {}
    for index, record in enumerate(_load_json_list(path, f"{dataset} records")):
        where = f"{path}: record {index}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected an object with 'question', 'steps' and 'answer'")
        question = _string_field(record, "question", where)
        steps = record.get("steps")
        if not isinstance(steps, list) or not all(isinstance(s, str) and s.strip() for s in steps):
            raise DataError(f"{where}: field 'steps' must be a list of non-empty strings, got {json.dumps(steps)[:80]}")
        answer = _string_field(record, "answer", where)
        # A record's own string id is kept; Coconut's loader numbers records with an integer 'idx'.
        own_id = record.get("id", record.get("idx"))
        if isinstance(own_id, str) and own_id.strip():
            qid = own_id
        elif isinstance(own_id, int) and not isinstance(own_id, bool):
            qid = f"{dataset}-{split}-{own_id}"
        else:
            qid = f"{dataset}-{split}-{index}"
        # read_cot refuses repeated ids, so a converted file with one could not be read back.
        if qid in first_record:
            raise DataError(f"{where}: id '{qid}' is also the id of record {first_record[qid]} (expected unique ids)")
        first_record[qid] = index
        examples.append(CoTExample(id=qid, question=question, steps=list(steps), answer=answer))
    return examples


def convert_prosqa(path: str | os.PathLike, split: str | None = None) -> list[CoTExample]:
    """Coconut's ProsQA JSON -> ``CoTExample`` (answer like ``"Tom is a lempus."``, steps the path sentences)."""
    return _convert_coconut_json(path, "prosqa", split)


def convert_prontoqa(path: str | os.PathLike, split: str | None = None) -> list[CoTExample]:
    """Coconut's ProntoQA JSON -> ``CoTExample`` (answer ``"True"``/``"False"``, two CoT sentences a step)."""
    return _convert_coconut_json(path, "prontoqa", split)


# ---------------------------------------------------------------------------------------------------------------------
# Registry

Converter = Callable[[str | os.PathLike], list[QAExample] | list[CoTExample]]

CONVERTERS: Registry[Converter] = Registry("dataset")
"""Converters by dataset name, registered in alphabetical order (the order an unknown name's error lists them)."""
CONVERTERS.register("gsm8k", convert_gsm8k)
CONVERTERS.register("gsm8k_aug", convert_gsm8k_aug)
CONVERTERS.register("gsm_hard", convert_gsm_hard)
CONVERTERS.register("hotpotqa", convert_hotpotqa)
CONVERTERS.register("multiarith", convert_multiarith)
CONVERTERS.register("prontoqa", convert_prontoqa)
CONVERTERS.register("prosqa", convert_prosqa)
CONVERTERS.register("svamp", convert_svamp)


def get_converter(name: str) -> Converter:
    """The converter registered under ``name``; an unknown name raises ``RegistryError`` listing the known ones."""
    return CONVERTERS.get(name)


def register_converter(name: str, converter: Callable[[str | os.PathLike], list]) -> None:
    """Add a converter; a name already taken raises ``RegistryError`` listing the known ones."""
    CONVERTERS.register(name, converter)


def convert(name: str, path: str | os.PathLike) -> list[QAExample] | list[CoTExample]:
    """Convert one official file with the converter registered under ``name``."""
    return get_converter(name)(path)
