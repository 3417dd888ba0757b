"""The REST app: routes that parse, call the engine once, and format. Nothing else."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.disconnect import watch_disconnect
from service.errors import InvalidRequest, MhaserveError, NotFound, PayloadTooLarge
from service.kserve import kserve_router
from service.pipeline import Engine
from service.rest_models import (
    EmbedBody,
    EmbedResponse,
    ErrorResponse,
    HealthResponse,
    ModelList,
    OpenAIEmbeddingsBody,
    OpenAIEmbeddingsResponse,
    TokenizeBody,
    TokenizeResponse,
    as_tuple,
    embed_response,
    model_card,
    openai_response,
    tokenize_response,
)
from service.types import EmbedRequest, EmbedResult, TokenizeRequest

STATIC_DIR = Path(__file__).parent / "static"
DATA_ROUTES = ["/v1/embed", "/v1/embeddings", "/v1/tokenize", "/v1/models"]
ERROR_RESPONSES = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "missing or wrong API key",
        404: "/v1/embeddings: a model other than the one served",
        413: "body over max_request_bytes, or attention answer over max_attention_values",
        422: "invalid input; the message says what to change",
        429: "queue full; retry after Retry-After seconds",
        500: "inference failed for this request's batch (other requests are unaffected)",
        503: "not ready, or shutting down",
        504: "deadline passed",
    }.items()
}


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def error_response(error: MhaserveError) -> Response:
    headers = {}
    if error.http_status == 429:
        headers["Retry-After"] = str(getattr(error, "retry_after_s", 1))
    if error.http_status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return json_response({"error": {"type": error.type, "message": error.message}}, error.http_status, headers)


def timing_headers(result: EmbedResult) -> dict[str, str]:
    t = result.timings
    return {
        "x-queue-time-ms": f"{t.queue_ms:.2f}",
        "x-inference-time-ms": f"{t.inference_ms:.2f}",
        "x-tokenize-time-ms": f"{t.tokenize_ms:.2f}",
    }


class BodyLimit:
    """Refuse a body over the limit while reading it: by Content-Length before the first byte,
    else as soon as the running total passes it; the app then gets the body replayed."""

    def __init__(self, app: ASGIApp, limit: int, on_error: Callable[[MhaserveError], None]):
        self.app, self.limit, self.on_error = app, limit, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = PayloadTooLarge(
            f"request body is over the {self.limit:,}-byte limit: send fewer or shorter inputs "
            "(the server's max_request_bytes setting)"
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await self._refuse(too_large, scope, send)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return await self._refuse(too_large, scope, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        await self.app(scope, replay, send)

    async def _refuse(self, error: MhaserveError, scope: Scope, send: Send) -> None:
        self.on_error(error)
        response = error_response(error)
        response.headers["connection"] = "close"
        await response(scope, None, send)  # type: ignore[arg-type]


class RequestMetrics:
    """Counts and times every answer by route template and status code."""

    def __init__(self, app: ASGIApp, engine: Engine):
        self.app, self.engine = app, engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            self.engine.metrics.observe_request("http", path, str(status), time.perf_counter() - started)


async def authorized(request: Request) -> None:
    """Every data route depends on this; health and (by default) /metrics stay open."""
    request.app.state.engine.keys.check(request.headers.get("authorization"))


Authorized = Annotated[None, Depends(authorized)]


def create_app(engine: Engine) -> FastAPI:
    settings = engine.settings
    app = FastAPI(
        title="mhaserve",
        summary="Embeddings and attention weights from a multi-head-attention encoder",
        version="0.1.0",
        docs_url="/docs",
        redoc_url=None,
    )

    app.state.engine = engine

    @app.exception_handler(MhaserveError)
    async def on_error(request: Request, error: MhaserveError) -> Response:
        engine.metrics.observe_error(error)
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        return await on_error(request, InvalidRequest(describe_validation(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return await on_error(request, NotFound(f"no route {request.url.path}: see /docs for the API"))
        if exc.status_code == 400:  # FastAPI could not read the body (not UTF-8, too deeply nested, ...)
            return await on_error(request, InvalidRequest(f"the body could not be read as UTF-8 JSON ({exc.detail})"))
        error = MhaserveError(str(exc.detail))
        error.http_status, error.type = exc.status_code, "http_error"
        response = await on_error(request, error)
        response.headers.update(exc.headers or {})  # e.g. Allow, on a 405
        return response

    async def run_embed(request: Request, embed_request: EmbedRequest) -> EmbedResult:
        gone, watcher = watch_disconnect(request)
        try:
            return await engine.embed(embed_request, is_disconnected=gone.is_set)
        finally:
            watcher.cancel()

    @app.post("/v1/embed", response_model=EmbedResponse, responses=ERROR_RESPONSES, tags=["embeddings"])
    async def embed(body: EmbedBody, request: Request, _: Authorized) -> Response:
        """Pooled embeddings; on request word pieces, per-token embeddings and attention."""
        result = await run_embed(request, body.to_request())
        return json_response(embed_response(result, body.encoding), headers=timing_headers(result))

    @app.post("/v1/embeddings", response_model=OpenAIEmbeddingsResponse, responses=ERROR_RESPONSES, tags=["embeddings"])
    async def openai_embeddings(body: OpenAIEmbeddingsBody, request: Request, _: Authorized) -> Response:
        """OpenAI-compatible: the official `openai` client works unchanged."""
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
        result = await run_embed(request, EmbedRequest(inputs=as_tuple(inputs)))  # type: ignore[arg-type]
        return json_response(openai_response(result, body.encoding_format), headers=timing_headers(result))

    @app.post("/v1/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES, tags=["embeddings"])
    async def tokenize(body: TokenizeBody, _: Authorized) -> Response:
        """Word pieces with ids and character offsets, as the model sees the text."""
        result = await engine.tokenize(TokenizeRequest(inputs=as_tuple(body.inputs), truncate=body.truncate))
        return json_response(tokenize_response(result))

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES, tags=["models"])
    async def models(_: Authorized) -> Response:
        if engine.info is None:
            return json_response({"object": "list", "data": []})
        return json_response({"object": "list", "data": [model_card(engine.info)]})

    @app.get("/health/live", response_model=HealthResponse, tags=["health"])
    async def live() -> Response:
        """The process is up (the event loop answers)."""
        return json_response({"status": "live"})

    @app.get(
        "/health/ready", response_model=HealthResponse, responses={503: {"model": HealthResponse}}, tags=["health"]
    )
    async def ready() -> Response:
        """Model loaded and warm, not draining, inference not failing."""
        if engine.ready:
            return json_response({"status": "ready"})
        status = "draining" if engine.draining else ("failing" if engine.started else "loading")
        return json_response({"status": status}, 503)

    @app.get("/metrics", tags=["health"], response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics(request: Request) -> Response:
        if settings.metrics_require_key:
            engine.keys.check(request.headers.get("authorization"))
        return Response(engine.metrics.exposition(), media_type=engine.metrics.content_type)

    @app.get("/ui", include_in_schema=False)
    async def ui() -> FileResponse:
        return FileResponse(STATIC_DIR / "ui.html", media_type="text/html")

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def ui_static(name: str) -> FileResponse:
        path = (STATIC_DIR / name).resolve()
        if path.parent != STATIC_DIR.resolve() or not path.is_file():
            raise NotFound(f"no file {name!r} under /ui/static")
        return FileResponse(path)

    app.include_router(kserve_router(engine))  # Open Inference Protocol v2, same engine
    engine.metrics.declare_routes("http", DATA_ROUTES)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes, on_error=engine.metrics.observe_error)
    app.add_middleware(RequestMetrics, engine=engine)
    return app


def describe_validation(exc: RequestValidationError) -> str:
    """pydantic's errors as one sentence naming each field and what it must be."""
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
