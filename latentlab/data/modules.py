"""LightningDataModules: QA-with-evidence batches with positives and sampled hard negatives.

Texts stay strings here; the LightningModule tokenises them, because the tokenizer belongs to the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from latentlab.configs import DataConfig, ExperimentConfig, resolve_path
from latentlab.data.schema import Evidence, QAExample, read_qa, titled
from latentlab.data.synthetic import World, generate_world
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
    positive_rank: torch.Tensor | None = None  # [P] rank of each positive in its question's mined ranking
    negative_rank: torch.Tensor | None = None  # [N] likewise; None when negatives are drawn from the pool
    positive_items: list[Evidence] = field(default_factory=list)  # [P] the positives as items (images need them)
    negative_items: list[Evidence] = field(default_factory=list)  # [N] likewise; both empty for mined negatives

    def __len__(self) -> int:
        return len(self.questions)

    def to(self, device: torch.device | str) -> QABatch:
        """The batch with its tensors on ``device`` (texts and items stay as they are)."""
        tensors = {
            name: getattr(self, name).to(device)
            for name in ("positive_owner", "negative_owner", "positive_rank", "negative_rank")
            if getattr(self, name) is not None
        }
        return replace(self, **tensors)


@dataclass
class QAItem:
    """One question of a batch: its positives and hard negatives (texts), with their mined ranks if any."""

    example: QAExample
    positives: list[str]
    negatives: list[str]
    positive_rank: list[int] | None = None
    negative_rank: list[int] | None = None
    positive_items: list[Evidence] = field(default_factory=list)
    negative_items: list[Evidence] = field(default_factory=list)


def reading_text(item: Evidence) -> str:
    """The text a batch carries for an item: ``display_text`` for text items and described images (what the teacher
    reads); a titled image without a description carries its title, an untitled one nothing."""
    if item.image and not (item.text and item.text.strip()):
        return titled(None, item.title or "")
    return item.display_text()


class QADataset(Dataset):
    """QA examples with their positives and up to ``hard_negatives`` non-supporting items.

    Without ``rankings`` the negatives are drawn at random from the question's own pool (a new draw each epoch).
    With ``rankings`` (question id -> corpus texts, best first; see ``latentlab.memory.mining``) they are the
    question's highest-ranked non-supporting texts, and every item carries its rank: a positive that the
    ranking does not hold ranks after all of it.
    """

    def __init__(
        self,
        examples: list[QAExample],
        hard_negatives: int,
        max_positives: int,
        seed: int,
        rankings: dict[str, list[str]] | None = None,
    ):
        usable = [e for e in examples if e.supporting]
        if not usable:
            raise DataError("no question has supporting evidence; the latent-memory losses need positives")
        if rankings is not None:
            unranked = [e.id for e in usable if e.id not in rankings]
            if unranked:
                raise DataError(f"no mined ranking for {len(unranked)} question(s), e.g. {unranked[:3]}")
        self.examples = usable
        self.hard_negatives = hard_negatives
        self.max_positives = max_positives
        self.seed = seed
        self.rankings = rankings
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> QAItem:
        example = self.examples[index]
        positive_items = example.supporting_evidence()[: self.max_positives]
        positives = [reading_text(e) for e in positive_items]
        if self.rankings is not None:
            ranking = self.rankings[example.id]
            rank = {text: r for r, text in reversed(list(enumerate(ranking)))}
            supporting = {e.display_text() for e in example.supporting_evidence()}
            negatives = [t for t in dict.fromkeys(ranking) if t not in supporting][: self.hard_negatives]
            missing = iter(range(len(ranking), len(ranking) + len(positives)))
            return QAItem(
                example,
                positives,
                negatives,
                [rank[t] if t in rank else next(missing) for t in positives],
                [rank[t] for t in negatives],
            )
        rng = np.random.default_rng((self.seed, index, self.epoch))
        pool = example.negative_evidence()
        take = min(self.hard_negatives, len(pool))
        chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=take, replace=False).tolist())] if take else []
        return QAItem(
            example,
            positives,
            [reading_text(e) for e in chosen],
            positive_items=positive_items,
            negative_items=chosen,
        )


def collate_qa(items: list[QAItem]) -> QABatch:
    positives, pos_owner, negatives, neg_owner, pos_rank, neg_rank = [], [], [], [], [], []
    positive_items, negative_items = [], []
    ranked = all(item.positive_rank is not None for item in items)
    with_items = all(
        len(item.positive_items) == len(item.positives) and len(item.negative_items) == len(item.negatives)
        for item in items
    )
    for b, item in enumerate(items):
        positives += item.positives
        pos_owner += [b] * len(item.positives)
        negatives += item.negatives
        neg_owner += [b] * len(item.negatives)
        if ranked:
            pos_rank += item.positive_rank
            neg_rank += item.negative_rank
        if with_items:
            positive_items += item.positive_items
            negative_items += item.negative_items
    return QABatch(
        question_ids=[item.example.id for item in items],
        questions=[item.example.question for item in items],
        answers=[list(item.example.answers) for item in items],
        positives=positives,
        positive_owner=torch.tensor(pos_owner, dtype=torch.long),
        negatives=negatives,
        negative_owner=torch.tensor(neg_owner, dtype=torch.long),
        positive_rank=torch.tensor(pos_rank, dtype=torch.long) if ranked else None,
        negative_rank=torch.tensor(neg_rank, dtype=torch.long) if ranked else None,
        positive_items=positive_items,
        negative_items=negative_items,
    )


def synthetic_world(config: ExperimentConfig) -> World:
    """The seeded synthetic world of ``data.synthetic``: its facts (the corpus), their values and its questions."""
    s = config.data.synthetic
    return generate_world(
        s.num_people, s.seed, s.distractors, s.two_hop_fraction, train_questions_per_person=s.train_questions_per_person
    )


def synthetic_scenes(config: ExperimentConfig):
    """The seeded image-QA set of ``data.synthetic_images`` (its PNGs written once into its cache folder)."""
    from latentlab.configs import config_root
    from latentlab.data.synthetic_images import generate_scenes

    s = config.data.synthetic_images
    cache = Path(s.cache_dir).expanduser()
    return generate_scenes(
        s.num_scenes,
        s.seed,
        cache if cache.is_absolute() else config_root(config) / cache,
        image_size=s.image_size,
        max_shapes=s.max_shapes,
        image_distractors=s.image_distractors,
        text_distractors=s.text_distractors,
        text_questions=s.text_questions,
    )


def load_qa_split(config: ExperimentConfig, split: str, training_limits: bool = True) -> list[QAExample]:
    """Examples of ``train``/``val``/``test`` from the configured source.

    ``training_limits``: apply ``data.limit_train``/``data.limit_val`` (what a fit uses); evaluation passes False
    and applies ``eval.limit`` instead, so a short validation during training does not shrink the evaluated split.
    """
    data: DataConfig = config.data
    splits = {"train": "train", "val": "validation", "test": "test"}
    if data.source == "synthetic":
        examples = synthetic_world(config).questions[splits[split]]
    elif data.source == "synthetic_images":
        examples = synthetic_scenes(config).questions[splits[split]]
    else:
        value = getattr(data, split)
        if value is None:
            return []
        path = resolve_path(config, f"data.{split}", value)
        examples = _read_source(data.source, path)
    limit = {"train": data.limit_train, "val": data.limit_val}.get(split) if training_limits else None
    return examples[:limit] if limit else examples


def corpus_of(config: ExperimentConfig, examples: list[QAExample]) -> list[Evidence]:
    """The global corpus: the synthetic world's facts, or the union of the questions' evidence pools.

    The union refuses one evidence id with two contents (``extract_corpus``): retrieval and the mined negatives
    find items by id, so a clash would silently read one question's text for another's.
    """
    if config.data.source == "synthetic":
        return synthetic_world(config).corpus()
    if config.data.source == "synthetic_images":
        return synthetic_scenes(config).corpus()
    from latentlab.data.converters import extract_corpus

    return extract_corpus(examples)


def _read_source(source: str, path: Path) -> list[QAExample]:
    if source == "jsonl":
        return read_qa(path)
    from latentlab.data.converters import convert_hotpotqa

    return convert_hotpotqa(path)


class QADataModule(L.LightningDataModule):
    """Train/validation loaders of QA batches for the latent-memory module."""

    def __init__(self, config: ExperimentConfig, rankings: dict[str, list[str]] | None = None):
        super().__init__()
        self.config = config
        self.rankings = rankings  # mined negatives (loss.negatives: mined), else drawn from each pool
        self.train_set: QADataset | None = None
        self.val_set: QADataset | None = None

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        if self.train_set is None:

            def make(examples: list[QAExample]) -> QADataset:
                return QADataset(examples, cfg.loss.hard_negatives, cfg.data.max_positives, cfg.seed, self.rankings)

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
