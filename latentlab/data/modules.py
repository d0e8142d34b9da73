"""LightningDataModules: QA-with-evidence batches with positives and sampled hard negatives.

Texts stay strings here; the LightningModule tokenises them, because the tokenizer belongs to the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from latentlab.config import DataConfig, ExperimentConfig, resolve_path
from latentlab.data.schema import QAExample, read_qa
from latentlab.data.synthetic import generate_world
from latentlab.errors import DataError


@dataclass
class QABatch:
    """A micro-batch: B questions, their P positives and N hard negatives (flattened, with owners)."""

    question_ids: list[str]
    questions: list[str]
    answers: list[list[str]]
    positives: list[str]
    positive_owner: torch.Tensor  # [P] question index of each positive
    negatives: list[str]
    negative_owner: torch.Tensor  # [N] question index of each hard negative

    def __len__(self) -> int:
        return len(self.questions)


class QADataset(Dataset):
    """QA examples; each access samples up to ``hard_negatives`` non-supporting items of the question."""

    def __init__(self, examples: list[QAExample], hard_negatives: int, max_positives: int, seed: int):
        usable = [e for e in examples if e.supporting]
        if not usable:
            raise DataError("no question has supporting evidence; the latent-memory losses need positives")
        self.examples = usable
        self.hard_negatives = hard_negatives
        self.max_positives = max_positives
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> tuple[QAExample, list[str], list[str]]:
        example = self.examples[index]
        rng = np.random.default_rng((self.seed, index, self.epoch))
        positives = [e.display_text() for e in example.supporting_evidence()][: self.max_positives]
        pool = [e.display_text() for e in example.negative_evidence()]
        take = min(self.hard_negatives, len(pool))
        chosen = rng.choice(len(pool), size=take, replace=False).tolist() if take else []
        return example, positives, [pool[i] for i in sorted(chosen)]


def collate_qa(items: list[tuple[QAExample, list[str], list[str]]]) -> QABatch:
    positives, pos_owner, negatives, neg_owner = [], [], [], []
    for b, (_, pos, neg) in enumerate(items):
        positives += pos
        pos_owner += [b] * len(pos)
        negatives += neg
        neg_owner += [b] * len(neg)
    return QABatch(
        question_ids=[e.id for e, _, _ in items],
        questions=[e.question for e, _, _ in items],
        answers=[list(e.answers) for e, _, _ in items],
        positives=positives,
        positive_owner=torch.tensor(pos_owner, dtype=torch.long),
        negatives=negatives,
        negative_owner=torch.tensor(neg_owner, dtype=torch.long),
    )


def load_qa_split(config: ExperimentConfig, split: str, training_limits: bool = True) -> list[QAExample]:
    """Examples of ``train``/``val``/``test`` from the configured source.

    ``training_limits``: apply ``data.limit_train``/``data.limit_val`` (what a fit uses); evaluation passes False
    and applies ``eval.limit`` instead, so a short validation during training does not shrink the evaluated split.
    """
    data: DataConfig = config.data
    if data.source == "synthetic":
        s = data.synthetic
        world = generate_world(
            s.num_people,
            s.seed,
            s.distractors,
            s.two_hop_fraction,
            train_questions_per_person=s.train_questions_per_person,
        )
        examples = world.questions[{"train": "train", "val": "validation", "test": "test"}[split]]
    else:
        value = getattr(data, split)
        if value is None:
            return []
        path = resolve_path(config, f"data.{split}", value)
        examples = _read_source(data.source, path)
    limit = {"train": data.limit_train, "val": data.limit_val}.get(split) if training_limits else None
    return examples[:limit] if limit else examples


def _read_source(source: str, path: Path) -> list[QAExample]:
    if source == "jsonl":
        return read_qa(path)
    from latentlab.data.converters import convert_hotpotqa

    return convert_hotpotqa(path)


class QADataModule(L.LightningDataModule):
    """Train/validation loaders of QA batches for the latent-memory module."""

    def __init__(self, config: ExperimentConfig):
        super().__init__()
        self.config = config
        self.train_set: QADataset | None = None
        self.val_set: QADataset | None = None

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        if self.train_set is None:
            make = lambda ex: QADataset(ex, cfg.loss.hard_negatives, cfg.data.max_positives, cfg.seed)  # noqa: E731
            self.train_set = make(load_qa_split(cfg, "train"))
            val = load_qa_split(cfg, "val")
            self.val_set = make(val) if val else None

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.config.data.batch_size,
            shuffle=True,
            collate_fn=collate_qa,
            generator=generator,
            drop_last=len(self.train_set) >= self.config.data.batch_size,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.config.data.batch_size, shuffle=False, collate_fn=collate_qa)
