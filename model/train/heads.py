"""The masked-LM head that pre-training puts on top of the encoder, and BERT's token corruption."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import EncoderConfig
from model.tokenizer import SPECIAL_TOKENS


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then scores tied to the token embedding."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))  # (N, C)
        return x @ token_embedding.T + self.bias  # (N, vocab)


def mask_tokens(
    input_ids: torch.Tensor, candidates: torch.Tensor, mask_id: int, vocab_size: int, mask_prob: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's recipe: pick mask_prob of the candidates; of those 80% [MASK], 10% random, 10% kept.

    Draws come from a generator seeded per call, so a resumed run draws the masks it would have.
    Returns the corrupted ids and labels (-100 where nothing is predicted).
    """
    g = torch.Generator().manual_seed(seed)
    B, T = input_ids.shape
    selected = (torch.rand(B, T, generator=g) < mask_prob) & candidates
    # a row with something to predict always predicts at least one token
    empty = ~selected.any(1) & candidates.any(1)
    pick = (torch.rand(B, T, generator=g) * candidates).argmax(1)  # a random candidate per row
    selected[empty, pick[empty]] = True
    action = torch.rand(B, T, generator=g)
    random_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (B, T), generator=g)
    corrupted = torch.where(selected & (action < 0.8), mask_id, input_ids)
    corrupted = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
    labels = torch.where(selected, input_ids, -100)
    return corrupted, labels
