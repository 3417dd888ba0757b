"""Padding and pooling in numpy: the arithmetic shared by the server and the model's evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token ids to the longest: (input_ids, attention_mask), both int64 (B, T)."""
    T = max(len(s) for s in sequences)
    input_ids = np.full((len(sequences), T), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), T), dtype=np.int64)
    for i, ids in enumerate(sequences):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
    return input_ids, attention_mask


def mean_pool(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, T, C) hidden states -> (B, C): the average over each row's first lengths[i] tokens."""
    mask = (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(hidden.dtype)  # (B, T)
    summed = np.einsum("btc,bt->bc", hidden, mask)
    return summed / np.maximum(lengths, 1)[:, None].astype(hidden.dtype)


def cls_pool(hidden: np.ndarray) -> np.ndarray:
    return hidden[:, 0, :].copy()


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pool(hidden: np.ndarray, lengths: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    pooled = mean_pool(hidden, lengths) if pooling == "mean" else cls_pool(hidden)
    return l2_normalize(pooled) if normalize else pooled
