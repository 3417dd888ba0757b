"""Noticing that an HTTP client went away, so its queued work is dropped before inference."""

from __future__ import annotations

import asyncio

from starlette.requests import Request


def watch_disconnect(request: Request) -> tuple[asyncio.Event, asyncio.Task]:
    """After the body is read, the next ASGI message is the client's disconnect, if any.

    Returns the event that is set on disconnect and the watching task (cancel it once the
    answer is ready)."""
    gone = asyncio.Event()

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                return

    return gone, asyncio.create_task(watch())
