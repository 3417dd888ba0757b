"""create_app(settings, engine): the REST app — routers, the edge's handlers and middleware."""

from __future__ import annotations

from fastapi import FastAPI

from service.auth import ApiKeys
from service.config import Settings
from service.core.engine import Engine
from service.http.edge import Intake, RequestMetrics, install_error_handlers
from service.http.routes import embed, health, models, openai, ui
from service.kserve import rest as kserve_rest

DATA_ROUTES = ["/v1/embed", "/v1/embeddings", "/v1/tokenize", "/v1/models"]


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="mhaserve",
        summary="Embeddings and attention weights from a multi-head-attention encoder",
        version="0.1.0",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.engine = engine
    app.state.keys = ApiKeys(settings)
    install_error_handlers(app, engine.metrics)
    for module in (embed, openai, models, health, ui, kserve_rest):
        app.include_router(module.router)
    engine.metrics.declare_routes("http", DATA_ROUTES)
    app.add_middleware(Intake, limit=settings.max_request_bytes, engine=engine)
    app.add_middleware(RequestMetrics, metrics=engine.metrics)
    return app
