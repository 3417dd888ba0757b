"""Promise 3: after a burst the server answers again at once, and every ticket it took is given back.

Each flood is open-loop REST load at 3x the capacity measured just before, with mixed clients
beside it: some send a whole request and leave at once, some send half a request head and
leave, some leave halfway through a body, and crowds of short-lived connections push the
server past its connection limit, where uvicorn itself answers 503. Once a flood's answers are
in, every request is answered 200 within a second, the reserved-tokens gauges read 0 and
readiness is 200. Two floods run in `make test`; twenty in a row in `make test-reliability`. The floods'
own answers are checked against in-process onnxruntime.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import orjson
import pytest

from service.config import Settings
from tests.reliability.load import Outcome, Senders, Summary, measure_capacity, open_loop, summarise
from tests.support.http import scrape
from tests.support.prometheus import metric_value
from tests.support.server import ServerProcess, launch

# measures time or capacity against a bound: make test runs it after the rest, alone
pytestmark = pytest.mark.exclusive

MODEL = {"model": "all-minilm-l6-v2"}
CONNECTION_LIMIT = 200  # low enough that the flood and the crowds pass it
CROWD = 100
QUEUE_TOKENS = 1024  # room for about 80 of the flood's requests: it refuses well before the limit
DEADLINE_S = Settings().request_timeout_s


def whole_request(text: str) -> bytes:
    body = orjson.dumps({"inputs": [text]})
    head = f"POST /v1/embed HTTP/1.1\r\nhost: flood\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


async def leave_after(data: bytes, port: int, read: bool = False) -> str:
    """Sends `data` on a new connection and closes it: at once, or after reading the status line."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "refused"
    try:
        writer.write(data)
        await writer.drain()
        if read:
            line = await asyncio.wait_for(reader.readline(), DEADLINE_S + 5)
            return line.split()[1].decode() if line else "closed"
        return "left"
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return "reset"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def mixed_clients(port: int, duration_s: float) -> Counter:
    """The clients that take room or a connection and do not stay for an answer, and the crowds
    past the connection limit, for `duration_s`."""
    whole = whole_request("A client that does not wait for its answer.")
    split = whole.index(b"\r\n\r\n")
    shapes = (
        (whole, False),  # a whole request, decided at the protocol; the client leaves at once
        (whole[: split // 2], False),  # half a head
        (whole[: split + 4 + 5], False),  # the head and part of the body
    )
    outcomes: Counter = Counter()
    deadline = time.monotonic() + duration_s
    tasks: list[asyncio.Task] = []
    tick = 0
    while time.monotonic() < deadline:
        data, read = shapes[tick % len(shapes)]
        tasks.append(asyncio.create_task(leave_after(data, port, read)))
        if tick % 50 == 0:  # a crowd of short-lived connections, each asking once and reading its answer
            tasks += [asyncio.create_task(leave_after(whole, port, read=True)) for _ in range(CROWD)]
        tick += 1
        await asyncio.sleep(0.01)
    for outcome in await asyncio.gather(*tasks):
        outcomes[outcome] += 1
    return outcomes


@dataclass
class Flood:
    outcomes: list[Outcome]
    statuses: Counter
    mixed: Counter
    after_s: list[float]
    after_statuses: list[int]
    reserved_tokens: float
    reservations: float
    ready: int


async def flood_then_check(server: ServerProcess, senders: Senders, rate: float, duration_s: float, first: int):
    load = asyncio.create_task(open_loop(senders, rate, duration_s, first_index=first, transports=("rest",)))
    mixed = await mixed_clients(server.http_port, duration_s)
    outcomes = await load
    await senders.http.close()  # the flood's client goes, and its keep-alive connections with it
    after_s, after_statuses = [], []
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        for i in range(10):  # sequential requests once the flood's answers are in
            started = time.perf_counter()
            response = await client.post("/v1/embed", json={"inputs": [f"after the flood {first + i}"], **MODEL})
            after_s.append(time.perf_counter() - started)
            after_statuses.append(response.status_code)
        ready = (await client.get("/health/ready")).status_code
    metrics = scrape(server)
    return Flood(
        outcomes,
        Counter(o.status for o in outcomes),
        mixed,
        after_s,
        after_statuses,
        metric_value(metrics, "mhaserve_reserved_tokens", {"model": MODEL["model"]}),
        metric_value(metrics, "mhaserve_reservations", {"model": MODEL["model"]}),
        ready,
    )


def run_floods(count: int, duration_s: float) -> tuple[float, list[Flood]]:
    server = launch("--http-max-connections", str(CONNECTION_LIMIT), "--max-queue-tokens", str(QUEUE_TOKENS))
    try:

        async def scenario():
            senders = Senders(server, patience_s=DEADLINE_S + 20, grpc_timeout_s=DEADLINE_S)
            try:
                capacity = await measure_capacity(senders, 3, clients=32, transports=("rest",))
                floods = []
                for n in range(count):
                    floods.append(await flood_then_check(server, senders, 3 * capacity, duration_s, n * 10**6))
                return capacity, floods
            finally:
                await senders.close()

        return asyncio.run(scenario())
    finally:
        server.stop()


def check(floods: list[Flood], reference, scenario: str) -> Summary:
    """Every flood left the server answering and holding no room; the floods' own answers are
    right or refused (the row `make test-reliability` prints)."""
    for n, flood in enumerate(floods):
        where = f"flood {n + 1} of {len(floods)}: {flood.statuses}, mixed clients {flood.mixed}, after {flood}"
        assert flood.statuses["200"] > 0 and flood.statuses["429"] > 0, where  # overloaded, and answering
        assert flood.statuses["lost"] == 0, where
        assert flood.after_statuses == [200] * len(flood.after_statuses), where
        assert max(flood.after_s) < 1.0, where
        assert flood.reserved_tokens == 0 and flood.reservations == 0, where
        assert flood.ready == 200, where
    past_limit = sum(flood.statuses["503"] + flood.mixed["503"] for flood in floods)
    assert past_limit > 0, "no request went past the connection limit: the test did not test that path"
    summary = summarise(scenario, [o for flood in floods for o in flood.outcomes], reference)
    assert summary.wrong == 0 and summary.lost == 0 and summary.server_errors == 0, summary.examples
    mixed = sum((flood.mixed for flood in floods), Counter())
    after = sorted(s for flood in floods for s in flood.after_s)
    summary.notes = (
        f"mixed clients beside the floods: {dict(mixed)}; after each flood 10 of 10 answered 200 (slowest "
        f"{after[-1] * 1000:.0f} ms, median {after[len(after) // 2] * 1000:.0f} ms), reserved tokens 0, ready"
    )
    summary.record()
    return summary


def test_after_two_floods_with_mixed_clients_every_request_is_answered_and_no_room_is_held(reference):
    capacity, floods = run_floods(2, 3.0)
    check(floods, reference, f"2 floods of 3 s at 3x {capacity:.0f} req/s, mixed clients")


@pytest.mark.slow
def test_twenty_floods_in_a_row_each_leave_the_server_answering_and_holding_no_room(reference):
    capacity, floods = run_floods(20, 4.0)
    summary = check(floods, reference, f"20 floods of 4 s at 3x {capacity:.0f} req/s, mixed clients")
    print(f"\n{summary.scenario}: {summary.notes}")
