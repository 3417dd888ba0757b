"""/v1/embeddings: OpenAI-compatible, so the official `openai` client works unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.errors import InvalidRequest
from service.http.data_routes import EMBEDDINGS
from service.http.deps import Authorized, ModelsDep
from service.http.edge import DATA_ROUTE_ERRORS, embed_until_disconnected, error_responses, json_response
from service.http.schemas import (
    OpenAIEmbeddingsBody,
    OpenAIEmbeddingsResponse,
    as_tuple,
    openai_response,
    timing_headers,
)
from service.types import EmbedRequest

router = APIRouter(tags=["embeddings"])


@router.post(
    EMBEDDINGS.path, response_model=OpenAIEmbeddingsResponse, responses=error_responses(404, *DATA_ROUTE_ERRORS)
)
async def openai_embeddings(body: OpenAIEmbeddingsBody, request: Request, models: ModelsDep, _: Authorized) -> Response:
    """`model` picks a served model (absent: the first); `dimensions` is a Matryoshka truncation
    the model declares (else 422)."""
    inputs = body.input
    if isinstance(inputs, list) and inputs and not isinstance(inputs[0], str):
        raise InvalidRequest("token-id inputs are not supported: send the text itself")
    embed_request = EmbedRequest(inputs=as_tuple(inputs), model=body.model, dimensions=body.dimensions)  # type: ignore[arg-type]
    result = await embed_until_disconnected(models, request, embed_request)
    return json_response(openai_response(result, body.encoding_format), headers=timing_headers(result))
