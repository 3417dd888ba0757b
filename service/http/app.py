"""create_app(settings, models): the REST app — routers, the edge's handlers and middleware."""

from __future__ import annotations

from fastapi import FastAPI

from service.auth import ApiKeys
from service.config import Settings
from service.core.models import Models
from service.http.data_routes import METRIC_ROUTES, served_routes
from service.http.edge import Intake, RequestMetrics, install_error_handlers
from service.http.routes import embed, health, openai, rerank, ui
from service.http.routes import models as model_list
from service.kserve import rest as kserve_rest

ROUTERS = [module.router for module in (embed, openai, rerank, model_list, health, ui, kserve_rest)]


def create_app(settings: Settings, models: Models) -> FastAPI:
    app = FastAPI(
        title="mhaserve",
        summary="Embeddings and attention weights from a multi-head-attention encoder",
        version="0.1.0",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.models = models
    app.state.keys = ApiKeys(settings)
    install_error_handlers(app, models.metrics)
    direct = served_routes(ROUTERS)
    for router in ROUTERS:
        app.include_router(router)
    models.metrics.declare_routes("http", METRIC_ROUTES)
    app.add_middleware(Intake, limit=settings.max_request_bytes, models=models, direct=direct)
    app.add_middleware(RequestMetrics, metrics=models.metrics)
    return app
