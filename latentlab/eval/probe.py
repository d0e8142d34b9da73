"""Linear probes: how much of a label a set of vectors carries, measured on held-out vectors.

Used to ask whether stored latents still hold the value their fact states (a profession, a city), which separates
a compressor that drops the information from a reader (projector + generator) that cannot get it out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchmetrics.functional.classification import multiclass_accuracy

from latentlab.errors import ConfigError


@dataclass(frozen=True)
class ProbeResult:
    """Held-out accuracy of a linear probe, next to always answering the most frequent training label."""

    n_train: int
    n_test: int
    n_classes: int
    accuracy: float
    majority_accuracy: float


def linear_probe(
    features: torch.Tensor,
    labels: Sequence[str],
    train_fraction: float = 0.7,
    seed: int = 0,
    steps: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-3,
) -> ProbeResult:
    """Multinomial logistic regression on standardised ``features`` [N, D]; trained on a seeded ``train_fraction``
    of the rows (full-batch Adam, L2 ``weight_decay``) and scored on the rest.

    Standardisation uses the training rows' mean and std only. Labels seen only in the test rows count as errors.
    """
    n = features.shape[0]
    if features.dim() != 2 or n != len(labels):
        raise ConfigError(
            f"linear_probe needs features [N, D] and N labels, got {tuple(features.shape)} and {len(labels)}"
        )
    n_train = int(round(n * train_fraction))
    if n_train < 1 or n - n_train < 1:
        raise ConfigError(
            f"linear_probe needs at least one training and one test row, got {n} rows at {train_fraction}"
        )
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    x = features.float()
    mean = x[train].mean(dim=0)
    std = x[train].std(dim=0) if n_train > 1 else torch.ones(x.shape[1])  # one row has no spread to divide by
    x = (x - mean) / (std + 1e-6)
    head = torch.nn.Linear(x.shape[1], len(classes))
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(head(x[train]), y[train]) + weight_decay * head.weight.pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        predicted = head(x[test]).argmax(dim=-1)
    accuracy = multiclass_accuracy(predicted, y[test], num_classes=len(classes), average="micro").item()
    most_common = Counter(y[train].tolist()).most_common(1)[0][0]
    majority = (y[test] == most_common).float().mean().item()
    return ProbeResult(n_train, n - n_train, len(classes), accuracy, majority)
