"""mhaserve.v1.Encoder: bytes -> proto -> EmbedRequest (RerankRequest, PredictRequest) -> one
`await models.embed` (rerank, predict) -> proto.

The gRPC edge (service.grpc.edge) parses each request and checks its key first; this
module only translates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from protos.mhaserve.v1 import encoder_pb2 as pb
from service.core.capacity import Ticket
from service.core.models import Models
from service.errors import InvalidRequest, MhaserveError
from service.grpc.edge import Context, Rpc, time_remaining
from service.grpc.enums import (
    ATTENTION_BLOCK_NAMES,
    ATTENTION_BLOCK_VALUES,
    HEAD_REDUCTION_NAMES,
    HEAD_REDUCTION_VALUES,
    POOLING_NAMES,
)
from service.types import (
    AttentionSelection,
    EmbedRequest,
    EmbedResult,
    PredictRequest,
    PredictResult,
    RerankRequest,
    RerankResult,
    Span,
    Token,
    TokenizeRequest,
)

SERVICE = "mhaserve.v1.Encoder"


def embed_request(message: pb.EmbedRequest, timeout_s: float | None) -> EmbedRequest:
    if message.pooling not in POOLING_NAMES:
        known = ", ".join(pb.Pooling.Name(value) for value, mode in POOLING_NAMES.items() if mode)
        raise InvalidRequest(f"pooling {message.pooling} is not a known Pooling value: use one of {known}")
    attention = attention_selection(message.attention) if message.HasField("attention") else None
    return EmbedRequest(
        inputs=tuple(message.inputs),
        model=message.model or None,
        prompt_name=message.prompt_name or None,
        pooling=POOLING_NAMES[message.pooling],
        normalize=message.normalize if message.HasField("normalize") else True,
        truncate=message.truncate if message.HasField("truncate") else True,
        return_tokens=message.return_tokens,
        return_token_embeddings=message.return_token_embeddings,
        attention=attention,
        timeout_s=timeout_s,
    )


def attention_selection(message: pb.AttentionSelection) -> AttentionSelection:
    """An unset (so also an empty) list means all: proto3 cannot send an empty one."""
    if message.reduce_heads not in HEAD_REDUCTION_NAMES:
        known = ", ".join(pb.HeadReduction.Name(value) for value in HEAD_REDUCTION_VALUES.values())
        raise InvalidRequest(
            f"reduce_heads {message.reduce_heads} is not a known HeadReduction value: use one of {known}"
        )
    if message.block not in ATTENTION_BLOCK_NAMES:
        known = ", ".join(pb.AttentionBlock.Name(value) for value in ATTENTION_BLOCK_VALUES.values())
        raise InvalidRequest(f"block {message.block} is not a known AttentionBlock value: use one of {known}")
    return AttentionSelection(
        layers=tuple(message.layers) or None,
        heads=tuple(message.heads) or None,
        reduce_heads=HEAD_REDUCTION_NAMES[message.reduce_heads],
        rollout=message.rollout,
        rows=tuple(message.rows) or None,
        block=ATTENTION_BLOCK_NAMES[message.block],
    )


def tensor(array: np.ndarray) -> pb.Tensor:
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=array.shape, data=data)


def token_lists(tokens: list[list[Token]]) -> list[pb.TokenList]:
    return [
        pb.TokenList(tokens=[pb.Token(id=t.id, text=t.text, start=t.start, end=t.end) for t in row]) for row in tokens
    ]


def embed_response(request_id: str, result: EmbedResult) -> pb.EmbedResponse:
    response = pb.EmbedResponse(
        id=request_id,
        model=result.model,
        # from Python floats: protobuf takes a list 6x faster than it walks a numpy array
        embeddings=[pb.Embedding(values=row) for row in result.embeddings.tolist()],
        usage=pb.Usage(tokens=result.usage_tokens),
    )
    if result.tokens is not None:
        response.tokens.extend(token_lists(result.tokens))
    if result.token_embeddings is not None:
        response.token_embeddings.extend(tensor(t) for t in result.token_embeddings)
    if result.attention is not None:
        response.attention.extend(tensor(a) for a in result.attention)
        response.attention_layers.extend(result.attention_layers)
        response.attention_heads.extend(result.attention_heads)
        response.attention_reduce_heads = HEAD_REDUCTION_VALUES[result.attention_reduce_heads]
        response.attention_rollout = result.attention_rollout
        response.attention_rows.extend(result.attention_rows or ())
    return response


def rerank_request(message: pb.RerankRequest, timeout_s: float | None) -> RerankRequest:
    return RerankRequest(
        query=message.query,
        documents=tuple(message.documents),
        model=message.model or None,
        raw_scores=message.raw_scores,
        truncate=message.truncate if message.HasField("truncate") else True,
        top_n=message.top_n if message.HasField("top_n") else None,
        return_tokens=message.return_tokens,
        attention=attention_selection(message.attention) if message.HasField("attention") else None,
        timeout_s=timeout_s,
    )


def span(s: Span) -> pb.Span:
    return pb.Span(start=s.start, end=s.end)


def rerank_response(request_id: str, result: RerankResult) -> pb.RerankResponse:
    response = pb.RerankResponse(id=request_id, model=result.model, usage=pb.Usage(tokens=result.usage_tokens))
    for i in result.ranking():
        item = response.results.add(index=i, score=float(result.scores[i]))
        if result.tokens is not None:
            item.tokens.CopyFrom(token_lists([result.tokens[i]])[0])
        if result.tokens is not None or result.attention is not None:
            item.query_span.CopyFrom(span(result.query_spans[i]))
            item.document_span.CopyFrom(span(result.document_spans[i]))
        if result.attention is not None:
            item.attention.CopyFrom(tensor(result.attention[i]))
    if result.attention is not None:
        response.attention_layers.extend(result.attention_layers)
        response.attention_heads.extend(result.attention_heads)
        response.attention_reduce_heads = HEAD_REDUCTION_VALUES[result.attention_reduce_heads]
        response.attention_rollout = result.attention_rollout
        response.attention_rows.extend(result.attention_rows or ())
        response.attention_block = ATTENTION_BLOCK_VALUES[result.attention_block]
    return response


def predict_request(message: pb.PredictRequest, timeout_s: float | None) -> PredictRequest:
    return PredictRequest(
        inputs=tuple(predict_input(i) for i in message.inputs),
        model=message.model or None,
        raw_scores=message.raw_scores,
        truncate=message.truncate if message.HasField("truncate") else True,
        top_k=message.top_k if message.HasField("top_k") else None,
        timeout_s=timeout_s,
    )


def predict_input(message: pb.PredictInput) -> tuple[str, ...]:
    return (message.text, message.text_pair) if message.HasField("text_pair") else (message.text,)


def predict_response(request_id: str, result: PredictResult) -> pb.PredictResponse:
    return pb.PredictResponse(
        id=request_id,
        model=result.model,
        predictions=[
            pb.Prediction(labels=[pb.LabelScore(label=p.label, score=p.score) for p in row])
            for row in result.predictions
        ],
        usage=pb.Usage(tokens=result.usage_tokens),
    )


def pair_texts(query: str, documents: Iterable[str]) -> list[str]:
    """Each sequence as one text, for the edge's estimate."""
    return [query + " " + document for document in documents]


