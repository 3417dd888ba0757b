"""/v1/embeddings: OpenAI-compatible, so the official `openai` client works unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.errors import InvalidRequest, NotFound
from service.http.deps import Authorized, EngineDep
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
    "/v1/embeddings", response_model=OpenAIEmbeddingsResponse, responses=error_responses(404, *DATA_ROUTE_ERRORS)
)
async def openai_embeddings(body: OpenAIEmbeddingsBody, request: Request, engine: EngineDep, _: Authorized) -> Response:
    info = engine.model_info()
    if body.model is not None and body.model != info.name:
        raise NotFound(f"model {body.model!r} is not served here; use model {info.name!r}")
    if body.dimensions is not None and body.dimensions != info.d_model:
        raise InvalidRequest(
            f"dimensions={body.dimensions} is not supported: {info.name} gives {info.d_model} dimensions; "
            "omit the field"
        )
    inputs = body.input
    if isinstance(inputs, list) and inputs and not isinstance(inputs[0], str):
        raise InvalidRequest("token-id inputs are not supported: send the text itself")
    result = await embed_until_disconnected(engine, request, EmbedRequest(inputs=as_tuple(inputs)))  # type: ignore[arg-type]
    return json_response(openai_response(result, body.encoding_format), headers=timing_headers(result))
