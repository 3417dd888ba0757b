"""Liveness, readiness and /metrics: what Kubernetes and Prometheus ask."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.http.deps import ModelsDep, authorized
from service.http.edge import json_response
from service.http.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/health/live", response_model=HealthResponse)
async def live() -> Response:
    """The process is up (the event loop answers)."""
    return json_response({"status": "live"})


@router.get("/health/ready", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def ready(models: ModelsDep) -> Response:
    """Every model loaded and warm, not draining, inference not failing, not stuck refusing; else
    the status says which, and `reason` says more where it can."""
    if models.ready:
        return json_response({"status": models.status.value})
    body = {"status": models.status.value}
    if (reason := models.status_reason) is not None:
        body["reason"] = reason
    return json_response(body, 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request, models: ModelsDep) -> Response:
    if models.settings.metrics_require_key:
        await authorized(request)
    return Response(models.metrics.exposition(), media_type=models.metrics.content_type)
