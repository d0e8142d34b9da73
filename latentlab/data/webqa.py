"""Converter from WebQA's official release (``WebQA_train_val.json`` with ``imgs.tsv`` and ``imgs.lineidx``) to a
folder of QA JSONL files, one per split, and the images they show, decoded into ``images/``.

Every malformed record, fact or image is a ``DataError`` naming the file, the record's guid or the line, and the
field or image id.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from latentlab import io as atomic_io
from latentlab.data.converters import _load_json
from latentlab.data.schema import Evidence, QAExample, merge_evidence, write_jsonl
from latentlab.errors import DataError
from latentlab.io import refuse_existing, staged_dir

IMAGE_ID_LINES = 10_000_000
"""WebQA's image ids are 30,000,000 + the image's line index in ``imgs.tsv``: the official loaders seek to
``lineidx[image_id % 10_000_000]``."""
IMAGES_DIR = "images"
_EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class TextFact:
    """One of a question's text facts (``txt_posFacts`` / ``txt_negFacts``)."""

    snippet_id: str
    fact: str
    title: str | None = None


@dataclass(frozen=True)
class ImageFact:
    """One of a question's image facts (``img_posFacts`` / ``img_negFacts``); the caption describes the image."""

    image_id: int
    title: str | None = None
    caption: str | None = None


@dataclass(frozen=True)
class WebQARecord:
    """One question of ``WebQA_train_val.json``, its quotes taken off (``Q`` and ``A`` are stored in double quotes)."""

    guid: str
    question: str
    answers: list[str]
    category: str
    """The official ``Qcate``: YesNo, choose, color, shape, number, Others (image questions) or text."""
    split: str
    text_positives: list[TextFact] = field(default_factory=list)
    text_negatives: list[TextFact] = field(default_factory=list)
    image_positives: list[ImageFact] = field(default_factory=list)
    image_negatives: list[ImageFact] = field(default_factory=list)
    where: str | None = field(default=None, compare=False, repr=False)
    """Where the record was read (``WebQA_train_val.json: record '<guid>'``)."""

    def image_ids(self) -> list[int]:
        return [fact.image_id for fact in (*self.image_positives, *self.image_negatives)]


