"""What a request asks of the attention, and each sequence's answer from its own n x n block.

The attention graph gives a batch's probabilities (B, L, h, T, T), right-padded to the longest
T. Every answer here is computed from one sequence's own tokens ([:n, :n]), so padded keys and
padded queries never enter a mean, a max or a rollout, and the answer does not depend on what
else shared the batch. Answers are 4-D, (layers', heads', rows', n):

- reduce_heads "none" keeps the selected heads; "mean" and "max" reduce over them (heads' = 1);
- rollout (Abnar & Zuidema 2020) chains the selected layers in increasing order through
  Â_l = rownorm(0.5·A_l + 0.5·I), A_l the head mean (the max when reduce_heads is "max"):
  R = Â_lk ··· Â_l1 (layers' = 1, heads' = 1);
- rows keeps those query positions (None: all n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REDUCTIONS = ("none", "mean", "max")


@dataclass(frozen=True)
class AttentionPlan:
    """A request's attention, validated: indices into the graph's layers and heads, in answer order."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    reduce_heads: str = "none"
    rollout: bool = False
    rows: tuple[int, ...] | None = None  # None: every row of each sequence
    block: str = "full"  # on a pair: its whole attention, or one block (service.core.pairs)

    def shape(self, n: int) -> tuple[int, int, int, int]:
        """The answer's shape for a sequence of n tokens."""
        layers = 1 if self.rollout else len(self.layers)
        heads = 1 if self.rollout or self.reduce_heads != "none" else len(self.heads)
        rows = n if self.rows is None else len(self.rows)
        return layers, heads, rows, n


def sequence_attention(probs: np.ndarray, n: int, plan: AttentionPlan) -> np.ndarray:
    """One sequence's answer from its graph output probs (L, h, T, T), of which n tokens are real."""
    own = probs[:, :, :n, :n]  # (L, h, n, n): a view, its own tokens only
    if plan.rollout:
        selected = own[np.ix_(plan.layers, plan.heads)]  # (l, h, n, n)
        return rollout_rows(reduce_heads(selected, plan.reduce_heads), plan.layers, plan.rows)[None, None]
    if plan.rows is not None:
        own = own[:, :, list(plan.rows)]  # (L, h, rows, n)
    selected = own[np.ix_(plan.layers, plan.heads)]  # (l, h, rows', n)
    if plan.reduce_heads != "none":
        selected = reduce_heads(selected, plan.reduce_heads)[:, None]
    return np.ascontiguousarray(selected, dtype=np.float32)


def reduce_heads(selected: np.ndarray, how: str) -> np.ndarray:
    """(l, h, q, n) -> (l, q, n): the max over heads when asked, otherwise the mean."""
    if how == "max":
        return selected.max(axis=1).astype(np.float64)
    return selected.mean(axis=1, dtype=np.float64)


def rollout_rows(attention: np.ndarray, layers: tuple[int, ...], rows: tuple[int, ...] | None) -> np.ndarray:
    """Rows of R = Â_lk ··· Â_l1 from the head-reduced attention (l, n, n) of `layers`, in
    increasing layer order. Only the kept rows are carried through the product:
    R[rows] = Â_lk[rows] · Â_l(k-1) ··· Â_l1, (q, n) by (n, n) per layer."""
    n = attention.shape[-1]
    order = np.argsort(layers, kind="stable")[::-1]  # the last layer first: it is leftmost
    mixed = 0.5 * attention[order] + 0.5 * np.eye(n)  # (l, n, n)
    mixed /= mixed.sum(axis=-1, keepdims=True)
    product = mixed[0] if rows is None else mixed[0][list(rows)]  # (q, n)
    for layer in mixed[1:]:
        product = product @ layer
    return product.astype(np.float32)
