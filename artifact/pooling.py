"""Padding, pooling and the sentence-embedding head in numpy: the arithmetic shared by the server
and the model's evaluation.

Pooling turns a batch's hidden states (B, T, C) into one vector per sequence, as
sentence-transformers' Pooling module does for right-padded input; Dense layers and L2
normalisation then apply in the order the model's modules.json lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# sentence-transformers' names, in its order
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
ACTIVATIONS = ("identity", "tanh", "relu", "sigmoid")


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token ids to the longest: (input_ids, attention_mask), both int64 (B, T)."""
    T = max(len(s) for s in sequences)
    input_ids = np.full((len(sequences), T), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), T), dtype=np.int64)
    for i, ids in enumerate(sequences):
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
    return input_ids, attention_mask


def token_mask(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    return (np.arange(hidden.shape[1])[None, :] < lengths[:, None]).astype(hidden.dtype)  # (B, T)


def mean_pool(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, T, C) hidden states -> (B, C): the average over each row's first lengths[i] tokens."""
    summed = np.einsum("btc,bt->bc", hidden, token_mask(hidden, lengths))
    return summed / np.maximum(lengths, 1)[:, None].astype(hidden.dtype)


def mean_sqrt_len_pool(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The sum of the real tokens' vectors over sqrt(length)."""
    summed = np.einsum("btc,bt->bc", hidden, token_mask(hidden, lengths))
    return summed / np.sqrt(np.maximum(lengths, 1)).astype(hidden.dtype)[:, None]


def max_pool(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The largest value of each channel over the real tokens."""
    real = token_mask(hidden, lengths).astype(bool)[:, :, None]  # (B, T, 1)
    return np.where(real, hidden, -np.inf).max(axis=1).astype(hidden.dtype)


def weighted_mean_pool(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Token t (from 1) weighs t: later tokens count more (SGPT's position-weighted mean)."""
    weights = token_mask(hidden, lengths) * np.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype)  # (B, T)
    summed = np.einsum("btc,bt->bc", hidden, weights)
    return summed / np.maximum(weights.sum(1), 1e-9)[:, None]


def cls_pool(hidden: np.ndarray) -> np.ndarray:
    return hidden[:, 0, :].copy()


def last_token_pool(hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The last real token's vector (zeros for an empty row, as sentence-transformers gives)."""
    last = np.maximum(lengths, 1) - 1
    pooled = hidden[np.arange(hidden.shape[0]), last, :].copy()
    pooled[lengths == 0] = 0.0
    return pooled


def pool_mode(hidden: np.ndarray, lengths: np.ndarray, mode: str) -> np.ndarray:
    """(B, T, C), (B,) -> (B, C) by one of POOLING_MODES."""
    if mode == "mean":
        return mean_pool(hidden, lengths)
    if mode == "cls":
        return cls_pool(hidden)
    if mode == "max":
        return max_pool(hidden, lengths)
    if mode == "mean_sqrt_len_tokens":
        return mean_sqrt_len_pool(hidden, lengths)
    if mode == "weightedmean":
        return weighted_mean_pool(hidden, lengths)
    if mode == "lasttoken":
        return last_token_pool(hidden, lengths)
    raise ValueError(f"pooling {mode!r} is not one of {', '.join(POOLING_MODES)}")


@dataclass(frozen=True)
class Dense:
    """sentence-transformers' Dense module: activation(x Wᵀ + b), applied to pooled vectors."""

    weight: np.ndarray  # (out_features, in_features)
    bias: np.ndarray | None  # (out_features,)
    activation: str  # one of ACTIVATIONS

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.T  # (B, out)
        if self.bias is not None:
            y = y + self.bias
        if self.activation == "tanh":
            y = np.tanh(y)
        elif self.activation == "relu":
            y = np.maximum(y, 0)
        elif self.activation == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        return y.astype(x.dtype, copy=False)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pool(
    hidden: np.ndarray, lengths: np.ndarray, pooling: str, normalize: bool, dense: Sequence[Dense] = ()
) -> np.ndarray:
    """Sentence embeddings (B, D): pooled, through the model's Dense layers, then L2-normalised if asked."""
    pooled = pool_mode(hidden, lengths, pooling)
    for layer in dense:
        pooled = layer(pooled)
    return l2_normalize(pooled) if normalize else pooled
