"""Typed Python clients for mhaserve: `RestClient` (httpx) and `GrpcClient` (the generated stubs).

Both return numpy arrays and the server's own types, and raise the server's own errors
(`service.errors`: InvalidRequest, Overloaded, NotReady, ...), so code written against one
transport works against the other:

    with GrpcClient("localhost:50051") as client:
        vectors = client.embed(["a sentence", "another"]).embeddings   # (2, 384) float32
        best = client.rerank("a query", ["a document", "another"], model="a-reranker").results[0]
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

import grpc
import httpx
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from service import errors
from service.grpc.enums import (
    ATTENTION_BLOCK_NAMES,
    ATTENTION_BLOCK_VALUES,
    HEAD_REDUCTION_NAMES,
    HEAD_REDUCTION_VALUES,
    POOLING_VALUES,
)
from service.types import AttentionSelection, LabelScore, ModelInfo, Span, Token

# A gRPC status the server did not send itself (a deadline the channel enforced, a lost
# connection) carries no error type: the code alone says what it was.
ERRORS_BY_CODE = {code: cls for cls, code in reversed(errors.GRPC_CODE.items())}
POOLING = {None: pb.POOLING_UNSPECIFIED} | POOLING_VALUES


@dataclass(frozen=True, kw_only=True)
class Embeddings:
    """One embed call's answer; every list has one entry per input, in input order."""

    model: str
    embeddings: np.ndarray  # (n_inputs, embedding_dim) float32
    tokens: list[list[Token]] | None = None
    token_embeddings: list[np.ndarray] | None = None  # each (tokens_i, d_model)
    attention: list[np.ndarray] | None = None  # each (layers', heads', rows', tokens_i): see AttentionSelection
    attention_layers: tuple[int, ...] = ()  # what the attention was computed from
    attention_heads: tuple[int, ...] = ()
    attention_reduce_heads: str = "none"
    attention_rollout: bool = False
    attention_rows: tuple[int, ...] | None = None  # None: every row
    usage_tokens: int = 0


@dataclass(frozen=True, kw_only=True)
class Ranked:
    """One document's result: its index in the request, its score, and on request its pair's
    tokens, where the query and the document sit in it, and its attention."""

    index: int
    score: float
    tokens: list[Token] | None = None
    query_span: Span | None = None
    document_span: Span | None = None
    attention: np.ndarray | None = None  # (layers', heads', rows', columns') over the block asked for


@dataclass(frozen=True, kw_only=True)
class Reranking:
    """One rerank call's answer: results best first (the top_n of them)."""

    results: list[Ranked]
    attention_layers: tuple[int, ...] = ()
    attention_heads: tuple[int, ...] = ()
    attention_reduce_heads: str = "none"
    attention_rollout: bool = False
    attention_rows: tuple[int, ...] | None = None
    attention_block: str = "full"


def check_selection(attention: AttentionSelection) -> None:
    """An empty tuple is refused before sending, as the server refuses it: gRPC cannot carry
    an empty list (it would arrive as "all"), and None is how to ask for all."""
    for what, chosen in (("layer", attention.layers), ("head", attention.heads), ("row", attention.rows)):
        if chosen is not None and not chosen:
            raise errors.InvalidRequest(
                f"the attention {what} selection is empty: list at least one {what}, or pass None for all"
            )


