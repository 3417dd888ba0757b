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
    """

    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    reduce_heads: str = "none"
    rollout: bool = False
    rows: tuple[int, ...] | None = None


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
