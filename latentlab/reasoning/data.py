"""Reasoning data for `task: latent_cot`: load the splits, lay examples out for the current curriculum stage, batch.

The stage follows the trainer's epoch, and the trainer rebuilds the loaders every epoch, so a stage change is seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from latentlab.configs import ExperimentConfig, resolve_path
from latentlab.data.schema import CoTExample, read_cot
from latentlab.errors import ConfigError, DataError
from latentlab.optim import TRAIN_STREAM, VAL_STREAM, derive_seed
from latentlab.reasoning.curriculum import (
    DEFAULT_FORMAT,
    CoTTextFormat,
    CurriculumConfig,
    LayoutVocab,
    build_layout,
    sample_stage,
)
from latentlab.reasoning.thoughts import ThoughtBatch, collate_layouts

Split = Literal["train", "val", "test"]


def load_train_val(config: ExperimentConfig) -> tuple[list[CoTExample], list[CoTExample] | None]:
    """The training split (empty is an error) and the validation split (None when it is empty)."""
    train = load_cot_split(config, "train")
    if not train:
        raise DataError(f"{config.source_file or '<config>'}: reasoning.data gives no training examples")
    return train, load_cot_split(config, "val") or None


def load_cot_split(config: ExperimentConfig, split: Split) -> list[CoTExample]:
    """Examples of one split from ``reasoning.data``: generated, latentlab JSONL, or an official format."""
    data = config.reasoning.data
    if data.synthetic:
        from latentlab.data.synthetic_reasoning import synthetic_splits

        if data.source == "arithmetic":
            options = {
                "min_steps": data.min_steps,
                "max_steps": data.max_steps,
                "max_operand": data.max_operand,
                "max_value": data.max_value,
                "ops": tuple(data.ops),
            }
        else:
            options = {"min_hops": data.min_steps, "max_hops": data.max_steps}
        splits = synthetic_splits(data.source, data.seed, data.num_train, data.num_val, data.num_test, **options)
        examples = splits[{"train": "train", "val": "valid", "test": "test"}[split]]
    else:
        value = getattr(data, split)
        if value is None:
            if split == "train":
                raise ConfigError(
                    f"{config.source_file or '<config>'}: key 'reasoning.data.train': data.source is "
                    f"'{data.source}', so a training file is required"
                )
            return []
        path = resolve_path(config, f"reasoning.data.{split}", value)
        if data.source == "jsonl":
            examples = read_cot(path)
        else:
            from latentlab.data.converters import get_converter

            examples = get_converter(data.source)(path)
    limit = {"train": data.limit_train, "val": data.limit_val}.get(split)
    return examples[:limit] if limit else examples


def latent_step_texts(steps: Sequence[str], n_latent: int, n_groups: int, joiner: str = " ") -> list[str]:
    """What each of ``n_groups`` thought groups reconstructs when the first ``n_latent`` steps are latent.

    Group g rebuilds step g; the last group also takes every later latent step (ATP-Latent's rule when there are
    more steps than groups); groups past the latent steps rebuild the empty text (the decoder's target is EOS only).
    """
    texts = [steps[g] if g < n_latent else "" for g in range(n_groups)]
    if n_groups and n_latent > n_groups:
        texts[-1] = joiner.join(steps[n_groups - 1 : n_latent])
    return texts


@dataclass
class CoTBatch:
    """A micro-batch of reasoning examples laid out for one curriculum stage."""

    ids: list[str]
    questions: list[str]
    answers: list[str]
    thoughts: ThoughtBatch
    """The token layout (question, thought slots, language part) for ``thought_forward``."""
    step_ids: Tensor
    """[B, K, L] tokens of the text each thought group reconstructs (K = thoughts / c; 0 padding)."""
    step_lengths: Tensor
    """[B, K] lengths of ``step_ids`` rows; 0 = the group reconstructs only EOS."""
    stage: int
    """The scheduled stage this batch was laid out for."""
    n_latent_steps: Tensor
    """[B] steps of each example replaced by thoughts."""

    def __len__(self) -> int:
        return len(self.ids)


class CoTCollator:
    """Lays out examples at a stage (per sample with ``uniform_prob``) and pads them into a ``CoTBatch``."""

    def __init__(
        self,
        vocab: LayoutVocab,
        pad_id: int,
        curriculum: CurriculumConfig,
        stage: int,
        thoughts_per_group: int,
        fmt: CoTTextFormat = DEFAULT_FORMAT,
        seed: int = 0,
        sample_stages: bool = False,
    ):
        self.vocab, self.pad_id, self.curriculum, self.stage = vocab, pad_id, curriculum, stage
        self.thoughts_per_group = max(1, thoughts_per_group)
        self.fmt = fmt
        self.sample_stages = sample_stages
        self.rng = random.Random(seed)

    def __call__(self, examples: list[CoTExample]) -> CoTBatch:
        stages = [
            sample_stage(ex, self.stage, self.curriculum, self.rng) if self.sample_stages else self.stage
            for ex in examples
        ]
        layouts = [build_layout(ex, s, self.curriculum, self.vocab, self.fmt) for ex, s in zip(examples, stages)]
        # Unused slots are masked only when thought counts follow the steps, so a row never sees another's count.
        thoughts = collate_layouts(layouts, self.pad_id, mask_unused_thoughts=not self.curriculum.pad_latent_to_max)
        n_groups = thoughts.n_thoughts // self.thoughts_per_group
        texts = [latent_step_texts(ex.steps, layout.n_latent_steps, n_groups) for ex, layout in zip(examples, layouts)]
        encoded = [[self.vocab.encode(text) if text else [] for text in row] for row in texts]
        width = max((len(ids) for row in encoded for ids in row), default=0)
        step_ids = torch.zeros(len(examples), n_groups, width, dtype=torch.long)
        step_lengths = torch.zeros(len(examples), n_groups, dtype=torch.long)
        for b, row in enumerate(encoded):
            for g, ids in enumerate(row):
                step_ids[b, g, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                step_lengths[b, g] = len(ids)
        return CoTBatch(
            ids=[ex.id for ex in examples],
            questions=[ex.question for ex in examples],
            answers=[ex.answer for ex in examples],
            thoughts=thoughts,
            step_ids=step_ids,
            step_lengths=step_lengths,
            stage=self.stage,
            n_latent_steps=torch.tensor([layout.n_latent_steps for layout in layouts], dtype=torch.long),
        )


class CoTDataModule(L.LightningDataModule):
    """Train/validation loaders laid out for the stage of the trainer's current epoch.

    ``vocab`` and ``pad_id`` come from the reasoner (the tokenizer belongs to the model, with its thought tokens);
    ``build_task`` passes ``reload_dataloaders_every_n_epochs=1`` to the Trainer so each epoch gets its stage.
    """

    def __init__(self, config: ExperimentConfig, vocab: LayoutVocab, pad_id: int, fmt: CoTTextFormat = DEFAULT_FORMAT):
        super().__init__()
        self.config = config
        self.vocab, self.pad_id, self.fmt = vocab, pad_id, fmt
        self.train_set: list[CoTExample] | None = None
        self.val_set: list[CoTExample] | None = None
        self.stage_override: int | None = None
        """Lay out for this stage instead of the trainer's (tests, and use outside a Trainer)."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = load_train_val(self.config)

    def current_stage(self) -> int:
        """The scheduled stage: the override, else the stage of the trainer's epoch (``start_stage`` without one)."""
        if self.stage_override is not None:
            return self.stage_override
        return self.config.reasoning.stage_at_epoch(self.epoch())

    def epoch(self) -> int:
        """The trainer's current (0-based) epoch; 0 outside a Trainer."""
        return self.trainer.current_epoch if self.trainer is not None else 0

    def collator(self, train: bool) -> CoTCollator:
        r = self.config.reasoning
        return CoTCollator(
            self.vocab,
            self.pad_id,
            r.curriculum,
            self.current_stage(),
            r.curriculum.thoughts_per_step,
            self.fmt,
            seed=derive_seed(self.config.seed, TRAIN_STREAM, self.epoch()),
            sample_stages=train,
        )

    def train_dataloader(self) -> DataLoader:
        data = self.config.reasoning.data
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, VAL_STREAM, self.epoch()))
        return DataLoader(
            self.train_set,
            batch_size=data.batch_size,
            shuffle=True,
            collate_fn=self.collator(train=True),
            generator=generator,
            drop_last=len(self.train_set) >= data.batch_size,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_set:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.config.reasoning.data.batch_size,
            shuffle=False,
            collate_fn=self.collator(train=False),
        )