def as_inputs(inputs: str | Sequence[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


# REST ------------------------------------------------------------------------------------


def from_base64(data: str, shape: Sequence[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype="<f4").reshape(shape)


class ClosingClient:
    """A client used as a context manager closes its connection on leaving the block."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class RestClient(ClosingClient):
    """/v1/embed, /v1/tokenize, /v1/models and health over HTTP; arrays travel as base64 float32."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 30.0):
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        prompt_name: str | None = None,
        pooling: str | None = None,
        normalize: bool = True,
        truncate: bool = True,
        return_tokens: bool = False,
        return_token_embeddings: bool = False,
        attention: AttentionSelection | None = None,
        timeout_s: float | None = None,
    ) -> Embeddings:
        """model: a served model's name (see models()); None: the server's first."""
        body: dict[str, Any] = {
            "inputs": as_inputs(inputs),
            "normalize": normalize,
            "truncate": truncate,
            "return_tokens": return_tokens,
            "return_token_embeddings": return_token_embeddings,
            "encoding": "base64",  # exact float32, and a third of the JSON's size
        }
        if model is not None:
            body["model"] = model
        if prompt_name is not None:
            body["prompt_name"] = prompt_name
        if pooling is not None:
            body["pooling"] = pooling
        if attention is not None:
            body["return_attention"] = attention_json(attention)
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        answer = self._post("/v1/embed", body)
        attention_out = answer.get("attention")
        return Embeddings(
            model=answer["model"],
            embeddings=np.stack([from_base64(v, (-1,)) for v in answer["embeddings"]]),
            tokens=[tokens_from_json(row) for row in answer["tokens"]] if "tokens" in answer else None,
            token_embeddings=[from_base64(t["data"], t["shape"]) for t in answer["token_embeddings"]]
            if "token_embeddings" in answer
            else None,
            attention=[from_base64(a["data"], a["shape"]) for a in attention_out] if attention_out else None,
            attention_layers=tuple(attention_out[0]["layers"]) if attention_out else (),
            attention_heads=tuple(attention_out[0]["heads"]) if attention_out else (),
            attention_reduce_heads=attention_out[0]["reduce_heads"] if attention_out else "none",
            attention_rollout=attention_out[0]["rollout"] if attention_out else False,
            attention_rows=None
            if not attention_out or attention_out[0]["rows"] == "all"
            else tuple(attention_out[0]["rows"]),
            usage_tokens=answer["usage"]["tokens"],
        )

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        model: str | None = None,
        raw_scores: bool = False,
        truncate: bool = True,
        top_n: int | None = None,
        return_tokens: bool = False,
        attention: AttentionSelection | None = None,
        timeout_s: float | None = None,
    ) -> Reranking:
        """Every document's score against the query (POST /rerank), best first."""
        body: dict[str, Any] = {
            "query": query,
            "texts": list(documents),
            "raw_scores": raw_scores,
            "truncate": truncate,
            "return_tokens": return_tokens,
            "encoding": "base64",
        }
        for name, value in (("model", model), ("top_n", top_n), ("timeout_s", timeout_s)):
            if value is not None:
                body[name] = value
        if attention is not None:
            body["return_attention"] = {**attention_json(attention), "block": attention.block}
        answer = self._post("/rerank", body)
        first = answer[0].get("attention") if answer else None
        return Reranking(
            results=[
                Ranked(
                    index=item["index"],
                    score=item["score"],
                    tokens=tokens_from_json(item["tokens"]) if "tokens" in item else None,
                    query_span=Span(*item["query_span"]) if "query_span" in item else None,
                    document_span=Span(*item["document_span"]) if "document_span" in item else None,
                    attention=from_base64(item["attention"]["data"], item["attention"]["shape"])
                    if "attention" in item
                    else None,
                )
                for item in answer
            ],
            attention_layers=tuple(first["layers"]) if first else (),
            attention_heads=tuple(first["heads"]) if first else (),
            attention_reduce_heads=first["reduce_heads"] if first else "none",
            attention_rollout=first["rollout"] if first else False,
            attention_rows=None if not first or first["rows"] == "all" else tuple(first["rows"]),
            attention_block=first["block"] if first else "full",
        )

    def predict(
        self,
        inputs: Sequence[str | tuple[str, str]],
        *,
        model: str | None = None,
        raw_scores: bool = False,
        truncate: bool = True,
        top_k: int | None = None,
        timeout_s: float | None = None,
    ) -> list[list[LabelScore]]:
        """Each input's (a text, or a pair) labels with their scores, best first (POST /predict)."""
        body: dict[str, Any] = {
            "inputs": [[text] if isinstance(text, str) else list(text) for text in inputs],
            "raw_scores": raw_scores,
            "truncate": truncate,
        }
        for name, value in (("model", model), ("top_k", top_k), ("timeout_s", timeout_s)):
            if value is not None:
                body[name] = value
        answer = self._post("/predict", body)  # a list of lists: never read as one pair
        return [[LabelScore(p["label"], p["score"]) for p in row] for row in answer]

    def tokenize(
        self, inputs: str | Sequence[str], *, model: str | None = None, truncate: bool = True
    ) -> list[list[Token]]:
        body: dict[str, Any] = {"inputs": as_inputs(inputs), "truncate": truncate}
        if model is not None:
            body["model"] = model
        answer = self._post("/v1/tokenize", body)
        return [tokens_from_json(row) for row in answer["tokens"]]

    def models(self) -> list[ModelInfo]:
        answer = self._check(self.http.get("/v1/models"))
        return [
            ModelInfo(
                name=card["name"],
                version=card["version"],
                d_model=card["d_model"],
                embedding_dim=card["dims"],
                n_layers=card["layers"],
                n_heads=card["heads"],
                max_len=card["max_len"],
                pooling=card["pooling"],
                normalize=card["normalize"],
                provider=card["provider"],
                precision=card["precision"],
                graph=card["graph"],
                task=card["task"],
                labels=tuple(card["labels"]),
            )
            for card in answer["data"]
        ]

    def live(self) -> bool:
        return self.http.get("/health/live").status_code == 200

    def ready(self) -> bool:
        return self.http.get("/health/ready").status_code == 200

    def _post(self, path: str, body: dict) -> dict:
        return self._check(self.http.post(path, json=body))

    @staticmethod
    def _check(response: httpx.Response) -> dict:
        if response.status_code == 200:
            return response.json()
        try:
            error = response.json()["error"]
            kind, message = error["type"], error["message"]
        except (ValueError, KeyError, TypeError):
            kind, message = "internal_error", f"HTTP {response.status_code}: {response.text[:500]}"
        raise errors.error_from_type(kind, message)


def attention_json(attention: AttentionSelection) -> dict[str, Any]:
    check_selection(attention)
    return {
        "layers": "all" if attention.layers is None else list(attention.layers),
        "heads": "all" if attention.heads is None else list(attention.heads),
        "reduce_heads": attention.reduce_heads,
        "rollout": attention.rollout,
        "rows": "all" if attention.rows is None else list(attention.rows),
    }


def tokens_from_json(row: list[dict]) -> list[Token]:
    return [Token(id=t["id"], text=t["text"], start=t["start"], end=t["end"]) for t in row]


# gRPC ------------------------------------------------------------------------------------


def from_tensor(tensor: pb.Tensor) -> np.ndarray:
    if tensor.dtype != pb.DTYPE_FLOAT32:
        raise errors.MhaserveError(f"unexpected tensor dtype {pb.DType.Name(tensor.dtype)}")
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


def embeddings_from(response: pb.EmbedResponse) -> Embeddings:
    return Embeddings(
        model=response.model,
        embeddings=np.array([e.values for e in response.embeddings], dtype=np.float32),
        tokens=[tokens_from_proto(row) for row in response.tokens] or None,
        token_embeddings=[from_tensor(t) for t in response.token_embeddings] or None,
        attention=[from_tensor(a) for a in response.attention] or None,
        attention_layers=tuple(response.attention_layers),
        attention_heads=tuple(response.attention_heads),
        attention_reduce_heads=HEAD_REDUCTION_NAMES.get(response.attention_reduce_heads, "none"),
        attention_rollout=response.attention_rollout,
        attention_rows=tuple(response.attention_rows) or None,
        usage_tokens=response.usage.tokens,
    )


def tokens_from_proto(row: pb.TokenList) -> list[Token]:
    return [Token(id=t.id, text=t.text, start=t.start, end=t.end) for t in row.tokens]


def error_from(error: grpc.RpcError) -> errors.MhaserveError:
    code, details = error.code(), error.details() or ""  # type: ignore[attr-defined]
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == errors.ERROR_TYPE_METADATA:
            return errors.error_from_type(value, details)
    if code in ERRORS_BY_CODE:
        return ERRORS_BY_CODE[code](details)
    return errors.MhaserveError(f"{code.name}: {details}")


def embed_message(
    inputs: str | Sequence[str],
    *,
    request_id: str = "",
    model: str | None = None,
    prompt_name: str | None = None,
    pooling: str | None = None,
    normalize: bool = True,
    truncate: bool = True,
    return_tokens: bool = False,
    return_token_embeddings: bool = False,
    attention: AttentionSelection | None = None,
) -> pb.EmbedRequest:
    """The wire request for GrpcClient.embed's arguments; also what to feed embed_stream."""
    if pooling not in POOLING:
        known = ", ".join(repr(mode) for mode in POOLING if mode)
        raise errors.InvalidRequest(f"pooling {pooling!r} is not supported: use one of {known}, or None")
    message = pb.EmbedRequest(
        id=request_id,
        model=model or "",
        prompt_name=prompt_name or "",
        inputs=as_inputs(inputs),
        pooling=POOLING[pooling],
        normalize=normalize,
        truncate=truncate,
        return_tokens=return_tokens,
        return_token_embeddings=return_token_embeddings,
    )
    if attention is not None:
        set_attention(message.attention, attention)
    return message


def set_attention(message: pb.AttentionSelection, attention: AttentionSelection) -> None:
    check_selection(attention)
    if attention.reduce_heads not in HEAD_REDUCTION_VALUES:
        known = ", ".join(repr(name) for name in HEAD_REDUCTION_VALUES)
        raise errors.InvalidRequest(f"head reduction {attention.reduce_heads!r} is not supported: use one of {known}")
    if attention.block not in ATTENTION_BLOCK_VALUES:
        known = ", ".join(repr(name) for name in ATTENTION_BLOCK_VALUES)
        raise errors.InvalidRequest(f"attention block {attention.block!r} is not supported: use one of {known}")
    message.SetInParent()  # present even when every list is unset (= all)
    message.layers.extend(attention.layers or ())
    message.heads.extend(attention.heads or ())
    message.reduce_heads = HEAD_REDUCTION_VALUES[attention.reduce_heads]
    message.rollout = attention.rollout
    message.rows.extend(attention.rows or ())


class GrpcClient(ClosingClient):
    """mhaserve.v1.Encoder over gRPC. `timeout_s` becomes each call's deadline."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        timeout_s: float | None = 30.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ):
        self.channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self.stub = encoder_pb2_grpc.EncoderStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def embed(self, inputs: str | Sequence[str], *, timeout_s: float | None = None, **options: Any) -> Embeddings:
        """options: model, prompt_name, pooling, normalize, truncate, return_tokens, return_token_embeddings,
        attention (as RestClient.embed takes them)."""
        message = embed_message(inputs, **options)
        return embeddings_from(self._call(self.stub.Embed, message, timeout_s))

    def embed_stream(
        self, requests: Iterable[pb.EmbedRequest], *, timeout_s: float | None = None
    ) -> Iterator[tuple[str, Embeddings | errors.MhaserveError]]:
        """Sends every request on one stream; yields (id, answer or error) as answers arrive.

        Build requests with `embed_message(texts, request_id=..., ...)`; answers may come out
        of order, which is what the ids are for.
        """
        try:
            for response in self.stub.EmbedStream(
                iter(requests), timeout=timeout_s or self.timeout_s, metadata=self.metadata
            ):
                if response.HasField("error"):
                    yield response.id, errors.error_from_type(response.error.type, response.error.message)
                else:
                    yield response.id, embeddings_from(response)
        except grpc.RpcError as error:
            raise error_from(error) from None

    def tokenize(
        self, inputs: str | Sequence[str], *, model: str | None = None, truncate: bool = True
    ) -> list[list[Token]]:
        message = pb.TokenizeRequest(inputs=as_inputs(inputs), model=model or "", truncate=truncate)
        response = self._call(self.stub.Tokenize, message)
        return [tokens_from_proto(row) for row in response.tokens]

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        model: str | None = None,
        raw_scores: bool = False,
        truncate: bool = True,
        top_n: int | None = None,
        return_tokens: bool = False,
        attention: AttentionSelection | None = None,
        timeout_s: float | None = None,
    ) -> Reranking:
        """Every document's score against the query (Rerank), best first."""
        message = pb.RerankRequest(
            model=model or "",
            query=query,
            documents=list(documents),
            raw_scores=raw_scores,
            truncate=truncate,
            return_tokens=return_tokens,
        )
        if top_n is not None:
            message.top_n = top_n
        if attention is not None:
            set_attention(message.attention, attention)
            message.attention.block = ATTENTION_BLOCK_VALUES[attention.block]
        response = self._call(self.stub.Rerank, message, timeout_s)
        spans = bool(response.results) and response.results[0].HasField("query_span")
        return Reranking(
            results=[
                Ranked(
                    index=r.index,
                    score=r.score,
                    tokens=tokens_from_proto(r.tokens) if return_tokens else None,
                    query_span=Span(r.query_span.start, r.query_span.end) if spans else None,
                    document_span=Span(r.document_span.start, r.document_span.end) if spans else None,
                    attention=from_tensor(r.attention) if r.HasField("attention") else None,
                )
                for r in response.results
            ],
            attention_layers=tuple(response.attention_layers),
            attention_heads=tuple(response.attention_heads),
            attention_reduce_heads=HEAD_REDUCTION_NAMES.get(response.attention_reduce_heads, "none"),
            attention_rollout=response.attention_rollout,
            attention_rows=tuple(response.attention_rows) or None,
            attention_block=ATTENTION_BLOCK_NAMES.get(response.attention_block, "full"),
        )

    def predict(
        self,
        inputs: Sequence[str | tuple[str, str]],
        *,
        model: str | None = None,
        raw_scores: bool = False,
        truncate: bool = True,
        top_k: int | None = None,
        timeout_s: float | None = None,
    ) -> list[list[LabelScore]]:
        """Each input's (a text, or a pair) labels with their scores, best first (Predict)."""
        message = pb.PredictRequest(model=model or "", raw_scores=raw_scores, truncate=truncate)
        for item in inputs:
            if isinstance(item, str):
                message.inputs.add(text=item)
            else:
                message.inputs.add(text=item[0], text_pair=item[1])
        if top_k is not None:
            message.top_k = top_k
        response = self._call(self.stub.Predict, message, timeout_s)
        return [[LabelScore(p.label, p.score) for p in row.labels] for row in response.predictions]

    def model_info(self, model: str | None = None) -> ModelInfo:
        info = self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest(model=model or ""))
        fields = {f.name: getattr(info, f.name) for f in dataclasses.fields(ModelInfo)}
        return ModelInfo(**{**fields, "labels": tuple(info.labels)})

    def serving(self, service: str = "") -> bool:
        """grpc.health.v1: SERVING only while the model is loaded and the server not draining."""
        request = health_pb2.HealthCheckRequest(service=service)
        response = self._call(health_pb2_grpc.HealthStub(self.channel).Check, request)
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def _call(self, method: Any, message: Any, timeout_s: float | None = None) -> Any:
        try:
            return method(message, timeout=timeout_s or self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as error:
            raise error_from(error) from None