def _unquote(text: str) -> str:
    """``'"The tower is brown."'`` -> ``'The tower is brown.'``: WebQA stores questions and answers quoted."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def _text(record: dict, key: str, where: str, what: str, optional: bool = False, quoted: bool = False) -> str | None:
    """A string field, stripped (and unquoted where WebQA quotes it: ``Q`` and ``A``); an optional blank one is None."""
    if key not in record or (optional and record[key] is None):
        if optional:
            return None
        raise DataError(f"{where}: missing field '{key}' (expected {what})")
    value = record[key]
    text = (_unquote(value) if quoted else value.strip()) if isinstance(value, str) else None
    if text is None or (not optional and not text):
        raise DataError(f"{where}: field '{key}' must be {what}, got {json.dumps(value)[:80]}")
    return text or None


def _facts(record: dict, key: str, where: str) -> list[dict]:
    if key not in record:
        raise DataError(f"{where}: missing field '{key}' (expected a list of fact objects, [] for none)")
    facts = record[key]
    if not isinstance(facts, list) or not all(isinstance(f, dict) for f in facts):
        raise DataError(f"{where}: field '{key}' must be a list of fact objects, got {json.dumps(facts)[:80]}")
    return facts


def _text_facts(record: dict, key: str, where: str) -> list[TextFact]:
    parsed = []
    for index, fact in enumerate(_facts(record, key, where)):
        at = f"{where} {key}[{index}]"
        snippet_id = _text(fact, "snippet_id", at, "the fact's id as a non-empty string")
        body = _text(fact, "fact", at, "the fact's text as a non-empty string")
        parsed.append(TextFact(snippet_id=snippet_id, fact=body, title=_text(fact, "title", at, "a string", True)))
    return parsed


def _image_id(fact: dict, at: str) -> int:
    if "image_id" not in fact:
        raise DataError(f"{at}: missing field 'image_id' (expected the image's id as an integer, e.g. 30000000)")
    value = fact["image_id"]
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"{at}: field 'image_id' must be the image's id as an integer, got {json.dumps(value)[:80]}")
    return value


def _image_facts(record: dict, key: str, where: str) -> list[ImageFact]:
    return [
        ImageFact(
            image_id=_image_id(fact, at),
            title=_text(fact, "title", at, "a string", True),
            caption=_text(fact, "caption", at, "a string", True),
        )
        for at, fact in ((f"{where} {key}[{i}]", fact) for i, fact in enumerate(_facts(record, key, where)))
    ]


def _record(guid: str, record: Any, where: str) -> WebQARecord:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a question object with Q, A, Qcate, split and the fact lists")
    answers = record.get("A")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and _unquote(a) for a in answers):
        raise DataError(
            f"{where}: field 'A' must be a non-empty list of answer strings (WebQA_test.json has no answers and "
            f"cannot be converted), got {json.dumps(answers)[:80]}"
        )
    split = _text(record, "split", where, "the split name as a non-empty string (train or val)")
    if not _SPLIT_NAME.fullmatch(split):
        raise DataError(f"{where}: field 'split' is {split!r} (expected a name of letters, digits, - or _)")
    return WebQARecord(
        guid=guid,
        question=_text(record, "Q", where, "the question as a non-empty string", quoted=True),
        answers=[_unquote(a) for a in answers],
        category=_text(record, "Qcate", where, "the question category as a non-empty string (e.g. YesNo)"),
        split=split,
        text_positives=_text_facts(record, "txt_posFacts", where),
        text_negatives=_text_facts(record, "txt_negFacts", where),
        image_positives=_image_facts(record, "img_posFacts", where),
        image_negatives=_image_facts(record, "img_negFacts", where),
        where=where,
    )


def read_webqa(path: str | os.PathLike, splits: Sequence[str] | None = None) -> list[WebQARecord]:
    """The questions of ``WebQA_train_val.json`` (a JSON object guid -> question) in file order, those of ``splits``
    only when given; a split named there that no question has is an error listing the splits the file has."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of guid -> question (WebQA_train_val.json)")
    records = [_record(guid, record, f"{path}: record '{guid}'") for guid, record in data.items()]
    if splits is None:
        return records
    present = sorted({r.split for r in records})
    missing = [s for s in splits if s not in present]
    if missing:
        raise DataError(f"{path}: no question has split {missing[0]!r} (the file has: {', '.join(present)})")
    return [r for r in records if r.split in splits]


