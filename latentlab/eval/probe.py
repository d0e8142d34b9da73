"""Linear probes: how much of a label a set of vectors carries, measured on held-out vectors.

Used to ask whether stored latents still hold the value their fact states (a profession, a city), which separates
a compressor that drops the information from a reader (projector + generator) that cannot get it out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class TokenProbeResult:
    """Held-out recall of a linear bag-of-words probe: of each test row's target tokens, the share among its
    ``top_k`` highest-scoring vocabulary tokens, next to ranking by training-set document frequency alone."""

    n_train: int
    n_test: int
    vocab: int
    top_k: int
    recall: float
    prior_recall: float


def bag_of_words_probe(
    train_features: torch.Tensor,
    train_tokens: Sequence[Sequence[int]],
    test_features: torch.Tensor,
    test_targets: Sequence[Sequence[int]],
    top_k: int = 50,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
) -> TokenProbeResult:
    """Which tokens a vector says its text holds: a linear head [D -> vocab] trained with multi-label BCE to predict
    the set of tokens of each training row's text, then scored on held-out rows by recall@``top_k`` of their
    ``test_targets`` (for example the tokens of a question's answer inside its supporting sentence).

    The vocabulary is the training rows' tokens; a target token outside it counts as missed, for the probe and the
    frequency prior alike. Features are standardised with the training rows' mean and std. Minibatches (seeded
    order) keep the [batch, vocab] logits small.
    """
    n_train, n_test = len(train_tokens), len(test_targets)
    if train_features.dim() != 2 or train_features.shape[0] != n_train or n_train < 2:
        raise ConfigError(
            f"bag_of_words_probe needs train features [N >= 2, D] and N token lists, got "
            f"{tuple(train_features.shape)} and {n_train}"
        )
    if test_features.dim() != 2 or test_features.shape[0] != n_test or n_test < 1:
        raise ConfigError(
            f"bag_of_words_probe needs test features [M >= 1, D] and M target lists, got "
            f"{tuple(test_features.shape)} and {n_test}"
        )
    if test_features.shape[1] != train_features.shape[1]:
        raise ConfigError(
            f"train and test features differ in width: {train_features.shape[1]} vs {test_features.shape[1]}"
        )
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k}")
    if any(not targets for targets in test_targets):
        raise ConfigError("every test row needs at least one target token")
    vocab = sorted({t for tokens in train_tokens for t in tokens})
    column = {t: i for i, t in enumerate(vocab)}
    multi_hot = torch.zeros(n_train, len(vocab))
    for row, tokens in enumerate(train_tokens):
        multi_hot[row, [column[t] for t in set(tokens)]] = 1.0
    x = train_features.float()
    mean, std = x.mean(dim=0), x.std(dim=0)
    x = (x - mean) / (std + 1e-6)
    x_test = (test_features.float() - mean) / (std + 1e-6)
    frequency = multi_hot.mean(dim=0).clamp(1e-4, 1 - 1e-4)
    head = torch.nn.Linear(x.shape[1], len(vocab))
    torch.nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.log(frequency / (1 - frequency)))  # starts at the prior
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    rng = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(epochs):
            for rows in torch.randperm(n_train, generator=rng).split(batch_size):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x[rows]), multi_hot[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    k = min(top_k, len(vocab))
    with torch.no_grad():
        top = head(x_test).topk(k, dim=-1).indices
    prior_top = set(frequency.topk(k).indices.tolist())

    def recall(row_top: set[int], targets: Sequence[int]) -> float:
        wanted = set(targets)
        return sum(column.get(t, -1) in row_top for t in wanted) / len(wanted)

    probe = sum(recall(set(top[i].tolist()), test_targets[i]) for i in range(n_test)) / n_test
    prior = sum(recall(prior_top, targets) for targets in test_targets) / n_test
    return TokenProbeResult(n_train, n_test, len(vocab), k, probe, prior)


@dataclass(frozen=True)
class ImageSensitivity:
    """How much an image item's latent depends on its picture, against its title (``image_sensitivity``)."""

    images: int
    picture_swap: float
    """Mean L2 distance between an item's latent and the latent of the same title with the next item's picture."""
    picture_swap_cosine: float
    """Mean cosine similarity of those two latents (1.0: the picture changes nothing)."""
    title_swap: float | None
    """The same distance with the next item's title and its own picture (None when the items have no titles)."""
    pooled_std: float
    """Std over the items of the tower's pooled output, averaged over dimensions: near 0, a collapsed tower."""
    pooled_scale: float
    """Mean magnitude of that output, to read ``pooled_std`` against."""

    def summary(self) -> str:
        ratio = f"; picture/title {self.picture_swap / self.title_swap:.3f}" if self.title_swap else ""
        title = f"{self.title_swap:.3f}" if self.title_swap is not None else "n/a (untitled)"
        return (
            f"{self.images} images: a picture swap moves a latent by {self.picture_swap:.3f} (cosine "
            f"{self.picture_swap_cosine:.4f}), a title swap by {title}{ratio}; tower pooled output std over images "
            f"{self.pooled_std:.4f} against a mean magnitude of {self.pooled_scale:.4f}"
        )


@torch.no_grad()
def image_sensitivity(compressor, items: Sequence, batch_size: int = 32) -> ImageSensitivity:
    """Compress each image item as it is, with the next item's picture, and with the next item's title (cyclic).

    A compressor that reads its pictures moves a latent when the picture changes; one whose tower collapsed moves
    it by almost nothing while a title swap moves it far. Needs at least two image items, and their pictures are
    loaded with the same errors as everywhere (``load_image``).
    """
    images = [e for e in items if e.image]
    if len(images) < 2:
        raise ConfigError(f"image_sensitivity needs at least 2 image items, got {len(images)}")
    shifted = images[1:] + images[:1]
    pictures = [replace(a, image=b.image) for a, b in zip(images, shifted)]
    titled = all(e.title for e in images)
    titles = [replace(a, title=b.title) for a, b in zip(images, shifted)] if titled else []

    def encode(rows):
        return torch.cat([compressor.encode_items(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)])

    own, other_picture = encode(images).float(), encode(pictures).float()
    # A second, tower-only pass for the pooled output: eval does not import the memory package's image encoder.
    pooled = torch.cat(
        [compressor.vision.encode(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)]
    ).float()
    title_swap = (own - encode(titles).float()).norm(dim=1).mean().item() if titled else None
    return ImageSensitivity(
        images=len(images),
        picture_swap=(own - other_picture).norm(dim=1).mean().item(),
        picture_swap_cosine=torch.nn.functional.cosine_similarity(own, other_picture, dim=1).mean().item(),
        title_swap=title_swap,
        pooled_std=pooled.std(dim=0).mean().item(),
        pooled_scale=pooled.abs().mean().item(),
    )
