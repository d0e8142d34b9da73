"""Use a trained compressor: build a latent memory over a corpus, search it and answer from it (raw-text RAG too).

``LatentMemory.open(DIR)`` needs nothing but the directory: the compressor that built the memory is stored
beside the index (config + trainable weights, a few MB) and its fingerprint must match the manifest.
``LatentMemory.open([DIR1, DIR2, ...])`` searches several shards of one memory as one (``index_shards``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentlab.configs import IndexConfig
from latentlab.data.schema import Evidence, titled
from latentlab.errors import DataError, IndexError_, LatentLabError
from latentlab.io import write_jsonl
from latentlab.memory.checkpoint import WEIGHTS, compressor_fingerprint, export_compressor, load_model, vision_spec
from latentlab.memory.evidence import kind_of
from latentlab.memory.index import LatentIndex, build_index
from latentlab.memory.index_shards import ShardedLatentIndex
from latentlab.memory.model import LatentMemoryModel
from latentlab.memory.prompting import Prompt
from latentlab.memory.vision import screen_images

COMPRESSOR_DIR = "compressor"


@dataclass(frozen=True)
class Hit:
    """One retrieved evidence item: text or image (``modality``), from one memory of both."""

    id: str
    score: float
    title: str | None = None
    text: str | None = None
    """The item's text; an image's text description, where the data has one."""
    modality: str = "text"
    """`text` or `image` (``latentlab.memory.evidence.kind_of``)."""
    image: str | None = None
    """The image file of an image hit."""

    @classmethod
    def of(cls, item: Evidence, score: float) -> Hit:
        return cls(item.id, float(score), item.title, item.text, kind_of(item), item.image)


@dataclass
class Answer:
    """A generated answer with what it read and what it cost in generator tokens."""

    question: str
    answer: str
    hits: list[Hit] = field(default_factory=list)
    prompt_tokens: int = 0
    no_system_tokens: int = 0
    context_tokens: int = 0
    truncated_items: int = 0
    """Raw-text passages (or the question) cut to ``generator.max_item_tokens`` in this prompt."""


# --------------------------------------------------------------------------- building


def skipped_report_path(out_dir: str | Path) -> Path:
    """Where ``build_memory(skip_bad=True)`` reports the items it left out: beside the memory, not in it."""
    out_dir = Path(out_dir).resolve()
    return out_dir.parent / f"{out_dir.name}.skipped.jsonl"


def build_memory(
    compressor: str | Path | LatentMemoryModel,
    corpus: Sequence[Evidence],
    out_dir: str | Path,
    spec: IndexConfig | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    skip_bad: bool = False,
) -> LatentIndex:
    """Compress a corpus of text and image items into one memory directory (resumable; refuses a directory built by
    another compressor). Mixed batches are encoded one kind at a time, rows staying in corpus order.

    ``compressor``: a trained-compressor path (see ``load_model``) or a loaded model; ``spec`` (default: the model
    config's `index:` section) is honoured as given, and so is ``batch_size`` (default ``index.batch_size``). Every
    image is loaded before anything is written: a bad one (missing, truncated, undecodable, zero-size, unsupported
    mode) is a DataError naming the item, the file and the line, unless ``skip_bad``: then the rest is built and
    ``skipped_report_path(out_dir)`` lists what was left out (one JSON record a line: id, image, where, error).
    """
    out_dir = Path(out_dir)
    model = load_model(compressor) if isinstance(compressor, (str, Path)) else compressor
    spec = spec or model.config.index
    if not corpus:
        raise DataError(f"{out_dir}: the corpus has no items to build a memory of")
    corpus, skipped = screen_images(corpus)
    if skipped and not skip_bad:
        raise DataError(
            f"{skipped[0]['error']}; {len(skipped)} image item(s) of the corpus for {out_dir} cannot be loaded "
            "(pass --skip-bad to build the rest and report them)"
        )
    if not corpus:
        raise DataError(f"{out_dir}: no item of the corpus is usable ({len(skipped)} bad image(s)); nothing to build")
    fp = compressor_fingerprint(model)
    stored = out_dir / COMPRESSOR_DIR / "fingerprint.txt"
    if stored.exists() and stored.read_text().strip() != fp:
        raise IndexError_(
            f"{out_dir} was built with compressor {stored.read_text().strip()}, not {fp}; "
            "choose another output directory or delete it"
        )
    index = build_index(
        out_dir,
        corpus,
        model.encode_items,
        key_dim=model.config.compressor.key_dim,
        latent_dim=model.compressor.hidden,
        fingerprint=fp,
        spec=spec,
        batch_size=batch_size or spec.batch_size,
        progress=progress,
        vision=vision_spec(model.config),
    )
    if not stored.exists():
        export_compressor(model, out_dir / COMPRESSOR_DIR)
    if skip_bad:  # written once the memory is: a report of a build that failed would describe nothing
        write_jsonl(skipped_report_path(out_dir), skipped)
    return index


def memory_info(path: str | Path) -> dict:
    """What ``latentlab index info`` prints: the index's manifest fields and sizes, the items per modality, and the
    vision tower the manifest records (for a manifest older than that field: the one of the compressor stored
    beside it; None: text only)."""
    from latentlab.memory.checkpoint import config_beside

    index = LatentIndex.open(path, verify=True)
    info = index.info()
    modalities: dict[str, int] = {}
    for item in index.items_for(index.ids):
        modalities[kind_of(item)] = modalities.get(kind_of(item), 0) + 1
    info["modalities"] = modalities
    stored = Path(path) / COMPRESSOR_DIR
    if index.vision is None and (stored / "config.yaml").exists():
        info["vision"] = vision_spec(config_beside(stored))
    return info


# --------------------------------------------------------------------------- answering


class LatentMemory:
    """A built memory and the model that built it: ``search`` and ``answer``, batched."""

    def __init__(self, model: LatentMemoryModel, index: LatentIndex | ShardedLatentIndex | None, batch_size: int = 16):
        self.model = model
        self.index = index
        self.batch_size = batch_size

    @classmethod
    def open(
        cls,
        path: str | os.PathLike | Sequence[str | os.PathLike],
        compressor: str | Path | None = None,
        verify: bool = True,
    ) -> LatentMemory:
        """Open a memory, or a list of its shards searched as one; ``compressor`` (default: the one stored in the
        first directory) must be the one that built every shard."""
        paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
        if not paths:
            raise IndexError_("no memory directory given")
        for directory in paths:
            if not directory.is_dir():
                raise IndexError_(f"no such memory directory: {directory}")
        source = Path(compressor) if compressor is not None else paths[0] / COMPRESSOR_DIR
        if compressor is None and not (source / WEIGHTS).exists():
            raise IndexError_(f"{paths[0]}: no {COMPRESSOR_DIR}/{WEIGHTS} (is this a memory built by latentlab?)")
        model = load_model(source)
        fingerprint = compressor_fingerprint(model)
        if isinstance(path, (str, os.PathLike)):
            return cls(model, LatentIndex.open(paths[0], fingerprint=fingerprint, verify=verify))
        return cls(model, ShardedLatentIndex.open(paths, fingerprint=fingerprint, verify=verify))

    @property
    def generator(self):
        return self.model.generator

    def query_keys(self, questions: Sequence[str]) -> torch.Tensor:
        return self.model.query_keys(questions, self.batch_size)

    def search(self, questions: str | Sequence[str], k: int = 5) -> list[list[Hit]]:
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        if self.index is None:
            raise LatentLabError("this LatentMemory has no index (built for per-question pools only)")
        if k < 1:
            raise LatentLabError(f"k must be >= 1, got {k}")
        scores, ids = self.index.search(self.query_keys(questions).cpu().numpy(), k)
        results = []
        for row_scores, row_ids in zip(scores, ids):
            kept = [(s, i) for s, i in zip(row_scores, row_ids) if i is not None]
            items = self.index.items_for([i for _, i in kept])
            results.append([Hit.of(e, s) for (s, _), e in zip(kept, items)])
        return results[0] if single else results

    def answer_from_latents(
        self,
        questions: Sequence[str],
        latents: Sequence[torch.Tensor],
        hits: Sequence[list[Hit]],
        slot_format: str | None = None,
    ) -> list[Answer]:
        """Answer each question from its latents ([k_i, H] each) through the projector and the generator."""
        answers: list[Answer] = []
        for start in range(0, len(questions), self.batch_size):
            qs = list(questions[start : start + self.batch_size])
            texts, prompts = self.model.answer_latents(qs, list(latents[start : start + self.batch_size]), slot_format)
            answers += _answers(qs, texts, prompts, hits[start : start + self.batch_size])
        return answers

    def answer(self, questions: str | Sequence[str], k: int = 5) -> Answer | list[Answer]:
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        hits = self.search(questions, k)
        latents = [torch.from_numpy(self.index.latents_for([h.id for h in row])) for row in hits]
        answers = self.answer_from_latents(questions, latents, hits)
        return answers[0] if single else answers


def answer_with_text(
    model: LatentMemoryModel, questions: Sequence[str], hits: Sequence[list[Hit]], batch_size: int = 8
) -> list[Answer]:
    """Raw-text RAG with the same generator: `Context i: text` for each hit (none: no retrieval)."""
    answers: list[Answer] = []
    for start in tqdm(range(0, len(questions), batch_size), desc="answer (text)", leave=False, disable=None):
        qs = list(questions[start : start + batch_size])
        rows = list(hits[start : start + batch_size])
        texts, prompts = model.answer_texts(qs, [[titled(h.title, h.text or "") for h in row] for row in rows])
        answers += _answers(qs, texts, prompts, rows)
    return answers


def _answers(questions: list[str], texts: list[str], prompts: list[Prompt], hits) -> list[Answer]:
    return [
        Answer(q, t, list(h), p.total_tokens, p.no_system_tokens, p.context_tokens, p.truncated_items)
        for q, t, p, h in zip(questions, texts, prompts, hits)
    ]


def answer_to_record(answer: Answer, with_text: bool = True) -> dict:
    """A JSON-ready record of ``answer``; ``with_text=False`` keeps hits as ids and scores only (results that are
    committed must not repeat a licensed dataset's evidence text)."""
    hits = [h.__dict__ if with_text else {"id": h.id, "score": h.score} for h in answer.hits]
    return json.loads(
        json.dumps(
            {
                "question": answer.question,
                "answer": answer.answer,
                "hits": hits,
                "prompt_tokens": answer.prompt_tokens,
                "no_system_tokens": answer.no_system_tokens,
                "context_tokens": answer.context_tokens,
                "truncated_items": answer.truncated_items,
            }
        )
    )
