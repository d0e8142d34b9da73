"""What a task hands to `fit`: its LightningDataModule, its LightningModule and task-specific Trainer settings.

A leaf module, so that the task packages (memory, reasoning) and the trainer depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FitParts:
    """The datamodule and module `fit` trains, extra callbacks, and keyword arguments for ``lightning.Trainer``."""

    datamodule: Any
    module: Any
    callbacks: list = field(default_factory=list)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
