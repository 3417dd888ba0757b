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


class HttpConnection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._exchange(path, body, headers), 120)
        except (ConnectionError, asyncio.IncompleteReadError, IndexError, ValueError):
            # the server closed an idle keep-alive connection: reconnect once and resend
            self.close()
            return await asyncio.wait_for(self._exchange(path, body, headers), 120)

    async def _exchange(self, path: str, body: bytes, headers: dict[str, str] | None) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None or self.reader.at_eof() or self.writer.is_closing():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


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
                tokens += await call(batch)
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
            tokens += await call([text])
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


def rest_call(host: str, port: int) -> Callable[[], Call]:
    def make() -> Call:
        connection = HttpConnection(host, port)

        async def call(texts: list[str]) -> int:
            status, body = await connection.post("/v1/embed", orjson.dumps({"inputs": texts}))
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            return orjson.loads(body)["usage"]["tokens"]

        return call

    return make


def kserve_rest_call(host: str, port: int, model: str) -> Callable[[], Call]:
    def make() -> Call:
        connection = HttpConnection(host, port)

        async def call(texts: list[str]) -> int:
            request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
            status, body = await connection.post(f"/v2/models/{model}/infer", orjson.dumps(request))
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
            return len(texts)  # KServe has no usage field; tokens are counted from the corpus

        return call

    return make
