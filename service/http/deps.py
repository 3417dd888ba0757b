"""Dependencies the routes declare: the engine, and the API-key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth import ApiKeys
from service.core.engine import Engine


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def authorized(request: Request) -> None:
    """Every data route depends on this; health stays open, /metrics follows its setting."""
    keys: ApiKeys = request.app.state.keys
    keys.check(request.headers.get("authorization"))


EngineDep = Annotated[Engine, Depends(get_engine)]
Authorized = Annotated[None, Depends(authorized)]
