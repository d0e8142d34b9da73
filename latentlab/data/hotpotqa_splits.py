"""Real HotpotQA training data: train / val / test splits of official-format files, with every evaluation question
left out, plus the unlabelled sentences of the training side for a reconstruction loss.

Each split is a QA JSONL (``read_qa``): supporting sentences are the positives, the question's other sentences its
hard negatives (``QAExample.negative_evidence``). ``write_hotpotqa_splits`` writes the folder as a whole.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latentlab.data.converters import HotpotQAStats, load_hotpotqa
from latentlab.data.schema import Evidence, QAExample, merge_evidence, read_qa, write_jsonl
from latentlab.errors import ConfigError, DataError
from latentlab.io import staged_dir, write_json

__all__ = [
    "DEFAULT_EVALUATION",
    "DEFAULT_SOURCES",
    "Excluded",
    "HotpotQASplits",
    "SPLITS",
    "SourceFile",
    "build_hotpotqa_splits",
    "describe",
    "file_sha256",
    "make_hotpotqa_splits",
    "write_hotpotqa_splits",
]

SPLITS = ("train", "val", "test")
"""Split names, as ``data.train`` / ``data.val`` / ``data.test`` name them; each is written as ``<name>.jsonl``."""
UNLABELLED_FILE = "unlabelled.jsonl"
EVALUATION_FILE = "evaluation.jsonl"
"""The evaluation questions, converted (each with its own evidence pool): what a config evaluates beside the splits."""
MANIFEST_FILE = "manifest.json"
FORMAT = "latentlab-hotpotqa-splits/1"

DEFAULT_SOURCES = (
    "hotpotqa/hotpot_train_v1.1_subset_hipporag100.json",
    "hotpotqa/hotpot_dev_fullwiki_subset.json",
)
"""The official-format files split into train / val / test, relative to the shared data folder."""
DEFAULT_EVALUATION = ("hotpotqa/hotpot_dev_distractor_shared.json",)
"""The evaluation set whose questions never enter a split, relative to the shared data folder."""


@dataclass(frozen=True)
class SourceFile:
    """One file read: where it is, its sha256 and size, how many records, and the converter's skip counts."""

    path: str
    sha256: str
    bytes: int
    records: int
    skipped: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Excluded:
    """A source question that is in no split, and why: ``evaluation`` (its ``_id`` is in an evaluation file) or
    ``too_few_supporting`` (fewer supporting paragraphs in its context than asked; its sentences are unlabelled)."""

    id: str
    source: str
    reason: str


@dataclass
class HotpotQASplits:
    """The three splits, the unlabelled training-side text and what the manifest records of how they were made."""

    train: list[QAExample]
    val: list[QAExample]
    test: list[QAExample]
    unlabelled: list[Evidence]
    """Sentences for reconstruction only (no question): see ``build_hotpotqa_splits``."""
    sources: list[SourceFile]
    evaluation: list[SourceFile]
    excluded: list[Excluded]
    seed: int
    val_fraction: float
    test_fraction: float
    min_supporting_paragraphs: int
    train_evidence_held_out: int = 0
    """Distinct sentences of train questions that are also evidence of a val, test or evaluation question (the same
    Wikipedia sentence in two questions' contexts): kept in the train pools, left out of ``unlabelled``."""
    split_of: dict[str, str] = field(default_factory=dict)
    """Question id -> split name."""
    evaluation_examples: list[QAExample] = field(default_factory=list)
    """The questions of the ``evaluation`` files, converted: written as ``evaluation.jsonl``."""
    source_of: dict[str, str] = field(default_factory=dict)
    """Question id -> the source file (as given) it was read from."""

    def split(self, name: str) -> list[QAExample]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def manifest(self) -> dict:
        """The JSON manifest: settings, sources with checksums, counts per split, the excluded ids."""
        counts = {}
        for name in SPLITS:
            examples = self.split(name)
            counts[name] = {
                "questions": len(examples),
                "positives": sum(len(ex.supporting) for ex in examples),
                "hard_negatives": sum(len(ex.evidence) - len(ex.supporting) for ex in examples),
                "by_source": dict(sorted(Counter(self.source_of[ex.id] for ex in examples).items())),
                "by_type": dict(sorted(Counter(ex.question_type or "untyped" for ex in examples).items())),
            }
        by_reason: dict[str, list[dict]] = {}
        for item in self.excluded:
            by_reason.setdefault(item.reason, []).append({"id": item.id, "source": item.source})
        return {
            "format": FORMAT,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "min_supporting_paragraphs": self.min_supporting_paragraphs,
            "sources": [asdict(s) for s in self.sources],
            "evaluation": [asdict(s) for s in self.evaluation],
            "counts": counts,
            "unlabelled": len(self.unlabelled),
            "train_evidence_held_out": self.train_evidence_held_out,
            "excluded": by_reason,
        }


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_source(path: Path) -> tuple[list[QAExample], HotpotQAStats | None]:
    """Official HotpotQA JSON, or a latentlab QA JSONL (``.jsonl``, e.g. a converted evaluation set)."""
    if path.suffix == ".jsonl":
        return read_qa(path), None
    return load_hotpotqa(path)


