"""/v1/embed and /v1/tokenize: mhaserve's own API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from fastapi.responses import Response

from service.http.data_routes import EMBED
from service.http.deps import Authorized, ModelsDep
from service.http.edge import DATA_ROUTE_ERRORS, embed_until_disconnected, error_responses, json_response
from service.http.schemas import (
    EMBED_EXAMPLES,
    EmbedBody,
    EmbedResponse,
    TokenizeBody,
    TokenizeResponse,
    as_tuple,
    embed_response,
    timing_headers,
    tokenize_response,
)
from service.types import TokenizeRequest

router = APIRouter(tags=["embeddings"])


@router.post(EMBED.path, response_model=EmbedResponse, responses=error_responses(404, *DATA_ROUTE_ERRORS))
async def embed(
    body: Annotated[EmbedBody, Body(openapi_examples=EMBED_EXAMPLES)],
    request: Request,
    models: ModelsDep,
    _: Authorized,
) -> Response:
    """Pooled embeddings; on request word pieces, per-token embeddings and attention."""
    result = await embed_until_disconnected(models, request, body.to_request())
    return json_response(embed_response(result, body.encoding), headers=timing_headers(result))


@router.post("/v1/tokenize", response_model=TokenizeResponse, responses=error_responses(404, *DATA_ROUTE_ERRORS))
async def tokenize(body: TokenizeBody, models: ModelsDep, _: Authorized) -> Response:
    """Word pieces with ids and character offsets, as the model sees the text."""
    result = await models.tokenize(
        TokenizeRequest(inputs=as_tuple(body.inputs), model=body.model, truncate=body.truncate)
    )
    return json_response(tokenize_response(result))
