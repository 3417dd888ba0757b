"""From a batch's graph outputs to each sequence's answer: pooling, normalising, slicing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifact.pooling import Dense, pad_batch, pool
from service.core.attention import AttentionPlan, sequence_attention


@dataclass(frozen=True)
class SequenceOptions:
    """What one queued sequence needs from its batch (carried as Sequence.payload)."""

    token_ids: list[int]
    pooling: str
    normalize: bool
    token_embeddings: bool
    attention: AttentionPlan | None = None  # on the attention graph: what to answer from its probabilities


@dataclass(frozen=True)
class SequenceResult:
    embedding: np.ndarray  # (embedding_dim,)
    token_embeddings: np.ndarray | None  # (len, d_model)
    attention: np.ndarray | None  # (layers', heads', rows', len): AttentionPlan.shape


def batch_inputs(options: list[SequenceOptions]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (input_ids, attention_mask) for a batch's sequences."""
    return pad_batch([o.token_ids for o in options])


def split_batch(
    hidden: np.ndarray,
    attention_mask: np.ndarray,
    options: list[SequenceOptions],
    attention: np.ndarray | None,
    dense: tuple[Dense, ...] = (),
) -> list[SequenceResult]:
    """Each sequence's answer from the batch's hidden states (B, T, C) and, for the attention
    graph, its probabilities (B, L, h, T, T): the batch is pooled once per pooling mode, then
    through the model's Dense layers (artifact/pooling.py, as sentence-transformers does)."""
    hidden = hidden.astype(np.float32, copy=False)
    lengths = attention_mask.sum(1)
    pooled = {
        (mode, normalize): pool(hidden, lengths, mode, normalize, dense)
        for mode, normalize in {(o.pooling, o.normalize) for o in options}
    }
    results = []
    for i, o in enumerate(options):
        n = int(lengths[i])
        tokens = hidden[i, :n].copy() if o.token_embeddings else None
        probs = None
        if attention is not None and o.attention is not None:
            probs = sequence_attention(attention[i], n, o.attention)  # its own n x n block only
        vector = pooled[(o.pooling, o.normalize)][i].astype(np.float32, copy=False)
        results.append(SequenceResult(vector, tokens, probs))
    return results
