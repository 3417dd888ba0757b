"""The tests' HTTP clients: httpx for a single request, the bench's RawHttp where load must not
measure the client, and raw bytes on a socket for requests no client would send."""

from __future__ import annotations

import asyncio
import socket

import httpx

from bench.loadgen import RawHttp
from tests.support.server import ServerProcess

__all__ = ["RawHttp", "embed_concurrently", "post", "raw_request", "scrape"]


def post(server: ServerProcess, path: str, body: object, **kwargs) -> httpx.Response:
    """POST `body` as JSON to one of the server's REST routes."""
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)


async def embed_concurrently(server: ServerProcess, texts: list[str]) -> list[httpx.Response]:
    """One /v1/embed request per text, all in flight at once, each on its own connection."""
    limits = httpx.Limits(max_connections=len(texts))
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post("/v1/embed", json={"inputs": text}) for text in texts))


def scrape(server: ServerProcess) -> str:
    """The server's /metrics exposition, as Prometheus would read it."""
    response = httpx.get(server.url + "/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def raw_request(port: int, request: bytes, timeout_s: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)
