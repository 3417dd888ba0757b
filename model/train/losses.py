"""Sentence-pair losses on the two sides' embeddings u, v (B, C) and gold scores (B,) in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

SIMILARITY_SCALE = 20.0  # cosine -> logit scale of CoSENT and in-batch negatives (sentence-transformers' default)


def cosent_loss(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """CoSENT: log(1 + Σ exp(s·(cos_j - cos_i))) over pairs with gold_i > gold_j.

    Only the ranking of cosines is trained, which is what Spearman measures.
    """
    cos = F.cosine_similarity(u, v, dim=-1) * SIMILARITY_SCALE  # (B,)
    diff = cos[:, None] - cos[None, :]  # (B, B): cos_i - cos_j
    wrong_order = scores[:, None] < scores[None, :]  # gold_i < gold_j, so cos_i should be lower
    diff = diff.masked_fill(~wrong_order, torch.finfo(diff.dtype).min)
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)


def cosine_loss(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the cosine and the gold score scaled to [0, 1]."""
    return F.mse_loss(F.cosine_similarity(u, v, dim=-1), scores)


def in_batch_negatives_loss(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Each anchor must pick its own positive among every positive in the batch."""
    logits = F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T * SIMILARITY_SCALE  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(u), device=u.device))


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosent": cosent_loss,
    "cosine": cosine_loss,
    "in-batch": in_batch_negatives_loss,
}
