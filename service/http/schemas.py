"""REST wire format: request bodies (pydantic, strict) and the functions that format results.

Responses are built as plain dicts of numpy arrays and serialised by orjson, which writes
float32 arrays directly (no Python list of floats per vector); the pydantic response
models below exist to document the shapes in OpenAPI and are what the tests validate against.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from service.types import AttentionSelection, EmbedRequest, EmbedResult, ModelInfo, Token, TokenizeResult

Inputs = Annotated[
    StrictStr | list[StrictStr],
    Field(description="one text, or a list of texts (each embedded separately, answers in the same order)"),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


EMBED_EXAMPLES = {
    "rollout_cls_row": {
        "summary": "What [CLS] draws from, through every layer (attention rollout)",
        "value": {"inputs": ["The cat sat on the mat."], "return_attention": {"rollout": True, "rows": [0]}},
    },
    "head_mean_per_layer": {
        "summary": "The head mean of every layer",
        "value": {"inputs": ["The cat sat on the mat."], "return_attention": {"reduce_heads": "mean"}},
    },
    "chosen_heads": {
        "summary": "Layers 0 and 5, heads 3 and 11, as base64 float32",
        "value": {
            "inputs": ["The cat sat on the mat."],
            "return_tokens": True,
            "return_attention": {"layers": [0, 5], "heads": [3, 11]},
            "encoding": "base64",
        },
    },
}


class AttentionBody(Strict):
    """The answer is [layers', heads', rows', T] per input: the selected layers and heads, heads' = 1
    once reduced, layers' = heads' = 1 for the rollout, rows' the rows kept, T the input's tokens."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"rollout": True, "rows": [0]}, {"layers": [5], "reduce_heads": "mean"}]},
    )

    layers: list[StrictInt] | Literal["all"] = Field(
        "all", description='layer indices (0-based) in answer order, or "all"; an empty list is refused'
    )
    heads: list[StrictInt] | Literal["all"] = Field(
        "all", description='head indices (0-based), or "all"; an empty list is refused'
    )
    reduce_heads: Literal["none", "mean", "max"] = Field(
        "none", description="none: each selected head; mean or max over the selected heads (heads axis 1)"
    )
    rollout: StrictBool = Field(
        False,
        description="attention rollout through the selected layers in increasing order: R = Â_lk ··· Â_l1 with "
        "Â = rownorm(0.5·A + 0.5·I), A the head mean (the max if reduce_heads is max); layers and heads axes 1",
    )
    rows: list[StrictInt] | Literal["all"] = Field(
        "all",
        description='query positions to keep, e.g. [0] for what [CLS] draws from, or "all"; a position past an '
        "input's tokens is refused, naming its length",
    )


class EmbedBody(Strict):
    inputs: Inputs
    model: StrictStr | None = Field(None, description="a served model's name (GET /v1/models); default: the first")
    prompt_name: StrictStr | None = Field(
        None, description="one of the model's prompts (its manifest's), prepended to every input; default: its default"
    )
    pooling: Literal["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"] | None = Field(
        None, description="sentence-transformers' pooling modes; default: the model's (mean for MiniLM)"
    )
    normalize: StrictBool = Field(True, description="L2-normalise the pooled embedding")
    truncate: StrictBool = Field(True, description="cut inputs at max_len tokens; false: such inputs are an error")
    return_tokens: StrictBool = False
    return_token_embeddings: StrictBool = False
    return_attention: AttentionBody | None = Field(None, description="ask for attention probabilities")
    encoding: Literal["float", "base64"] = Field(
        "float", description="base64: arrays as base64 of little-endian float32, row-major"
    )
    timeout_s: float | None = Field(None, gt=0, le=600, description="deadline for this request, seconds")

    @staticmethod
    def peek(body: Any) -> Any:
        """The texts of a parsed body, for the edge's decision before validation (data_routes)."""
        return body["inputs"]

    def to_request(self) -> EmbedRequest:
        attention = None
        if self.return_attention is not None:
            a = self.return_attention
            attention = AttentionSelection(
                layers=None if a.layers == "all" else tuple(a.layers),
                heads=None if a.heads == "all" else tuple(a.heads),
                reduce_heads=a.reduce_heads,
                rollout=a.rollout,
                rows=None if a.rows == "all" else tuple(a.rows),
            )
        return EmbedRequest(
            inputs=as_tuple(self.inputs),
            model=self.model,
            prompt_name=self.prompt_name,
            pooling=self.pooling,
            normalize=self.normalize,
            truncate=self.truncate,
            return_tokens=self.return_tokens,
            return_token_embeddings=self.return_token_embeddings,
            attention=attention,
            timeout_s=self.timeout_s,
        )


class OpenAIEmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we have no use for

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None

    @staticmethod
    def peek(body: Any) -> Any:
        return body["input"]


class TokenizeBody(Strict):
    inputs: Inputs
    model: StrictStr | None = Field(None, description="a served model's name; default: the first")
    truncate: StrictBool = True


# documented response shapes ---------------------------------------------------------------


