"""The served models: one engine each, chosen by the name a request gives (none: the first).

Every transport talks to `Models`; each model has its own batchers, admission and readiness,
and they share the process's cores (an idle model computes nothing) and its metrics, where
every per-model series carries a `model` label. The server is ready when every model is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from service.config import Settings
from service.core.capacity import Ticket
from service.core.engine import Engine
from service.core.health import Status
from service.errors import NotFound, Overloaded
from service.metrics import Metrics
from service.types import (
    EmbedRequest,
    EmbedResult,
    ModelInfo,
    PredictRequest,
    PredictResult,
    RerankRequest,
    RerankResult,
    TokenizeRequest,
    TokenizeResult,
)


class Models:
    def __init__(self, settings: Settings, engines: list[Engine], metrics: Metrics):
        names = [engine.name for engine in engines]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"two models are named {duplicates[0]!r}: every served model needs its own name")
        if not engines:
            raise ValueError("no model to serve")
        self.settings, self.metrics = settings, metrics
        self.engines = {engine.name: engine for engine in engines}
        self.default = engines[0]

    @property
    def names(self) -> list[str]:
        return list(self.engines)

    def engine(self, name: str | None) -> Engine:
        """The model named, or the default; an unknown name is a 404 that lists the served ones."""
        if not name:
            return self.default
        engine = self.engines.get(name)
        if engine is None:
            raise NotFound(f"model {name!r} is not served here; choose one of: {', '.join(map(repr, self.engines))}")
        return engine

    # lifecycle -------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        statuses = {engine.status for engine in self.engines.values()}
        for status in (Status.DRAINING, Status.LOADING, Status.FAILING, Status.STUCK):
            if status in statuses:
                return status
        return Status.READY

    @property
    def status_reason(self) -> str | None:
        reasons = [f"{name}: {reason}" for name, engine in self.engines.items() if (reason := engine.status_reason)]
        return "; ".join(reasons) or None

    @property
    def ready(self) -> bool:
        return self.status is Status.READY

    @property
    def draining(self) -> bool:
        return self.default.draining

    async def start(self) -> None:
        """One model after another: loading and warming up take every core while they last."""
        for engine in self.engines.values():
            await engine.start()

    def withdraw(self) -> None:
        for engine in self.engines.values():
            engine.withdraw()

    def begin_drain(self) -> None:
        for engine in self.engines.values():
            engine.begin_drain()

    async def stop(self, grace_s: float) -> None:
        self.begin_drain()
        for engine in self.engines.values():
            await engine.stop(grace_s)

    # requests --------------------------------------------------------------------------

    def model_info(self, name: str | None = None) -> ModelInfo:
        return self.engine(name).model_info()

    def model_infos(self) -> list[ModelInfo]:
        return [engine.model_info() for engine in self.engines.values()]

    def try_admit(self, name: str | None, texts: Sequence[str]) -> Ticket | Overloaded:
        """Every edge's decision on a request before it is validated: a ticket holding its expected
        tokens in its model's queue (pass it to embed), or the refusal to answer at once. An
        unknown model is a NotFound, as for embed."""
        return self.engine(name).try_admit(texts)

    async def embed(
        self, request: EmbedRequest, is_disconnected: Callable[[], bool] | None = None, ticket: Ticket | None = None
    ) -> EmbedResult:
        return await self.engine(request.model).embed(request, is_disconnected, ticket)

    async def rerank(
        self, request: RerankRequest, is_disconnected: Callable[[], bool] | None = None, ticket: Ticket | None = None
    ) -> RerankResult:
        return await self.engine(request.model).rerank(request, is_disconnected, ticket)

    async def predict(
        self, request: PredictRequest, is_disconnected: Callable[[], bool] | None = None, ticket: Ticket | None = None
    ) -> PredictResult:
        return await self.engine(request.model).predict(request, is_disconnected, ticket)

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResult:
        return await self.engine(request.model).tokenize(request)
