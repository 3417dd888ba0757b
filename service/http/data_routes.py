"""The REST data routes, declared once: each one's path, its body's schema, and what the edge
reads of a body to admit or refuse the request before the ASGI cycle.

The edge (`edge.admit_at_edge`, and `protocol.plain_request` before h11) finds a route here by
its path and reads its texts with the schema's own `peek` and its model from the schema's
`model` field; the routes register under `Route.path` with `Route.schema` as their body, and
`served_routes` (called by create_app) fails at start-up if the app serves any of them otherwise,
and hands the edge each one's served route, whose endpoint the edge calls itself for a body
that validates (see `edge.Intake`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.http.rerank_schemas import PredictBody, RerankBody, TeiRerankBody
from service.http.schemas import EmbedBody, OpenAIEmbeddingsBody


@dataclass(frozen=True)
class DataRoute:
    """A POST route that queues work, as the edge sees it before routing: its path (also the
    metrics label), its body's schema, how to find the texts in a parsed body, and its model's
    name, named by the path (KServe) or by a body field."""

    path: str  # the route template, as FastAPI's route reports it
    schema: type[BaseModel] | None  # None: the KServe protocol's body, read by hand (service.kserve)
    texts: Callable[[Any], list[str]]  # from the parsed JSON; raises KeyError, TypeError, ... on a malformed one
    model: str | None = None  # named by the path
    model_field: str | None = None  # or by this body field


def body_route(path: str, schema: type[BaseModel]) -> DataRoute:
    """A route whose body is `schema`: the texts are what its `peek` reads, the model its `model` field."""
    return DataRoute(path, schema, schema.peek, model_field="model" if "model" in schema.model_fields else None)  # type: ignore[attr-defined]


EMBED = body_route("/v1/embed", EmbedBody)
EMBEDDINGS = body_route("/v1/embeddings", OpenAIEmbeddingsBody)
RERANK = body_route("/v1/rerank", RerankBody)
TEI_RERANK = body_route("/rerank", TeiRerankBody)
PREDICT = body_route("/predict", PredictBody)
DATA_POST_ROUTES = {route.path: route for route in (EMBED, EMBEDDINGS, RERANK, TEI_RERANK, PREDICT)}

KSERVE_INFER = re.compile(r"^/v2/models/([^/]+)(/versions/[^/]+)?/infer$")
KSERVE_INFER_PATHS = ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer")


def kserve_texts(body: Any) -> Any:
    return body["inputs"][0]["data"]


def data_route(path: str) -> DataRoute | None:
    """The data route a request's path names, or None for any other path."""
    route = DATA_POST_ROUTES.get(path)
    if route is not None:
        return route
    match = KSERVE_INFER.match(path)
    if match is None:
        return None
    return DataRoute(KSERVE_INFER_PATHS[1 if match.group(2) else 0], None, kserve_texts, model=match.group(1))


# the routes' metrics series, created at start-up: the data routes and the other data calls
METRIC_ROUTES = [*DATA_POST_ROUTES, "/v1/tokenize", "/v1/models"]


# what every data route's endpoint takes, after its body: the edge calls it with these
ENDPOINT_PARAMETERS = ("request", "models", "_")


def served_routes(routers: list[APIRouter]) -> dict[str, APIRoute]:
    """The served route of each declared body route, by path. Each must be one POST route taking
    its schema as the body, then (request, models, _ the API-key check), as `edge.Intake` calls it."""
    served = {route.path: route for router in routers for route in router.routes if isinstance(route, APIRoute)}
    found = {}
    for path, declared in DATA_POST_ROUTES.items():
        route = served.get(path)
        field = route.body_field if route is not None and "POST" in route.methods else None
        body = field.field_info.annotation if field is not None else None
        if route is None or body is not declared.schema:
            raise RuntimeError(f"POST {path} is declared with body {declared.schema}, served with {body}")
        parameters = tuple(inspect.signature(route.endpoint).parameters)[1:]
        if parameters != ENDPOINT_PARAMETERS:
            takes = ", ".join(parameters)
            raise RuntimeError(f"POST {path}'s endpoint takes (body, {takes}), not (body, request, models, _)")
        found[path] = route
    for path in KSERVE_INFER_PATHS:
        if path not in served:
            raise RuntimeError(f"POST {path} is declared but not served")
    return found
