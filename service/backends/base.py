"""The Backend protocol: what the engine needs from a runtime, and nothing more.

A backend computes padded batches of token ids (right padding, mask 0 on the tail): an
embedder's hidden states (`embed`, `attend`), or a cross-encoder's logits over pairs, whose
segment ids say which side of the pair each token is on (`score`, `score_attend`). It is
called from the batcher's worker threads, `workers` batches at a time on the fast path
and one at a time on the attention path, so its methods must be thread-safe and should
release the GIL while they compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tokenizers import Tokenizer

from artifact.pooling import Dense


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What the engine must know about the model a backend computes (from its manifest)."""

    name: str
    version: str
    d_model: int
    n_layers: int
    n_heads: int
    max_len: int
    pooling: str  # the default: one of artifact.pooling.POOLING_MODES
    normalize: bool  # the default
    dense: tuple[Dense, ...] = ()  # applied after pooling, before normalising (sentence-transformers' Dense)
    matryoshka_dims: tuple[int, ...] = ()  # truncations the model was trained for (OpenAI's `dimensions`)
    prompts: dict[str, str] = field(default_factory=dict)  # prompt_name -> text prepended to every input
    default_prompt_name: str | None = None
    task: str = "embed"  # embed, or a cross-encoder's: rerank (one label) | classify (several)
    labels: tuple[str, ...] = ()  # a cross-encoder's, in id order
    score_activation: str = "identity"  # what its scores are: sigmoid | identity | softmax of the logits

    @property
    def is_cross_encoder(self) -> bool:
        return self.task != "embed"

    @property
    def embedding_dim(self) -> int:
        """A cross-encoder answers scores, not vectors: 0."""
        if self.is_cross_encoder:
            return 0
        return self.dense[-1].out_features if self.dense else self.d_model


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where and how the fast graph runs: reported in /v1/models and the model_info metric."""

    provider: str  # "CPUExecutionProvider" | "CUDAExecutionProvider" | "fake"
    precision: str  # fp32 | fp16 | int8
    graph: str  # file of the fast graph in use


class Backend(Protocol):
    spec: ModelSpec
    tokenizer: Tokenizer  # truncation at spec.max_len, no padding
    placement: Placement
    workers: int  # fast-path batches computed at once
    # a fast-path batch of at most this many padded tokens that finds the batcher idle may run on
    # the event loop (Batcher's inline_max_tokens); 0: always on a worker thread
    inline_max_tokens: int

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """(B, T) int64 ids and mask -> hidden states (B, T, C) float32."""
        ...

    def attend(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> hidden states (B, T, C) and attention probabilities (B, layers, heads, T, T), float32."""
        ...

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        """A cross-encoder's: (B, T) ids, mask and segment ids -> logits (B, num_labels) float32."""
        ...

    def score_attend(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> logits (B, num_labels) and attention probabilities (B, layers, heads, T, T), float32."""
        ...

    def warm_up(self) -> float:
        """Runs each path once on short and long inputs; returns the seconds it took."""
        ...
