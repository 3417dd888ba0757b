"""Typed requests and results: what every transport hands the engine and gets back.

Transports parse their wire format into these and format these back; nothing else crosses
the seam. Arrays stay numpy (float32) until a transport serialises them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class AttentionSelection:
    """Which attention to return and how to reduce it; None means all layers, heads or rows.

    reduce_heads: "none" (each selected head), "mean" or "max" over the selected heads.
    rollout: chain the selected layers into one matrix (attention rollout, service.core.attention).
    rows: the query positions to keep, e.g. (0,) for what [CLS] draws from.
    block: on a pair (rerank), "full" (the whole pair), "query_to_document" (rows the query's
    tokens, columns the document's) or "document_to_query"; a block chooses the rows itself.
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    reduce_heads: str = "none"
    rollout: bool = False
    rows: tuple[int, ...] | None = None
    block: str = "full"


@dataclass(frozen=True, kw_only=True)
class EmbedRequest:
    inputs: tuple[str, ...]
    model: str | None = None  # None: the first model the server was started with
    dimensions: int | None = None  # keep the first n (a Matryoshka truncation the model declares)
    prompt_name: str | None = None  # one of the model's prompts; None: its default prompt, if any
    pooling: str | None = None  # None: the model's default (manifest)
    normalize: bool = True
    truncate: bool = True
    return_tokens: bool = False
    return_token_embeddings: bool = False
    attention: AttentionSelection | None = None  # None: no attention asked for
    timeout_s: float | None = None  # None: Settings.request_timeout_s


@dataclass(frozen=True)
class Token:
    id: int
    text: str
    start: int  # character offsets into the input (end exclusive); 0, 0 for special tokens
    end: int


TOTAL_TIME = "x-total-time"  # named as text-embeddings-inference names it, in ms


@dataclass(frozen=True)
class Timings:
    """Where a request's time went, as REST headers and gRPC trailing metadata tell the client."""

    queue_ms: float = 0.0
    inference_ms: float = 0.0
    tokenize_ms: float = 0.0

    def fields(self) -> tuple[tuple[str, str], ...]:
        """The stages' times under text-embeddings-inference's names, in ms."""
        return (
            ("x-tokenization-time", f"{self.tokenize_ms:.2f}"),
            ("x-queue-time", f"{self.queue_ms:.2f}"),
            ("x-inference-time", f"{self.inference_ms:.2f}"),
        )


def total_time(seconds: float) -> tuple[str, str]:
    """The request's whole time in the server, from its edge to its answer."""
    return TOTAL_TIME, f"{seconds * 1000:.2f}"


@dataclass(frozen=True, kw_only=True)
class EmbedResult:
    model: str
    embeddings: np.ndarray  # (n_inputs, embedding_dim) float32
    tokens: list[list[Token]] | None = None
    token_embeddings: list[np.ndarray] | None = None  # each (len_i, d_model)
    attention: list[np.ndarray] | None = None  # each (layers', heads', rows', len_i): see AttentionSelection
    attention_layers: tuple[int, ...] = ()  # the layers and heads the answer was computed from
    attention_heads: tuple[int, ...] = ()
    attention_reduce_heads: str = "none"
    attention_rollout: bool = False
    attention_rows: tuple[int, ...] | None = None  # None: every row
    token_counts: tuple[int, ...] = ()  # per input, special tokens included
    timings: Timings = field(default_factory=Timings)

    @property
    def usage_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True, kw_only=True)
class RerankRequest:
    """Score each document against the query with a cross-encoder (a model whose task is rerank):
    each (query, document) pair is one sequence to the batcher, the answer one score per document."""

    query: str
    documents: tuple[str, ...]
    model: str | None = None
    raw_scores: bool = False  # the logit, not the model's score activation (sigmoid for most rerankers)
    truncate: bool = True  # cut a pair at max_len (longest_first); false: such a pair is an error
    top_n: int | None = None  # only the best n results; None: every document
    return_tokens: bool = False
    attention: AttentionSelection | None = None  # over each pair, or one of its blocks
    timeout_s: float | None = None


@dataclass(frozen=True)
class Span:
    """Token positions [start, end) of one side of a pair in its sequence, special tokens excluded."""

    start: int
    end: int


@dataclass(frozen=True, kw_only=True)
class RerankResult:
    model: str
    scores: np.ndarray  # (n_documents,) float32, in document order
    tokens: list[list[Token]] | None = None  # each pair's tokens: [CLS] query [SEP] document [SEP]
    query_spans: tuple[Span, ...] = ()  # per document: where the query sits in its pair
    document_spans: tuple[Span, ...] = ()  # and where the document does
    attention: list[np.ndarray] | None = None  # per document (layers', heads', rows', columns')
    attention_layers: tuple[int, ...] = ()
    attention_heads: tuple[int, ...] = ()
    attention_reduce_heads: str = "none"
    attention_rollout: bool = False
    attention_rows: tuple[int, ...] | None = None
    attention_block: str = "full"
    token_counts: tuple[int, ...] = ()
    top_n: int | None = None
    timings: Timings = field(default_factory=Timings)

    @property
    def usage_tokens(self) -> int:
        return sum(self.token_counts)

    def ranking(self) -> list[int]:
        """Document indices, best first (ties: the earlier document first), the top_n of them."""
        return sorted(range(len(self.scores)), key=lambda i: (-float(self.scores[i]), i))[: self.top_n]


@dataclass(frozen=True, kw_only=True)
class PredictRequest:
    """Classify each input, a text or a (text, text) pair, with a cross-encoder's labels."""

    inputs: tuple[tuple[str, ...], ...]  # each one text, or a pair
    model: str | None = None
    raw_scores: bool = False  # the logits, not the model's score activation
    truncate: bool = True
    top_k: int | None = None  # the best k labels per input; None: every label
    timeout_s: float | None = None


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True, kw_only=True)
class PredictResult:
    model: str
    predictions: list[list[LabelScore]]  # per input, best label first
    token_counts: tuple[int, ...] = ()
    timings: Timings = field(default_factory=Timings)

    @property
    def usage_tokens(self) -> int:
        return sum(self.token_counts)


@dataclass(frozen=True, kw_only=True)
class TokenizeRequest:
    inputs: tuple[str, ...]
    model: str | None = None
    truncate: bool = True


@dataclass(frozen=True, kw_only=True)
class TokenizeResult:
    model: str
    tokens: list[list[Token]]


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    name: str
    version: str
    d_model: int  # the encoder's hidden width: the width of token embeddings
    embedding_dim: int  # the width of every sentence embedding (after any Dense layers)
    n_layers: int
    n_heads: int
    max_len: int
    pooling: str
    normalize: bool
    provider: str  # "CUDAExecutionProvider" | "CPUExecutionProvider"
    precision: str  # fp32 | fp16 | int8
    graph: str  # file of the fast graph in use
    task: str = "embed"  # embed | rerank | classify
    labels: tuple[str, ...] = ()  # a cross-encoder's labels, in id order
