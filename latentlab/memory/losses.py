"""The latent-memory losses as pure functions of tensors.

reconstruction (CE of the decoder rebuilding the evidence, or an image's title), multi-positive InfoNCE
(retrieval; image questions with their image hard negatives too), the distillation KL(teacher || student) over
answer tokens, and the embedding reconstruction of images (MSE to the vision tower's pooled embedding). Shapes are
in each docstring.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Token-mean cross-entropy: the reconstruction decoder's, and the student's on gold answers.

    logits: [N, V] at the labelled positions only (or [B, T, V]); targets: [N] (or [B, T]) token ids,
    ``ignore_index`` where there is nothing to predict. Returns a scalar.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=ignore_index)


def infonce_logits(query_keys: torch.Tensor, item_keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarity / temperature. query_keys: [B, d], item_keys: [M, d] (both L2-normalised) -> [B, M]."""
    return query_keys @ item_keys.T / temperature


def multi_positive_infonce(
    query_keys: torch.Tensor,
    item_keys: torch.Tensor,
    positive_mask: torch.Tensor,
    temperature: float = 0.07,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """Multi-positive InfoNCE: mean over queries of the mean over their positives of -log softmax.

    query_keys: [B, d]; item_keys: [M, d] = every positive in the batch plus the hard negatives (in-batch
    negatives come for free); positive_mask: [B, M] bool, True where item m supports query b (each row needs
    at least one). For query i and positive p: -log(exp(s(q_i, p)/t) / sum_m exp(s(q_i, m)/t)).
    ``reduction="none"`` returns the per-query losses [B] (text and image questions take different weights).
    """
    logits = infonce_logits(query_keys, item_keys, temperature)
    log_probs = logits.float().log_softmax(dim=-1)
    positives = positive_mask.to(log_probs.dtype)
    per_query = -(log_probs * positives).sum(dim=-1) / positives.sum(dim=-1).clamp_min(1.0)
    return per_query if reduction == "none" else per_query.mean()


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Forward KL(teacher || student) per answer token, summed over the vocabulary, averaged over tokens.

    student_logits, teacher_logits: [N, V] at the N answer positions (already gathered, so padding is
    excluded). Gradients flow into the student only.
    """
    student = (student_logits.float() / temperature).log_softmax(dim=-1)
    teacher = (teacher_logits.detach().float() / temperature).log_softmax(dim=-1)
    per_token = (teacher.exp() * (teacher - student)).sum(dim=-1)
    return per_token.mean() * temperature**2


def embedding_reconstruction_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a head's prediction from each image latent against the vision tower's pooled embedding.

    predicted: [N, E] (``image_embed_head(latents)``); target: [N, E], detached here, so the tower is never pulled
    toward what the head predicts. Mean over images and dimensions: a scalar.
    """
    return F.mse_loss(predicted.float(), target.detach().float())
