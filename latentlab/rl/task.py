"""`task: latent_rl` for ``latentlab.training.fit``: prompt batches from the reasoning data, the GRPO module, and the
policy of a finished run as a ``LatentCoTModule`` (so latent_cot's evaluation scores it).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from latentlab.configs import ExperimentConfig, resolve_path
from latentlab.data.schema import CoTExample
from latentlab.errors import ConfigError
from latentlab.optim import TRAIN_STREAM, derive_seed
from latentlab.parts import FitParts
from latentlab.reasoning.data import load_train_val
from latentlab.reasoning.module import LatentCoTModule
from latentlab.weights import load_lightning_checkpoint, strip_prefixes

log = logging.getLogger(__name__)

POLICY_PREFIX = "policy."


def _examples(batch: list[CoTExample]) -> dict[str, list[str]]:
    """A prompt batch: ids, questions and gold answers (plain lists: Lightning moves batches field by field)."""
    return {
        "ids": [ex.id for ex in batch],
        "questions": [ex.question for ex in batch],
        "answers": [ex.answer for ex in batch],
    }


class PromptDataModule(L.LightningDataModule):
    """Batches of ``rl.prompts_per_step`` training examples (the module builds the stage-0 prompts with its
    tokenizer), times ``advantage.max_draws`` with dynamic sampling (the module's draws come from one batch);
    validation batches of ``reasoning.data.batch_size`` for greedy val/accuracy."""

    def __init__(self, config: ExperimentConfig):
        super().__init__()
        self.config = config
        self.train_set: list[CoTExample] | None = None
        self.val_set: list[CoTExample] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = load_train_val(self.config)

    def train_dataloader(self) -> DataLoader:
        advantage = self.config.advantage
        size = self.config.rl.prompts_per_step * (advantage.max_draws if advantage.dynamic_sampling else 1)
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, TRAIN_STREAM, epoch))
        return DataLoader(
            self.train_set,
            batch_size=size,
            shuffle=True,
            collate_fn=_examples,
            generator=generator,
            drop_last=len(self.train_set) >= size,
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_set:
            return []
        return DataLoader(
            self.val_set, batch_size=self.config.reasoning.data.batch_size, shuffle=False, collate_fn=_examples
        )


def build_task(config: ExperimentConfig) -> FitParts:
    """The GRPO module (policy from ``reasoning.init_from``, reference copy with ``rl.reference``) and prompts.

    Loss, aggregation and reward names are looked up here; an unknown one is a ConfigError listing the known ones.
    """
    from latentlab.rl.module import GRPOModule

    try:
        module = GRPOModule(config)
    except ConfigError as err:
        raise ConfigError(f"{config.source_file or '<config>'}: {err}") from None
    r = config.reasoning
    if r.init_from:
        module.load_reasoner_from(resolve_path(config, "reasoning.init_from", r.init_from))
    else:
        log.warning(
            "reasoning.init_from is unset: GRPO starts from the reasoner's initial weights, not from an SFT run "
            "(the references warn that RL from a model that never learned the format collapses)"
        )
    if config.rl.reference:
        module.make_reference()
    return FitParts(datamodule=PromptDataModule(config), module=module, trainer_kwargs={"gradient_clip_val": None})


def load_policy(checkpoint: str | Path) -> LatentCoTModule:
    """The policy of a latent_rl run (its directory, or a .ckpt beside its config.yaml) as a ``LatentCoTModule``."""
    from latentlab.reasoning.evaluate import read_run

    ckpt, run_config = read_run(Path(checkpoint).expanduser(), "latent_rl")
    module = LatentCoTModule(run_config)
    state = load_lightning_checkpoint(ckpt)["state_dict"]
    module.load_state_dict(strip_prefixes(state, (POLICY_PREFIX,)))
    return module.eval()
