"""The data routes' one declaration: the app serves each under its path with its schema, and the
edge reads each body's texts and model through it."""

from __future__ import annotations

import orjson
import pytest
from fastapi import APIRouter

from service.http import data_routes
from service.http.app import ROUTERS
from service.http.data_routes import DATA_POST_ROUTES, data_route, served_routes
from service.http.deps import ModelsDep
from service.http.schemas import EmbedBody, TokenizeBody


def test_the_app_serves_every_declared_route_with_its_schema():
    served_routes(ROUTERS)  # create_app calls this; here it must not raise
    served = {route.path for router in ROUTERS for route in router.routes}
    assert set(DATA_POST_ROUTES) <= served and set(data_routes.KSERVE_INFER_PATHS) <= served


def test_a_route_served_with_another_body_than_declared_fails_at_start_up():
    wrong = APIRouter()

    @wrong.post("/v1/embed")
    async def embed(body: TokenizeBody) -> None: ...

    with pytest.raises(RuntimeError, match="POST /v1/embed is declared with body"):
        served_routes([wrong, *ROUTERS[1:]])


def test_a_data_endpoint_taking_other_parameters_than_the_edge_passes_fails_at_start_up():
    wrong = APIRouter()

    @wrong.post("/v1/embed")
    async def embed(body: EmbedBody, models: ModelsDep) -> None: ...

    with pytest.raises(RuntimeError, match=r"POST /v1/embed's endpoint takes \(body, models\)"):
        served_routes([wrong, *ROUTERS[1:]])


@pytest.mark.parametrize(
    ("path", "body", "texts", "model"),
    [
        ("/v1/embed", {"inputs": ["a b", "c"], "model": "m"}, ["a b", "c"], "m"),
        ("/v1/embeddings", {"input": "a b"}, "a b", None),
        ("/v2/models/m/infer", {"inputs": [{"data": ["a"]}]}, ["a"], "m"),
    ],
)
def test_the_edge_reads_texts_and_model_as_the_declaration_says(path, body, texts, model):
    route = data_route(path)
    parsed = orjson.loads(orjson.dumps(body))
    assert route.texts(parsed) == texts
    assert (route.model or parsed.get(route.model_field)) == model


def test_only_declared_paths_are_data_routes():
    assert data_route("/v1/tokenize") is None and data_route("/v2/models/m/ready") is None
