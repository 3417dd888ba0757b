"""Dependencies the routes declare: the served models, and the API-key check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.auth import ApiKeys
from service.core.models import Models


def get_models(request: Request) -> Models:
    return request.app.state.models


def authorized(request: Request) -> None:
    """Every data route depends on this; health stays open, /metrics follows its setting."""
    keys: ApiKeys = request.app.state.keys
    keys.check(request.headers.get("authorization"))


ModelsDep = Annotated[Models, Depends(get_models)]
Authorized = Annotated[None, Depends(authorized)]