class WebQAImages:
    """The images of ``imgs.tsv`` (``image_id<TAB>base64`` a line), read by seeking to ``imgs.lineidx``'s offsets.

    ``read`` returns an image's file bytes exactly as stored and its file extension, after checking that the row
    holds that id, that the base64 is valid and that pillow decodes the picture.
    """

    def __init__(self, tsv: str | os.PathLike, lineidx: str | os.PathLike | None = None) -> None:
        self.tsv = Path(tsv)
        self.lineidx = Path(lineidx) if lineidx is not None else self.tsv.with_suffix(".lineidx")
        for path, what in ((self.tsv, "the image file imgs.tsv"), (self.lineidx, "its index imgs.lineidx")):
            if not path.is_file():
                raise DataError(f"{path}: file not found (expected {what}; pass --lineidx if it lies elsewhere)")
        self.offsets = self._read_offsets(self.tsv.stat().st_size)
        self._handle = self.tsv.open("rb")

    def _read_offsets(self, tsv_size: int) -> list[int]:
        offsets: list[int] = []
        with self.lineidx.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                text = raw.strip()
                where = f"{self.lineidx}:{number}"
                if not text.isdigit():
                    raise DataError(
                        f"{where}: {text[:20]!r} is not a byte offset (expected one non-negative integer per line: "
                        f"the offset of line {number} of {self.tsv})"
                    )
                offset = int(text)
                if not offsets and offset != 0:
                    raise DataError(f"{where}: the first offset is {offset} (expected 0, the start of {self.tsv})")
                if offsets and offset <= offsets[-1]:
                    raise DataError(
                        f"{where}: offset {offset} is not past the previous line's {offsets[-1]} (expected increasing "
                        f"offsets, one per line of {self.tsv})"
                    )
                if offset >= tsv_size:
                    raise DataError(f"{where}: offset {offset} is past the end of {self.tsv} ({tsv_size} bytes)")
                offsets.append(offset)
        return offsets

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> WebQAImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, image_id: int, used_by: str = "") -> tuple[bytes, str]:
        """(the image file's bytes, its extension: png, jpg, gif, bmp or webp); ``used_by`` names who asked."""
        index = image_id % IMAGE_ID_LINES
        line = index + 1
        asked = f" ({used_by})" if used_by else ""
        if index >= len(self.offsets):
            raise DataError(
                f"{self.tsv}: image_id {image_id}{asked} is not in the file: WebQA keeps it on line {line} "
                f"(image_id mod 10,000,000, plus 1), but {self.lineidx} indexes only {len(self.offsets)} lines "
                f"(expected the imgs.tsv and imgs.lineidx of the release that WebQA_train_val.json comes with)"
            )
        offset = self.offsets[index]
        if offset:
            self._handle.seek(offset - 1)
            if self._handle.read(1) != b"\n":
                raise DataError(
                    f"{self.lineidx}:{line}: offset {offset} (of image_id {image_id}{asked}) is not the start of a "
                    f"line of {self.tsv} (expected the lineidx made for this imgs.tsv)"
                )
        self._handle.seek(offset)
        columns = self._handle.readline().rstrip(b"\r\n").split(b"\t")
        where = f"{self.tsv}:{line}: image_id {image_id}{asked}"
        if len(columns) != 2:
            raise DataError(f"{where}: {len(columns)} tab-separated fields (expected 'image_id<TAB>base64')")
        found = columns[0].strip().decode("utf-8", "replace")
        if found != str(image_id):
            raise DataError(
                f"{where}: the line holds image_id {found!r} (expected {image_id}: either {self.lineidx} does not "
                f"index this imgs.tsv, or the image is missing from it)"
            )
        try:
            data = base64.b64decode(columns[1].strip(), validate=True)
        except (binascii.Error, ValueError) as err:
            raise DataError(f"{where}: not valid base64 ({err}; expected the image file's bytes in base64)") from None
        return data, _image_extension(data, where)