def stream_error(message: pb.EmbedRequest | None, error: MhaserveError) -> pb.EmbedResponse:
    """A streamed request's error, answered under its id ("" for bytes that did not parse)."""
    code = error.grpc_code
    return pb.EmbedResponse(
        id=message.id if message is not None else "",
        error=pb.Error(code=code.value[0], code_name=code.name, message=error.message, type=error.type),
    )


class EncoderServicer:
    """mhaserve.v1.Encoder: each method translates a parsed message into one engine call."""

    RPCS = (
        Rpc("Embed", pb.EmbedRequest, admits=lambda m: (m.model, m.inputs)),
        Rpc("EmbedStream", pb.EmbedRequest, stream_error=stream_error),
        Rpc("Tokenize", pb.TokenizeRequest),
        Rpc("GetModelInfo", pb.GetModelInfoRequest),
        Rpc("Rerank", pb.RerankRequest, admits=lambda m: (m.model, pair_texts(m.query, m.documents))),
        Rpc("Predict", pb.PredictRequest, admits=lambda m: (m.model, [i.text + " " + i.text_pair for i in m.inputs])),
    )

    def __init__(self, models: Models):
        self.models = models

    async def Embed(self, message: pb.EmbedRequest, context: Context, ticket: Ticket) -> pb.EmbedResponse:
        result = await self._embed(message, context, ticket)
        context.set_trailing_metadata(result.timings.fields())  # the edge adds x-total-time
        return embed_response(message.id, result)

    async def EmbedStream(self, message: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        """One request of a stream: the edge keeps any number in flight, answers each as soon as
        it is computed and a failed one with its error, and the stream goes on (a stream has one
        trailer for all its requests, so no timings)."""
        return embed_response(message.id, await self._embed(message, context))

    async def _embed(self, message: pb.EmbedRequest, context: Context, ticket: Ticket | None = None) -> EmbedResult:
        request = embed_request(message, time_remaining(context))
        return await self.models.embed(request, is_disconnected=context.cancelled, ticket=ticket)

    async def Tokenize(self, message: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        truncate = message.truncate if message.HasField("truncate") else True
        request = TokenizeRequest(inputs=tuple(message.inputs), model=message.model or None, truncate=truncate)
        result = await self.models.tokenize(request)
        return pb.TokenizeResponse(model=result.model, tokens=token_lists(result.tokens))

    async def Rerank(self, message: pb.RerankRequest, context: Context, ticket: Ticket) -> pb.RerankResponse:
        request = rerank_request(message, time_remaining(context))
        result = await self.models.rerank(request, is_disconnected=context.cancelled, ticket=ticket)
        context.set_trailing_metadata(result.timings.fields())  # the edge adds x-total-time
        return rerank_response(message.id, result)

    async def Predict(self, message: pb.PredictRequest, context: Context, ticket: Ticket) -> pb.PredictResponse:
        request = predict_request(message, time_remaining(context))
        result = await self.models.predict(request, is_disconnected=context.cancelled, ticket=ticket)
        context.set_trailing_metadata(result.timings.fields())
        return predict_response(message.id, result)

    async def GetModelInfo(self, message: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        return pb.ModelInfo(**dataclasses.asdict(self.models.model_info(message.model or None)))