class TokenOut(BaseModel):
    id: int
    text: str
    start: int = Field(description="character offset of the token's first character")
    end: int = Field(description="character offset just past the token (special tokens: 0, 0)")


class TensorOut(BaseModel):
    shape: list[int]
    data: list | str = Field(description="nested lists, or base64 of little-endian float32 row-major")


class AttentionOut(TensorOut):
    layers: list[int] = Field(description="the layers the answer was computed from")
    heads: list[int] = Field(description="the heads the answer was computed from")
    reduce_heads: Literal["none", "mean", "max"]
    rollout: bool
    rows: list[int] | Literal["all"]


class Usage(BaseModel):
    tokens: int


class EmbedResponse(BaseModel):
    model: str
    embeddings: list[list[float]] | list[str]
    tokens: list[list[TokenOut]] | None = None
    token_embeddings: list[TensorOut] | None = None
    attention: list[AttentionOut] | None = None
    usage: Usage


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    embedding: list[float] | str
    index: int


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsResponse(BaseModel):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class TokenizeResponse(BaseModel):
    model: str
    tokens: list[list[TokenOut]]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    owned_by: str
    name: str
    version: str
    dims: int = Field(description="width of every sentence embedding (after any Dense layers); 0 for a cross-encoder")
    d_model: int = Field(description="the encoder's hidden width: the width of token embeddings")
    layers: int
    heads: int
    max_len: int
    pooling: str
    normalize: bool
    provider: str
    precision: str
    graph: str = Field(description="file of the fast graph in use")
    task: Literal["embed", "rerank", "classify"] = Field(
        description="embed: vectors (/v1/embed); rerank: a cross-encoder scoring pairs (/rerank, /v1/rerank); "
        "classify: a cross-encoder with several labels (/predict)"
    )
    labels: list[str] = Field(description="a cross-encoder's labels, in id order; empty for an embedder")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class KServeErrorResponse(BaseModel):
    """The Open Inference Protocol's error shape, which tritonclient reads (the /v2 routes)."""

    error: str


class HealthResponse(BaseModel):
    status: str = Field(description="live; or ready, loading, failing, draining or stuck")
    reason: str | None = Field(None, description="why the server is not ready, where more can be said")


# formatting ------------------------------------------------------------------------------


def as_tuple(inputs: str | list[str]) -> tuple[str, ...]:
    return (inputs,) if isinstance(inputs, str) else tuple(inputs)


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def tensor(array: np.ndarray, encoding: str) -> dict:
    return {"shape": list(array.shape), "data": b64(array) if encoding == "base64" else array}


def tokens_out(tokens: list[list[Token]]) -> list[list[dict]]:
    return [[{"id": t.id, "text": t.text, "start": t.start, "end": t.end} for t in row] for row in tokens]


def embed_response(result: EmbedResult, encoding: str) -> dict:
    body: dict = {
        "model": result.model,
        "embeddings": [b64(v) for v in result.embeddings] if encoding == "base64" else result.embeddings,
    }
    if result.tokens is not None:
        body["tokens"] = tokens_out(result.tokens)
    if result.token_embeddings is not None:
        body["token_embeddings"] = [tensor(t, encoding) for t in result.token_embeddings]
    if result.attention is not None:
        body["attention"] = [{**attention_fields(result), **tensor(a, encoding)} for a in result.attention]
    body["usage"] = {"tokens": result.usage_tokens}
    return body


def attention_fields(result: EmbedResult) -> dict:
    return {
        "layers": list(result.attention_layers),
        "heads": list(result.attention_heads),
        "reduce_heads": result.attention_reduce_heads,
        "rollout": result.attention_rollout,
        "rows": "all" if result.attention_rows is None else list(result.attention_rows),
    }


def openai_response(result: EmbedResult, encoding: str) -> dict:
    data = [
        {"object": "embedding", "embedding": b64(v) if encoding == "base64" else v, "index": i}
        for i, v in enumerate(result.embeddings)
    ]
    usage = {"prompt_tokens": result.usage_tokens, "total_tokens": result.usage_tokens}
    return {"object": "list", "data": data, "model": result.model, "usage": usage}


def tokenize_response(result: TokenizeResult) -> dict:
    return {"model": result.model, "tokens": tokens_out(result.tokens)}


def model_card(info: ModelInfo) -> dict:
    """Every ModelInfo field (under the names the OpenAI model list and our clients read)."""
    return {
        "id": info.name,
        "object": "model",
        "owned_by": "mhaserve",
        "name": info.name,
        "version": info.version,
        "dims": info.embedding_dim,
        "d_model": info.d_model,
        "layers": info.n_layers,
        "heads": info.n_heads,
        "max_len": info.max_len,
        "pooling": info.pooling,
        "normalize": info.normalize,
        "provider": info.provider,
        "precision": info.precision,
        "graph": info.graph,
        "task": info.task,
        "labels": list(info.labels),
    }


def timing_headers(result: EmbedResult) -> dict[str, str]:
    """The stages' times; the edge adds x-total-time to every answer (RequestMetrics)."""
    return dict(result.timings.fields())
