"""`task: latent_cot` for ``latentlab.training.fit``: the reasoning datamodule, the module and Trainer settings.

The loaders are rebuilt every epoch so that each epoch is laid out for its curriculum stage.
"""

from __future__ import annotations

import logging

from latentlab.configs import ExperimentConfig, resolve_path
from latentlab.parts import FitParts

log = logging.getLogger(__name__)


def build_task(config: ExperimentConfig) -> FitParts:
    """Module (reasoner + thought tokens [+ CVAE]), datamodule laid out with its tokenizer, per-epoch reloads."""
    from latentlab.reasoning.data import CoTDataModule
    from latentlab.reasoning.module import LatentCoTModule

    r = config.reasoning
    module = LatentCoTModule(config)
    if r.init_from:
        module.load_reasoner_from(resolve_path(config, "reasoning.init_from", r.init_from))
    elif r.start_stage > 0 and r.latent:
        log.warning(
            "reasoning.start_stage is %d but reasoning.init_from is unset: the curriculum skips stage 0 (CoT) "
            "and starts from the reasoner's initial weights",
            r.start_stage,
        )
    datamodule = CoTDataModule(config, module.vocab, module.pad_id, module.fmt)
    return FitParts(datamodule=datamodule, module=module, trainer_kwargs={"reload_dataloaders_every_n_epochs": 1})
