"""Dependencies the routes declare: the served models, and the API-key check.

Both are `async def`: FastAPI runs a plain `def` dependency on its thread pool, a thread hop
for every request (and, under a flood, a thread waking for the GIL beside the event loop)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth import ApiKeys
from service.core.models import Models


async def get_models(request: Request) -> Models:
    return request.app.state.models


async def authorized(request: Request) -> None:
    """Every data route depends on this; health stays open, /metrics follows its setting."""
    keys: ApiKeys = request.app.state.keys
    keys.check(request.headers.get("authorization"))


ModelsDep = Annotated[Models, Depends(get_models)]
Authorized = Annotated[None, Depends(authorized)]