def _describe(path: Path, records: int, stats: HotpotQAStats | None) -> SourceFile:
    skipped = {}
    if stats is not None:
        skipped = {k: v for k, v in asdict(stats).items() if k not in ("questions", "sentences", "supporting")}
    return SourceFile(str(path), file_sha256(path), path.stat().st_size, records, skipped)


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be < 1 to leave questions for training, got "
            f"{val_fraction} + {test_fraction}"
        )


def _supporting_paragraphs(example: QAExample) -> int:
    by_id = {e.id: e for e in example.evidence}
    return len({by_id[s].title for s in example.supporting})


def _assign(ids: list[str], val_fraction: float, test_fraction: float, rng: np.random.Generator) -> dict[str, str]:
    """Question id -> split: a seeded permutation of the sorted ids (so file order does not matter), cut into
    ``round(test_fraction * n)`` test, ``round(val_fraction * n)`` val and the rest train."""
    order = [ids[i] for i in rng.permutation(len(ids))] if ids else []
    n_test, n_val = round(test_fraction * len(ids)), round(val_fraction * len(ids))
    names = ["test"] * n_test + ["val"] * n_val + ["train"] * (len(ids) - n_test - n_val)
    return dict(zip(order, names))


def build_hotpotqa_splits(
    sources: Sequence[str | os.PathLike],
    evaluation: Sequence[str | os.PathLike] = (),
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    min_supporting_paragraphs: int = 1,
) -> HotpotQASplits:
    """Split the questions of official-format ``sources`` into train / val / test, deterministically for ``seed``.

    - A question whose ``_id`` is in an ``evaluation`` file (official JSON or latentlab QA JSONL) is in no split.
    - A question with fewer than ``min_supporting_paragraphs`` supporting paragraphs in its context (fullwiki
      retrieval often misses the gold ones; HotpotQA has two) is in no split either: it has no (or too few) positives.
    - The rest are assigned per source file (so each split holds the same mix of files): a permutation of the sorted
      ids from ``np.random.default_rng((seed, source index))``, ``round(fraction * n)`` to test and val each.
    - ``unlabelled``: the sentences of the training side that are no train question's positive (the hard negatives
      of train questions and every sentence of the questions left out for too few positives), deduplicated by id,
      minus any sentence that is also evidence of a val, test or evaluation question: reconstructing those would
      train the compressor on the text it is then scored on.

    A ``_id`` in two source files, or one evidence id with two texts across the files, is a ``DataError`` naming
    both; a missing file or a malformed record is the converter's ``DataError`` naming the file, record and key.
    """
    _check_fractions(val_fraction, test_fraction)
    if isinstance(min_supporting_paragraphs, bool) or not isinstance(min_supporting_paragraphs, int):
        raise ConfigError(f"min_supporting_paragraphs must be an integer >= 1, got {min_supporting_paragraphs!r}")
    if min_supporting_paragraphs < 1:
        raise ConfigError(f"min_supporting_paragraphs must be >= 1, got {min_supporting_paragraphs}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if not sources:
        raise ConfigError("no source files: pass the official HotpotQA files to split")

    evaluation_files, evaluation_examples = [], []
    for raw in evaluation:
        path = Path(raw)
        examples, stats = _read_source(path)
        evaluation_files.append(_describe(path, len(examples), stats))
        evaluation_examples += examples
    evaluation_ids = {ex.id for ex in evaluation_examples}

    source_files, excluded = [], []
    labelled: list[QAExample] = []
    unlabelled_questions: list[QAExample] = []
    split_of: dict[str, str] = {}
    source_of: dict[str, str] = {}
    all_examples, wheres = [], []
    for index, raw in enumerate(sources):
        path = Path(raw)
        examples, stats = _read_source(path)
        source_files.append(_describe(path, len(examples), stats))
        eligible = []
        for position, ex in enumerate(examples):
            if ex.id in source_of:
                raise DataError(
                    f"{path}: record {position}: _id '{ex.id}' is also a question of {source_of[ex.id]} "
                    f"(expected each question in one source file)"
                )
            source_of[ex.id] = str(path)
            all_examples.append(ex)
            wheres.append(f"{path}: record {position}")
            if ex.id in evaluation_ids:
                excluded.append(Excluded(ex.id, str(path), "evaluation"))
            elif _supporting_paragraphs(ex) < min_supporting_paragraphs:
                excluded.append(Excluded(ex.id, str(path), "too_few_supporting"))
                unlabelled_questions.append(ex)
            else:
                eligible.append(ex)
        rng = np.random.default_rng((seed, index))
        split_of |= _assign(sorted(ex.id for ex in eligible), val_fraction, test_fraction, rng)
        labelled += eligible
    # One id, one text across all files: the splits are read together (extract_corpus) by training and evaluation.
    merge_evidence(all_examples, wheres)

    by_split = {name: [ex for ex in labelled if split_of[ex.id] == name] for name in SPLITS}
    held_out = {e.id for name in ("val", "test") for ex in by_split[name] for e in ex.evidence}
    held_out |= {e.id for ex in evaluation_examples for e in ex.evidence}
    # A sentence can be one train question's positive and another's negative: it is labelled text, not unlabelled.
    positives = {s for ex in by_split["train"] for s in ex.supporting}
    unlabelled: dict[str, Evidence] = {}
    for ex in by_split["train"] + unlabelled_questions:
        for item in ex.negative_evidence():
            if item.id not in held_out and item.id not in positives:
                unlabelled.setdefault(item.id, item)
    return HotpotQASplits(
        train=by_split["train"],
        val=by_split["val"],
        test=by_split["test"],
        unlabelled=list(unlabelled.values()),
        sources=source_files,
        evaluation=evaluation_files,
        excluded=excluded,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_supporting_paragraphs=min_supporting_paragraphs,
        train_evidence_held_out=len({e.id for ex in by_split["train"] for e in ex.evidence} & held_out),
        split_of={ex.id: split_of[ex.id] for ex in labelled},
        source_of=source_of,
        evaluation_examples=evaluation_examples,
    )


def write_hotpotqa_splits(splits: HotpotQASplits, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``train.jsonl``, ``val.jsonl``, ``test.jsonl``, ``unlabelled.jsonl`` (a corpus: ``read_corpus``),
    ``evaluation.jsonl`` (the evaluation questions, converted, when there are any) and
    ``manifest.json`` (with each written file's sha256) into ``out_dir``, as a whole: staged beside it, then renamed.

    An existing non-empty ``out_dir`` is refused (``ResultsExistError``) unless ``overwrite``; it is then replaced
    only once the new folder is complete.
    """
    with staged_dir(out_dir, overwrite) as staging:
        for name in SPLITS:
            write_jsonl(staging / f"{name}.jsonl", splits.split(name))
        if splits.unlabelled:
            write_jsonl(staging / UNLABELLED_FILE, splits.unlabelled)
        if splits.evaluation_examples:
            write_jsonl(staging / EVALUATION_FILE, splits.evaluation_examples)
        manifest = splits.manifest()
        manifest["files"] = {p.name: file_sha256(p) for p in sorted(staging.iterdir())}
        write_json(staging / MANIFEST_FILE, manifest)
    return Path(out_dir)


def make_hotpotqa_splits(
    out_dir: str | os.PathLike,
    sources: Sequence[str | os.PathLike],
    evaluation: Sequence[str | os.PathLike] = (),
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    min_supporting_paragraphs: int = 1,
    overwrite: bool = False,
) -> HotpotQASplits:
    """``build_hotpotqa_splits`` then ``write_hotpotqa_splits`` (what `latentlab data hotpotqa-splits` runs)."""
    splits = build_hotpotqa_splits(
        sources,
        evaluation,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        min_supporting_paragraphs=min_supporting_paragraphs,
    )
    write_hotpotqa_splits(splits, out_dir, overwrite)
    return splits


def describe(splits: HotpotQASplits) -> str:
    """One line per split and the exclusions, for a command's output."""
    lines = [f"{name}: {len(splits.split(name))} questions" for name in SPLITS]
    reasons = Counter(item.reason for item in splits.excluded)
    lines.append(f"unlabelled: {len(splits.unlabelled)} sentences")
    lines.append(
        f"excluded: {reasons.get('evaluation', 0)} evaluation questions, "
        f"{reasons.get('too_few_supporting', 0)} with too few supporting paragraphs"
    )
    return "\n".join(lines)