def _image_extension(data: bytes, where: str) -> str:
    """The file extension of an encoded image that pillow decodes in full; anything else names ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            kind, size = picture.format, picture.size
            picture.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"{where}: the base64 decodes to {len(data)} bytes that pillow cannot decode as an image ({err}; "
            f"expected a PNG, JPEG, GIF, BMP or WebP file)"
        ) from None
    if kind not in _EXTENSIONS:
        raise DataError(f"{where}: a {kind} image (expected PNG, JPEG, GIF, BMP or WebP)")
    if 0 in size:
        raise DataError(f"{where}: zero-size picture ({size[0]}x{size[1]} pixels; expected at least 1x1)")
    return _EXTENSIONS[kind]


@dataclass
class WebQAStats:
    """What ``convert_webqa`` wrote: questions per split and per category, images, and skipped repeated facts."""

    questions: Counter = field(default_factory=Counter)
    categories: Counter = field(default_factory=Counter)
    images: int = 0
    text_facts: int = 0
    repeated_facts_skipped: int = 0

    def summary(self) -> str:
        splits = ", ".join(f"{name} {count}" for name, count in sorted(self.questions.items()))
        kinds = ", ".join(f"{name} {count}" for name, count in sorted(self.categories.items()))
        return (
            f"{sum(self.questions.values())} questions ({splits}; by category: {kinds}), {self.images} images, "
            f"{self.text_facts} text facts; {self.repeated_facts_skipped} repeated facts skipped"
        )


def _evidence(record: WebQARecord, image_paths: Mapping[int, str], stats: WebQAStats) -> tuple[list, list]:
    """(evidence, supporting ids): positives first; a fact listed twice is kept once (a positive stays positive)."""
    missing = [i for i in record.image_ids() if i not in image_paths]
    if missing:
        raise DataError(f"{record.where or record.guid}: image_id {missing[0]} has no image file (none was written)")
    evidence: dict[str, Evidence] = {}
    supporting: list[str] = []
    for positive, texts, images in (
        (True, record.text_positives, record.image_positives),
        (False, record.text_negatives, record.image_negatives),
    ):
        items = [Evidence(id=f.snippet_id, text=f.fact, title=f.title) for f in texts]
        items += [
            Evidence(id=str(f.image_id), text=f.caption, image=image_paths[f.image_id], title=f.title) for f in images
        ]
        for item in items:
            if item.id in evidence:
                if evidence[item.id] != item:
                    raise DataError(
                        f"{record.where or record.guid}: fact '{item.id}' is listed twice with different contents "
                        f"(expected one content per snippet_id or image_id)"
                    )
                stats.repeated_facts_skipped += 1
                continue
            evidence[item.id] = item
            if positive:
                supporting.append(item.id)
    return list(evidence.values()), supporting


def webqa_examples(
    records: Iterable[WebQARecord], image_paths: Mapping[int, str], stats: WebQAStats | None = None
) -> list[QAExample]:
    """QA examples of WebQA questions: the positive facts are the supporting evidence, the negative facts (WebQA's
    hard distractors) the rest of the pool; an image item's ``image`` is ``image_paths[image_id]`` and its text the
    caption. ``question_type`` is the official ``Qcate``."""
    stats = stats if stats is not None else WebQAStats()
    examples = []
    for record in records:
        evidence, supporting = _evidence(record, image_paths, stats)
        stats.questions[record.split] += 1
        stats.categories[record.category] += 1
        stats.text_facts += sum(1 for item in evidence if item.image is None)
        examples.append(
            QAExample(
                id=record.guid,
                question=record.question,
                answers=record.answers,
                evidence=evidence,
                supporting=supporting,
                question_type=record.category,
            )
        )
    return examples


def convert_webqa(
    json_path: str | os.PathLike,
    imgs_tsv: str | os.PathLike,
    out_dir: str | os.PathLike,
    lineidx: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
) -> WebQAStats:
    """Write ``<split>.jsonl`` (QA JSONL, ``read_qa``) for each split of ``json_path`` (or of ``splits``) and
    ``images/<image_id>.<ext>``, each image's bytes exactly as ``imgs.tsv`` stores them, into ``out_dir``.

    ``lineidx`` defaults to the ``.lineidx`` beside ``imgs_tsv``. Only images the questions use are decoded, each
    once. The folder is written as a whole (``latentlab.io.staged_dir``): on any error nothing of it is left and an
    existing ``out_dir`` is untouched; an existing one is refused (``ResultsExistError``) unless ``overwrite``.
    """
    refuse_existing(out_dir, overwrite)  # before reading a file of hundreds of megabytes
    records = read_webqa(json_path, splits)
    stats = WebQAStats()
    image_paths: dict[int, str] = {}
    with WebQAImages(imgs_tsv, lineidx) as images, staged_dir(out_dir, overwrite) as staging:
        for record in records:
            for image_id in record.image_ids():
                if image_id in image_paths:
                    continue
                data, extension = images.read(image_id, f"used by {record.where}")
                name = f"{IMAGES_DIR}/{image_id}.{extension}"
                atomic_io.write_bytes(staging / name, data)
                image_paths[image_id] = name
        stats.images = len(image_paths)
        examples = webqa_examples(records, image_paths, stats)
        # Evidence is looked up by id across questions: one image or snippet id must carry one content everywhere.
        merge_evidence(examples, [r.where or r.guid for r in records])
        for split in sorted({r.split for r in records}):
            write_jsonl(staging / f"{split}.jsonl", [e for e, r in zip(examples, records) if r.split == split])
    return stats
