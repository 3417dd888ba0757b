"""A cross-encoder's sequences: a text or a (query, document) pair, and from a batch's logits and
attention to each one's answer, its scores and its attention over the pair or one block of it.

A pair is one sequence `[CLS] query [SEP] document [SEP]` with segment ids 0 then 1 (the
tokenizer's pair template); `spans` finds where each side sits from the encoding's sequence ids.
Blocks of a pair's n x n attention: "query_to_document" keeps the query's tokens as rows and the
document's as columns, "document_to_query" the other way round, "full" the whole pair. A block is
cut after the head reduction and the rollout, which see the whole pair (service.core.attention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding

from artifact.pooling import pad_batch
from service.core.attention import AttentionPlan, sequence_attention
from service.types import Span

FULL, QUERY_TO_DOCUMENT, DOCUMENT_TO_QUERY = "full", "query_to_document", "document_to_query"
BLOCKS = (FULL, QUERY_TO_DOCUMENT, DOCUMENT_TO_QUERY)


@dataclass(frozen=True)
class PairOptions:
    """What one queued sequence of a cross-encoder needs from its batch (Sequence.payload)."""

    token_ids: list[int]
    type_ids: list[int]
    query: Span  # for a single text: the text; document empty
    document: Span
    attention: AttentionPlan | None = None


@dataclass(frozen=True)
class PairResult:
    logits: np.ndarray  # (num_labels,) float32, raw
    attention: np.ndarray | None  # (layers', heads', rows', columns'): block_shape


def spans(encoding: Encoding) -> tuple[Span, Span]:
    """Where the first and second sequence's tokens sit (special tokens excluded)."""
    sides: list[list[int]] = [[], []]
    for position, side in enumerate(encoding.sequence_ids):
        if side is not None:
            sides[side].append(position)
    first, second = sides
    query = Span(first[0], first[-1] + 1) if first else Span(1, 1)
    document = Span(second[0], second[-1] + 1) if second else Span(query.end + 1, query.end + 1)
    return query, document


def batch_pair_inputs(options: list[PairOptions]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (input_ids, attention_mask, token_type_ids): padding is segment 0."""
    input_ids, attention_mask = pad_batch([o.token_ids for o in options])
    token_type_ids = np.zeros_like(input_ids)
    for i, o in enumerate(options):
        token_type_ids[i, : len(o.type_ids)] = o.type_ids
    return input_ids, attention_mask, token_type_ids


def block_rows_columns(
    plan: AttentionPlan, n: int, query: Span, document: Span
) -> tuple[tuple[int, ...] | None, slice]:
    """The rows (None: the plan's own) and columns one pair's answer keeps."""
    if plan.block == QUERY_TO_DOCUMENT:
        return tuple(range(query.start, query.end)), slice(document.start, document.end)
    if plan.block == DOCUMENT_TO_QUERY:
        return tuple(range(document.start, document.end)), slice(query.start, query.end)
    return plan.rows, slice(0, n)


def block_shape(plan: AttentionPlan, n: int, query: Span, document: Span) -> tuple[int, int, int, int]:
    rows, columns = block_rows_columns(plan, n, query, document)
    layers, heads, _, _ = plan.shape(n)
    return layers, heads, n if rows is None else len(rows), columns.stop - columns.start


def pair_attention(probs: np.ndarray, n: int, plan: AttentionPlan, query: Span, document: Span) -> np.ndarray:
    """One pair's answer from its graph output probs (L, h, T, T), of which n tokens are real."""
    rows, columns = block_rows_columns(plan, n, query, document)
    own = sequence_attention(probs, n, dataclasses.replace(plan, rows=rows))  # (l', h', rows', n)
    return np.ascontiguousarray(own[..., columns])


def split_pairs(
    logits: np.ndarray, attention_mask: np.ndarray, options: list[PairOptions], attention: np.ndarray | None
) -> list[PairResult]:
    lengths = attention_mask.sum(1)
    results = []
    for i, o in enumerate(options):
        probs = None
        if attention is not None and o.attention is not None:
            probs = pair_attention(attention[i], int(lengths[i]), o.attention, o.query, o.document)
        results.append(PairResult(np.asarray(logits[i], dtype=np.float32), probs))
    return results


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """(N, labels) logits -> scores, as sentence-transformers' CrossEncoder.predict applies its activation."""
    logits = logits.astype(np.float64)
    if activation == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    elif activation == "softmax":
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    else:
        scores = logits
    return scores.astype(np.float32)
