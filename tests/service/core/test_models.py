"""Models: requests reach the engine they name; readiness and refusals take every model into account."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from service.backends.fake import FAKE_SPEC, FakeBackend
from service.config import load_settings
from service.core.engine import Engine
from service.core.health import Status
from service.core.models import Models
from service.errors import NotFound, Overloaded
from service.metrics import Metrics
from service.types import EmbedRequest, TokenizeRequest


def served(*names: str, **flags) -> tuple[Models, dict[str, FakeBackend]]:
    settings = load_settings({k: str(v) for k, v in flags.items()}, {})
    metrics = Metrics()
    backends = {name: FakeBackend(spec=dataclasses.replace(FAKE_SPEC, name=name), delay_s=0.2) for name in names}
    engines = [Engine(settings, lambda b=backends[n]: b, metrics, name=n) for n in names]
    return Models(settings, engines, metrics), backends


def test_each_request_is_computed_by_the_model_it_names_and_unnamed_ones_by_the_first():
    async def scenario():
        models, backends = served("first", "second")
        await models.start()
        answers = [
            await models.embed(EmbedRequest(inputs=("the man",))),
            await models.embed(EmbedRequest(inputs=("the man",), model="second")),
            await models.tokenize(TokenizeRequest(inputs=("the man",), model="second")),
        ]
        with pytest.raises(NotFound, match="choose one of: 'first', 'second'"):
            await models.embed(EmbedRequest(inputs=("x",), model="third"))
        await models.stop(1.0)
        return answers, backends

    (unnamed, named, tokens), backends = asyncio.run(scenario())
    assert (unnamed.model, named.model, tokens.model) == ("first", "second", "second")
    assert len(backends["first"].calls) == 1 and len(backends["second"].calls) == 1


def test_ready_only_when_every_model_is_and_names_must_differ():
    async def scenario():
        models, _ = served("first", "second")
        statuses = [models.status]
        await models.engines["first"].start()
        statuses.append(models.status)
        await models.engines["second"].start()
        statuses.append(models.status)
        models.begin_drain()
        statuses.append(models.status)
        await models.stop(1.0)
        return statuses

    assert asyncio.run(scenario()) == [Status.LOADING, Status.LOADING, Status.READY, Status.DRAINING]
    with pytest.raises(ValueError, match="two models are named 'twin'"):
        served("twin", "twin")


def test_each_model_admits_or_refuses_by_its_own_queue():
    async def scenario():
        models, _ = served("busy", "idle", inference_workers=1, max_queue_tokens=8)
        await models.start()
        blocker = asyncio.create_task(models.embed(EmbedRequest(inputs=("the man",), model="busy")))
        await asyncio.sleep(0.05)
        filler = asyncio.create_task(models.embed(EmbedRequest(inputs=("a quick brown fox jumps",), model="busy")))
        await asyncio.sleep(0.05)
        decisions = [models.try_admit(name, ["the man"]) for name in ("busy", "idle", None)]
        seen = tuple(isinstance(decision, Overloaded) for decision in decisions)
        for decision in decisions:
            if not isinstance(decision, Overloaded):
                decision.release()
        await asyncio.gather(blocker, filler)
        await models.stop(1.0)
        return seen

    assert asyncio.run(scenario()) == (True, False, True)  # None: the default model, "busy"
