"""/v1/models: every served model, in the OpenAI model-list shape with every ModelInfo field."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.http.deps import Authorized, ModelsDep
from service.http.edge import error_responses, json_response
from service.http.schemas import ModelList, model_card

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, responses=error_responses(401, 503))
async def list_models(models: ModelsDep, _: Authorized) -> Response:
    """503 while the model loads or the server drains, like every data route."""
    return json_response({"object": "list", "data": [model_card(info) for info in models.model_infos()]})
