"""/rerank (text-embeddings-inference's shape), /v1/rerank (Cohere's, Jina's, Infinity's and
vLLM's) and /predict: a cross-encoder's scores. The engine decides; these only translate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from service.http.data_routes import PREDICT, RERANK, TEI_RERANK
from service.http.deps import Authorized, ModelsDep
from service.http.edge import DATA_ROUTE_ERRORS, error_responses, json_response, until_disconnected
from service.http.rerank_schemas import (
    RERANK_EXAMPLES,
    LabelScoreOut,
    PredictBody,
    RerankBody,
    RerankResponse,
    TeiRerankBody,
    TeiRerankResult,
    predict_response,
    rerank_response,
    tei_rerank_response,
)
from service.http.schemas import timing_headers

router = APIRouter(tags=["reranking"])
ERRORS = error_responses(404, *DATA_ROUTE_ERRORS)


@router.post(
    TEI_RERANK.path,
    summary="Rerank (text-embeddings-inference's shape)",
    response_model=list[TeiRerankResult],
    responses=ERRORS,
)
async def tei_rerank(
    body: Annotated[TeiRerankBody, Body(openapi_examples=RERANK_EXAMPLES)],
    request: Request,
    models: ModelsDep,
    _: Authorized,
) -> Response:
    """Every document's score against the query, best first; on request each pair's tokens and
    attention (the whole pair, or its query-to-document or document-to-query block)."""
    rerank_request = body.to_request()
    result = await until_disconnected(
        request, lambda gone, ticket: models.rerank(rerank_request, is_disconnected=gone, ticket=ticket)
    )
    answer = tei_rerank_response(result, rerank_request.documents, body.return_text, body.encoding)
    return json_response(answer, headers=timing_headers(result))


@router.post(
    RERANK.path, summary="Rerank (Cohere's, Jina's, vLLM's shape)", response_model=RerankResponse, responses=ERRORS
)
async def rerank(body: RerankBody, request: Request, models: ModelsDep, _: Authorized) -> Response:
    """The shape Cohere, Jina, Infinity and vLLM answer (and LangChain's and LlamaIndex's clients
    read): results best first, `top_n` of them, with relevance_score; and, mhaserve's own, each
    pair's attention on request, as /rerank gives it."""
    rerank_request = body.to_request()
    result = await until_disconnected(
        request, lambda gone, ticket: models.rerank(rerank_request, is_disconnected=gone, ticket=ticket)
    )
    answer = rerank_response(result, rerank_request.documents, body.return_documents, body.encoding)
    return json_response(answer, headers=timing_headers(result))


@router.post(PREDICT.path, response_model=list[LabelScoreOut] | list[list[LabelScoreOut]], responses=ERRORS)
async def predict(body: PredictBody, request: Request, models: ModelsDep, _: Authorized) -> Response:
    """Each input's labels with their scores, best first: one list for one input (a text or a
    pair), a list of lists for several, as text-embeddings-inference answers."""
    predict_request, single = body.to_request()
    result = await until_disconnected(
        request, lambda gone, ticket: models.predict(predict_request, is_disconnected=gone, ticket=ticket)
    )
    return json_response(predict_response(result, single), headers=timing_headers(result))
