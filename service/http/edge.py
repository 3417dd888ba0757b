"""The REST edge, once for every route: error -> answer, body limit, disconnect, metrics.

Routes raise `MhaserveError`s and return `json_response`s; everything a route would
otherwise repeat lives here. Errors on the KServe routes (/v2...) take the protocol's
shape, {"error": message}, which tritonclient reads; every other route answers
{"error": {"type", "message"}}. Both carry the same status and headers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.capacity import Ticket
from service.core.models import Models
from service.errors import InvalidRequest, MhaserveError, NotFound, Overloaded, PayloadTooLarge, Unauthenticated
from service.http.data_routes import DataRoute, data_route
from service.http.deps import authorized
from service.http.schemas import ErrorResponse, KServeErrorResponse
from service.metrics import Metrics
from service.types import EmbedRequest, EmbedResult, total_time

KSERVE_PREFIX = "/v2"
T = TypeVar("T")


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def error_headers(error: MhaserveError) -> dict[str, str]:
    headers = {}
    if isinstance(error, Overloaded):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_body(error: MhaserveError, path: str) -> bytes:
    if path.startswith(KSERVE_PREFIX):
        body: dict[str, Any] = {"error": error.message}
    else:
        body = {"error": {"type": error.type, "message": error.message}}
    return orjson.dumps(body)


def error_response(error: MhaserveError, path: str) -> Response:
    return Response(
        error_body(error, path), error.http_status, headers=error_headers(error), media_type="application/json"
    )


class HttpError(MhaserveError):
    """An error Starlette itself raised (e.g. 405), passed on with its status."""

    type = "http_error"

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status

    @property
    def http_status(self) -> int:
        return self.status


def counted_error_response(metrics: Metrics, error: MhaserveError, path: str) -> Response:
    metrics.observe_error(error)
    return error_response(error, path)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(MhaserveError)
    async def on_error(request: Request, error: MhaserveError) -> Response:
        return counted_error_response(metrics, error, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        return await on_error(request, InvalidRequest(describe_validation(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return await on_error(request, NotFound(f"no route {request.url.path}: see /docs for the API"))
        if exc.status_code == 400:  # FastAPI could not read the body (not UTF-8, too deeply nested, ...)
            return await on_error(request, InvalidRequest(f"the body could not be read as UTF-8 JSON ({exc.detail})"))
        response = await on_error(request, HttpError(str(exc.detail), exc.status_code))
        response.headers.update(exc.headers or {})  # e.g. Allow, on a 405
        return response


def describe_validation(exc: RequestValidationError) -> str:
    """pydantic's errors as one sentence naming each field and what it must be."""
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{location}: {error.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


async def until_disconnected(request: Request, work: Callable[[Callable[[], bool], Ticket | None], Awaitable[T]]) -> T:
    """work(is_disconnected, ticket), told when the client goes away so its queued work is dropped
    unrun, with the ticket the edge admitted the request with (if any).

    After the body is read, the next ASGI message is the client's disconnect, if any."""
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await work(gone.is_set, request.scope.get(TICKET))
    finally:
        watcher.cancel()


async def embed_until_disconnected(models: Models, request: Request, embed_request: EmbedRequest) -> EmbedResult:
    return await until_disconnected(
        request, lambda gone, ticket: models.embed(embed_request, is_disconnected=gone, ticket=ticket)
    )


ERROR_MEANINGS = {
    400: "the model's task is another (an embedder asked to rerank, a reranker to embed); the message names it",
    401: "missing or wrong API key",
    404: "no such route, model or version",
    413: "body over max_request_bytes, or attention answer over max_attention_values",
    422: "invalid input; the message says what to change",
    429: "queue full; retry after Retry-After seconds",
    500: "inference failed for this request's batch (other requests are unaffected)",
    503: "not ready: loading or shutting down",
    504: "deadline passed",
}
DATA_ROUTE_ERRORS = (400, 401, 413, 422, 429, 500, 503, 504)


def error_responses(*statuses: int, kserve: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route may answer."""
    model = KServeErrorResponse if kserve else ErrorResponse
    return {status: {"model": model, "description": ERROR_MEANINGS[status]} for status in statuses}


TICKET = "mhaserve.ticket"  # scope key: the request's Ticket from Models.try_admit, until the engine takes it


UNREADABLE = object()  # a body that is not JSON: the full path says what is wrong with it


def read_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return UNREADABLE


def admit_at_edge(models: Models, route: DataRoute, body: bytes) -> Overloaded | Ticket | None:
    return admit_parsed(models, route, read_json(body))


def admit_parsed(models: Models, route: DataRoute, parsed: Any) -> Overloaded | Ticket | None:
    """The edge's decision on a data route's request, made without validation (Models.try_admit):
    a refusal when its least possible tokens cannot fit in its model's queue, else a ticket for its
    expected tokens. None when the full path must decide: a body it cannot read, an unknown model."""
    if route.model is not None and route.model not in models.engines:
        return None  # the full path answers the 404
    if parsed is UNREADABLE:
        return None
    try:
        texts = route.texts(parsed)
        name = route.model or (parsed.get(route.model_field) if route.model_field else None)
    except (KeyError, IndexError, TypeError, AttributeError):
        return None  # the full path says what is wrong with it
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return None
    if name is not None and (not isinstance(name, str) or name not in models.engines):
        return None  # the full path answers the 404 or 422
    return models.try_admit(name, texts)


class Intake:
    """Reads a request body within its limit, refuses at once what the queue cannot take, and
    runs a data route's valid request itself.

    A body over the limit is refused by Content-Length before its first byte, else as soon as
    the running total passes it. A data route's request that the protocol did not decide on
    (see protocol.GuardedH11Protocol) is decided here by `admit_parsed`: refused when it cannot
    fit, at no cost of routing, validation or tokenizer, else let through with its ticket.

    A data route's JSON body that its schema validates goes straight to the route's endpoint,
    with the API-key check its route declares: FastAPI's routing, dependency solving and second
    reading of the body were a third of the server's own time for one short sentence at idle
    (docs/performance.md). Every other request, invalid bodies included, gets the app, with the
    body replayed, so FastAPI's validation words each 422 as ever.
    """

    def __init__(self, app: ASGIApp, limit: int, models: Models, direct: dict[str, APIRoute]):
        self.app, self.limit, self.models, self.direct = app, limit, models, direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        try:
            await self._intake(scope, receive, send)
        finally:
            if (ticket := scope.get(TICKET)) is not None:
                ticket.release()  # the request ended before its engine took it over

    async def _intake(self, scope: Scope, receive: Receive, send: Send) -> None:
        too_large = PayloadTooLarge(
            f"request body is over the {self.limit:,}-byte limit: send fewer or shorter inputs "
            "(the server's max_request_bytes setting)"
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return await self._refuse(too_large, scope, send, close=True)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return await self._refuse(too_large, scope, send, close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        route = data_route(scope["path"]) if scope["method"] == "POST" else None
        parsed = UNREADABLE if route is None else read_json(body)
        if route is not None and TICKET not in scope:  # not decided at the protocol already
            decision = admit_parsed(self.models, route, parsed)
            if isinstance(decision, Overloaded):
                scope["route"] = route  # the metrics label
                return await self._refuse(decision, scope, send)
            if decision is not None:
                scope[TICKET] = decision
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect

        served = self.direct.get(route.path) if route is not None and json_content(scope) else None
        valid = None if served is None else validated(route.schema, parsed)  # type: ignore[union-attr, arg-type]
        if valid is not None:
            return await self._run(served, valid, scope, replay, send)  # type: ignore[arg-type]
        await self.app(scope, replay, send)

    async def _run(self, served: APIRoute, body: BaseModel, scope: Scope, receive: Receive, send: Send) -> None:
        """The route's endpoint on its validated body, answering its errors as the app would."""
        scope["route"] = served  # the metrics label, as the router sets it
        request = Request(scope, receive)
        try:
            await authorized(request)
            response = await served.endpoint(body, request, self.models, None)
        except MhaserveError as error:
            response = counted_error_response(self.models.metrics, error, scope["path"])
        await response(scope, receive, send)

    async def _refuse(self, error: MhaserveError, scope: Scope, send: Send, close: bool = False) -> None:
        response = counted_error_response(self.models.metrics, error, scope["path"])
        if close:  # the rest of an oversized body is never read
            response.headers["connection"] = "close"
        await response(scope, None, send)  # type: ignore[arg-type]


def json_content(scope: Scope) -> bool:
    """The request says its body is JSON (application/json or a +json type), as FastAPI requires
    before it reads one."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
    return False


def validated(schema: type[BaseModel], parsed: Any) -> BaseModel | None:
    if parsed is UNREADABLE:
        return None
    try:
        return schema.model_validate(parsed)
    except ValidationError:
        return None


class RequestMetrics:
    """Counts and times every answer by route template and status code, and tells the client
    the time in an `x-total-time` header (ms)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                name, value = total_time(time.perf_counter() - started)
                message = {**message, "headers": [*message.get("headers", ()), (name.encode(), value.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "other"
            self.metrics.observe_request("http", path, str(status), time.perf_counter() - started)
