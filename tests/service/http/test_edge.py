"""The REST edge in-process on the fake backend: one answer per error, whatever the route."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import httpx

from service.backends.fake import FakeBackend
from service.config import load_settings
from service.core.engine import Engine
from service.core.models import Models
from service.http.app import create_app
from service.types import ModelInfo

KEY = "edge-test-key"


def serve(scenario: Callable[[httpx.AsyncClient, Engine], Awaitable], start: bool = True, **settings):
    """The app over an in-process transport; the engine started unless `start` is False."""
    flags = {name: str(value) for name, value in settings.items()}

    async def main():
        engine = Engine(load_settings(flags, {}), lambda: FakeBackend(delay_s=0.2))
        app = create_app(engine.settings, Models(engine.settings, [engine], engine.metrics))
        if start:
            await engine.start()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
                return await scenario(client, engine)
        finally:
            if start:
                await engine.stop(1.0)

    return asyncio.run(main())


def test_model_routes_answer_503_while_the_model_loads_as_every_data_route_does():
    async def scenario(client, engine):
        return [
            await client.get("/v1/models"),
            await client.post("/v1/embeddings", json={"input": "x"}),
            await client.post("/v1/embed", json={"inputs": "x"}),
            await client.get("/v2/models/fake"),
            await client.get("/health/ready"),
        ]

    models, openai, embed, kserve, ready = serve(scenario, start=False)
    for response in (models, openai, embed):
        assert response.status_code == 503
        assert response.json()["error"] == {"type": "not_ready", "message": models.json()["error"]["message"]}
    assert "still loading" in models.json()["error"]["message"]
    assert kserve.status_code == 503 and "still loading" in kserve.json()["error"]
    assert ready.status_code == 503 and ready.json() == {"status": "loading"}


def test_model_routes_answer_503_while_the_server_drains():
    async def scenario(client, engine):
        engine.begin_drain()
        return await client.get("/v1/models"), await client.get("/v2/models/fake"), await client.get("/health/ready")

    models, kserve, ready = serve(scenario)
    assert models.status_code == kserve.status_code == 503
    assert "shutting down" in models.json()["error"]["message"] and "shutting down" in kserve.json()["error"]
    assert ready.json() == {"status": "draining"}


def test_the_model_card_carries_every_model_info_field():
    (card,) = serve(lambda client, engine: client.get("/v1/models")).json()["data"]
    names = {"embedding_dim": "dims", "n_layers": "layers", "n_heads": "heads"}
    for field in dataclasses.fields(ModelInfo):
        assert names.get(field.name, field.name) in card, field.name
    assert card["graph"] == "none" and card["provider"] == "fake"


def test_a_full_queue_is_429_with_retry_after_on_mhaserve_and_kserve_routes():
    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the man is playing"]}]}

    async def scenario(client, engine):
        blocker = asyncio.create_task(client.post("/v1/embed", json={"inputs": "the man"}))
        await asyncio.sleep(0.05)  # its batch holds the one worker; the next fills the queue
        filler = asyncio.create_task(client.post("/v1/embed", json={"inputs": "a quick brown fox jumps over"}))
        await asyncio.sleep(0.05)
        refused = [
            await client.post("/v1/embed", json={"inputs": "a quick brown fox jumps over"}),
            await client.post("/v2/models/fake/infer", json=infer),
        ]
        await asyncio.gather(blocker, filler)
        return refused

    mhaserve, kserve = serve(scenario, inference_workers=1, max_queue_tokens=10)
    assert mhaserve.status_code == kserve.status_code == 429
    assert mhaserve.headers["retry-after"] == kserve.headers["retry-after"] == "1"
    assert mhaserve.json()["error"]["type"] == "overloaded"
    assert isinstance(kserve.json()["error"], str) and "at capacity" in kserve.json()["error"]


def test_kserve_routes_check_keys_at_the_edge_as_every_data_route_does():
    async def scenario(client, engine):
        closed = [await client.get(path) for path in ("/v2", "/v2/models/fake", "/v1/models")]
        closed.append(await client.post("/v2/models/fake/infer", json={}))
        opened = [await client.get(path) for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/fake/ready")]
        keyed = await client.get("/v2/models/fake", headers={"authorization": f"Bearer {KEY}"})
        return closed, opened, keyed

    closed, opened, keyed = serve(scenario, api_keys=KEY)
    for response in closed:
        assert response.status_code == 401, response.request.url
        assert response.headers["www-authenticate"] == "Bearer"
    assert isinstance(closed[0].json()["error"], str) and closed[2].json()["error"]["type"] == "unauthenticated"
    assert [r.status_code for r in opened] == [200, 200, 200]
    assert keyed.status_code == 200 and keyed.json()["name"] == "fake"
