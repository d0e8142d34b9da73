"""Converter from NLVR's official JSON Lines (``dev.json``: sentence, label, identifier, directory, structured_rep)
to true/false QA examples whose only evidence is one of the record's rendered images, referenced where it lies.

A malformed record or a missing image is a ``DataError`` naming the file, the line and the identifier.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from latentlab.data.converters import _jsonl_objects, _string_field
from latentlab.data.schema import Evidence, QAExample, to_record, write_jsonl
from latentlab.errors import ConfigError, DataError
from latentlab.io import staged_dir

__all__ = [
    "IMAGES_PER_RECORD",
    "QUESTION_TYPE",
    "SPLIT_NAMES",
    "convert_nlvr",
    "image_set",
    "nlvr_question",
    "split_nlvr",
    "write_nlvr",
]

IMAGES_PER_RECORD = 6
"""NLVR renders each example six times (the six orderings of its three boxes): ``<split>-<identifier>-<k>.png``."""
QUESTION_TYPE = "nlvr"
ImageChoice = Literal["first", "all"]
"""``first``: one question per record, on image 0; ``all``: one question per record and image (k = 0..5)."""

_IDENTIFIER = re.compile(r"\d+-\d+")
_LABELS = ("true", "false")


def nlvr_question(sentence: str) -> str:
    """The question a reader answers with true or false: ``"True or false: <sentence>"``."""
    return f"True or false: {sentence.strip()}"


def _directory(record: dict, where: str) -> str:
    value = record.get("directory")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip().isdigit():
        raise DataError(
            f"{where}: field 'directory' must be the image folder's number as a string (e.g. \"2\"), got {value!r}"
        )
    return value.strip()


def convert_nlvr(
    path: str | os.PathLike,
    images: ImageChoice = "first",
    image_dir: str | os.PathLike | None = None,
    split: str | None = None,
) -> list[QAExample]:
    """NLVR JSON Lines -> ``QAExample(id="nlvr-<split>-<identifier>-<k>", question=nlvr_question(sentence),
    answers=[label], evidence=[the image item "<split>-<identifier>-<k>"], supporting=[it], question_type="nlvr")``.

    ``images``: ``first`` (image k = 0 of each record, the default) or ``all`` (six questions per record). Images are
    looked up in ``image_dir`` (default: ``images/`` beside the file) at ``<directory>/<split>-<identifier>-<k>.png``,
    ``split`` defaulting to the file's stem (``dev``); each item's ``image`` is its absolute path, and no image is
    copied. The image items have no text: NLVR has no caption, so only an image reader can use them.
    """
    if images not in ("first", "all"):
        raise ConfigError(f"NLVR images={images!r} is not a choice (expected 'first' or 'all')")
    path = Path(path)
    split = split or path.stem
    image_dir = Path(image_dir) if image_dir is not None else path.parent / "images"
    picks: Sequence[int] = (0,) if images == "first" else range(IMAGES_PER_RECORD)
    examples: list[QAExample] = []
    first_line: dict[str, str] = {}
    for where, record in _jsonl_objects(path, "'sentence', 'label', 'identifier' and 'directory'"):
        identifier = _string_field(record, "identifier", where, 'the example\'s id as a string like "1572-0"')
        if not _IDENTIFIER.fullmatch(identifier):
            raise DataError(
                f"{where}: field 'identifier' is {identifier!r} (expected '<number>-<number>', e.g. 1572-0)"
            )
        if identifier in first_line:
            raise DataError(f"{where}: identifier {identifier} is also the identifier at {first_line[identifier]}")
        first_line[identifier] = where
        where = f"{where} (identifier {identifier})"
        sentence = _string_field(record, "sentence", where, "the statement about the image as a non-empty string")
        label = record.get("label")
        if label not in _LABELS:
            raise DataError(f'{where}: field \'label\' must be "true" or "false", got {label!r}')
        folder = image_dir / _directory(record, where)
        for k in picks:
            stem = f"{split}-{identifier}-{k}"
            image = folder / f"{stem}.png"
            if not image.is_file():
                raise DataError(
                    f"{where}: image {k} not found at {image} (expected NLVR's images at "
                    f"<image dir>/<directory>/<split>-<identifier>-<k>.png for k = 0..5; pass the folder that holds "
                    f"the numbered image folders)"
                )
            examples.append(
                QAExample(
                    id=f"nlvr-{stem}",
                    question=nlvr_question(sentence),
                    answers=[label],
                    evidence=[Evidence(id=stem, image=os.path.abspath(image))],
                    supporting=[stem],
                    question_type=QUESTION_TYPE,
                )
            )
    return examples


SPLIT_NAMES = ("train", "validation", "test")


def image_set(example: QAExample) -> str:
    """The NLVR image set a question is about: ``<split>-<N>`` of ``nlvr-<split>-<N>-<sentence>-<k>``. Every
    sentence written about one set of boxes shares it."""
    split, number = example.id.split("-")[1:3]
    return f"{split}-{number}"


def split_nlvr(
    examples: Sequence[QAExample], fractions: tuple[float, float] = (0.8, 0.1), seed: int = 0
) -> dict[str, list[QAExample]]:
    """Train / validation / test by image set (``image_set``), so that no picture of one split is seen in another:
    a seeded shuffle of the sets, cut at ``fractions`` (train, validation; test the rest). Training keeps every image
    of its records; validation and test keep image 0 of each record, so each statement is scored once."""
    if not (fractions[0] > 0 and fractions[1] > 0 and sum(fractions) < 1):
        raise ConfigError(f"NLVR split fractions {fractions} must be positive and leave some sets for test")
    sets = sorted({image_set(e) for e in examples})
    random.Random(seed).shuffle(sets)
    n_train, n_val = round(len(sets) * fractions[0]), round(len(sets) * fractions[1])
    if n_train < 1 or n_val < 1 or len(sets) - n_train - n_val < 1:
        raise DataError(f"{len(sets)} NLVR image sets cannot fill train, validation and test at {fractions}")
    owner = {
        s: name
        for name, group in zip(SPLIT_NAMES, (sets[:n_train], sets[n_train : n_train + n_val], sets[n_train + n_val :]))
        for s in group
    }
    splits: dict[str, list[QAExample]] = {name: [] for name in SPLIT_NAMES}
    for example in examples:
        name = owner[image_set(example)]
        if name == "train" or example.id.endswith("-0"):
            splits[name].append(example)
    return splits


def write_nlvr(
    examples: Sequence[QAExample] | dict[str, Sequence[QAExample]],
    out_dir: str | os.PathLike,
    file_name: str = "dev.jsonl",
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir/<file_name>`` (QA JSONL, ``read_qa``), or with a mapping of split names to examples
    ``out_dir/<split>.jsonl`` each, with each image path relative to ``out_dir``, as the schema resolves it, so the
    files read the images in place; the folder is written as a whole and an existing one is refused
    (``ResultsExistError``) unless ``overwrite``. Returns the (first) file's path."""
    out_dir = Path(out_dir)
    base = out_dir.absolute()
    files = {f"{k}.jsonl": v for k, v in examples.items()} if isinstance(examples, dict) else {file_name: examples}

    def record(example: QAExample) -> dict:
        fields = to_record(example)
        for item in fields["evidence"]:
            if "image" in item:
                item["image"] = os.path.relpath(os.path.abspath(item["image"]), base)
        return fields

    # The staging folder is beside out_dir, so paths relative to out_dir are right in it too.
    with staged_dir(out_dir, overwrite) as staging:
        for name, rows in files.items():
            write_jsonl(staging / name, [record(e) for e in rows])
    return out_dir / next(iter(files))
