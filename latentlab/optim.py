"""What both training modules share: AdamW with linear warm-up then cosine decay, and seed derivation.

Kept apart from the modules so that the schedule and the random streams are defined once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from latentlab.configs import OptimConfig

TRAIN_STREAM = 1_000_003
"""Multiplier of the training random streams (per step and micro-batch)."""
VAL_STREAM = 7919
"""Multiplier of the validation random streams (fixed per batch, so validation sees the same draws every time)."""


def derive_seed(seed: int, stream: int, offset: int = 0) -> int:
    """The seed of one random stream: ``seed * stream + offset`` (``offset`` counts steps, batches or samples).

    Distinct streams of one run never share a seed for the offsets a run reaches (offset < stream)."""
    return seed * stream + offset


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float) -> Callable[[int], float]:
    """LR multiplier: linear 0->1 over ``warmup_steps``, then cosine 1->``floor`` at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def adamw_warmup_cosine(params: Iterable, config: OptimConfig, total_steps: int) -> dict[str, Any]:
    """``configure_optimizers``'s answer: AdamW over ``params`` and the per-step warm-up/cosine schedule."""
    import torch

    optimizer = torch.optim.AdamW(list(params), lr=config.lr, weight_decay=config.weight_decay)
    schedule = warmup_cosine(config.warmup_steps, max(1, int(total_steps)), config.min_lr / config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
