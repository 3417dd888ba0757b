"""Load generators with little client overhead: raw HTTP/1.1 keep-alive and grpc.aio.

The client shares the machine with the server, so every client CPU cycle is one the server
doesn't get; a minimal HTTP client keeps that cost small and equal across rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson


class RawHttp:
    """A minimal HTTP/1.1 client with a keep-alive pool: POST a JSON body, read the status, the
    headers and a Content-Length body.

    httpx spends milliseconds of CPU per request in its pool at a few hundred concurrent
    requests, which would measure the client, not the server.
    """

    def __init__(self, host: str, port: int, patience_s: float = 120.0):
        self.host, self.port, self.patience_s = host, port, patience_s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open: set[asyncio.StreamWriter] = set()

    async def post(
        self, path: str, body: object, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        payload = orjson.dumps(body)
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(payload)}\r\n\r\n"
        ).encode()
        return await asyncio.wait_for(self._exchange(head + payload), self.patience_s)

    async def _exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        reused = bool(self.idle)
        reader, writer = self.idle.pop() if reused else await self._connect()
        try:
            writer.write(request)
            try:
                status_line = await reader.readline()
            except ConnectionResetError:
                status_line = b""
            if not status_line and reused:
                # the server closed this idle keep-alive connection before reading the request (it
                # does at shutdown): nothing was accepted, so send it again on a new connection, as
                # HTTP clients do
                self._close(writer)
                return await self._fresh_exchange(request)
            status, headers, body = await self._read_response(reader, status_line)
        except BaseException:
            self._close(writer)
            raise
        if headers.get("connection", "").lower() == "close":
            self._close(writer)
        else:
            self.idle.append((reader, writer))
        return status, headers, body

    async def _fresh_exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        reader, writer = await self._connect()
        try:
            writer.write(request)
            status, headers, body = await self._read_response(reader, await reader.readline())
        except BaseException:
            self._close(writer)
            raise
        self.idle.append((reader, writer))
        return status, headers, body

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.open.add(writer)
        return reader, writer

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader, status_line: bytes) -> tuple[int, dict[str, str], bytes]:
        if not status_line:
            raise ConnectionResetError("connection closed before a response")
        status = int(status_line.split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self.open.discard(writer)
        writer.close()

    async def close(self) -> None:
        for writer in list(self.open):
            self._close(writer)
        self.idle.clear()


@dataclass
class Outcome:
    sentences: int
    tokens: int
    seconds: float
    latencies: list[float]
    errors: int

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(q / 100 * len(values)))] if values else float("nan")


Call = Callable[[list[str]], Awaitable[int]]  # sends texts, returns tokens (or raises)


async def closed_loop(make_call: Callable[[], Call], batches: list[list[str]], concurrency: int) -> Outcome:
    """`concurrency` clients, each sending the next batch as soon as its previous answer came."""
    queue = list(reversed(batches))
    latencies: list[float] = []
    tokens = errors = 0

    async def client() -> None:
        nonlocal tokens, errors
        call = make_call()
        while queue:
            batch = queue.pop()
            started = time.perf_counter()
            try:
                answered = await call(batch)  # awaited first: `tokens += await ...` reads tokens before
                tokens += answered  # the await, and concurrent clients' sums would overwrite each other
            except Exception:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return Outcome(sum(map(len, batches)), tokens, time.perf_counter() - started, latencies, errors)


async def open_loop(make_call: Callable[[], Call], texts: list[str], rate: float, connections: int) -> Outcome:
    """Requests at a fixed offered rate regardless of answers (no coordinated omission)."""
    calls = [make_call() for _ in range(connections)]
    free = asyncio.Queue()
    for call in calls:
        free.put_nowait(call)
    latencies: list[float] = []
    tokens = errors = 0

    async def one(text: str, scheduled: float) -> None:
        nonlocal tokens, errors
        call = await free.get()
        try:
            answered = await call([text])
            tokens += answered
        except Exception:
            errors += 1
        finally:
            free.put_nowait(call)
        latencies.append(time.perf_counter() - scheduled)  # from when it should have been sent

    started = time.perf_counter()
    tasks = []
    for i, text in enumerate(texts):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(text, scheduled)))
    await asyncio.gather(*tasks)
    return Outcome(len(texts), tokens, time.perf_counter() - started, latencies, errors)


def rest_call(host: str, port: int, model: str | None = None) -> Callable[[], Call]:
    """POST /v1/embed; `model` names one of the served models (None: the server's first)."""

    def make() -> Call:
        connection = RawHttp(host, port)
        extra = {"model": model} if model else {}

        async def call(texts: list[str]) -> int:
            status, _, body = await connection.post("/v1/embed", {"inputs": texts, **extra})
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            return orjson.loads(body)["usage"]["tokens"]

        return call

    return make


def kserve_rest_call(host: str, port: int, model: str) -> Callable[[], Call]:
    def make() -> Call:
        connection = RawHttp(host, port)

        async def call(texts: list[str]) -> int:
            request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
            status, _, body = await connection.post(f"/v2/models/{model}/infer", request)
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            return len(texts)  # KServe has no usage field; tokens are counted from the corpus

        return call

    return make
