"""The REST edge at the protocol, on a real uvicorn server over the fake backend: refusals
answered before h11 sees the request, and tickets for what is let through."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest

from service.backends.fake import FakeBackend
from service.config import load_settings
from service.core.capacity import STUCK_AFTER_S
from service.core.engine import Engine
from service.core.models import Models
from service.http.app import create_app
from service.http.protocol import HttpServer, http_config, plain_request
from tests.support.prometheus import metric_value

FITS_NOT = "a quick brown fox jumps over"  # 8 tokens: with the filler queued, no room in 10
INFER = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [FITS_NOT]}]}


class Served:
    def __init__(self, server: HttpServer, engine: Engine, seen: list[str]):
        self.server, self.engine, self.seen = server, engine, seen

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.server.port)


@contextlib.asynccontextmanager
async def served(**settings: object) -> AsyncIterator[Served]:
    """The app behind uvicorn on a free port, with `seen` listing every request the app got."""
    flags = {"host": "127.0.0.1", "http_port": "0", **{name: str(value) for name, value in settings.items()}}
    config = load_settings(flags, {})
    engine = Engine(config, lambda: FakeBackend(delay_s=1.0))
    models = Models(config, [engine], engine.metrics)
    app = create_app(config, models)
    seen: list[str] = []

    async def counting(scope, receive, send):
        if scope["type"] == "http":
            seen.append(f"{scope['method']} {scope['path']}")
        await app(scope, receive, send)

    server = HttpServer(http_config(counting, config, models))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    await engine.start()
    try:
        yield Served(server, engine, seen)
    finally:
        server.should_exit = True
        await serving
        await engine.stop(1.0)


def request(path: str, body: object, *headers: str) -> bytes:
    payload = orjson.dumps(body)
    head = [f"POST {path} HTTP/1.1", "host: edge", "content-type: application/json", *headers]
    head.append(f"content-length: {len(payload)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode("latin-1").strip().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def exchange(served: Served, *chunks: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection, written in the chunks given."""
    reader, writer = await served.connect()
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)
        return await read_response(reader)
    finally:
        writer.close()


async def fill_the_queue(served: Served) -> list[asyncio.Task]:
    """One batch computing (it holds the one worker for a second) and 8 of the queue's 10 tokens taken."""
    blocker = asyncio.create_task(exchange(served, request("/v1/embed", {"inputs": "the man"})))
    await asyncio.sleep(0.2)
    filler = asyncio.create_task(exchange(served, request("/v1/embed", {"inputs": FITS_NOT})))
    await asyncio.sleep(0.2)
    return [blocker, filler]


@pytest.mark.parametrize("path, body", [("/v1/embed", {"inputs": FITS_NOT}), ("/v2/models/fake/infer", INFER)])
def test_a_refusal_at_the_protocol_is_the_answer_the_app_gives_and_keeps_the_connection(path, body):
    async def scenario():
        async with served(inference_workers=1, max_queue_tokens=10) as srv:
            running = await fill_the_queue(srv)
            whole = request(path, body)
            reader, writer = await srv.connect()
            app_saw = len(srv.seen)
            writer.write(whole)  # one chunk: decided at the protocol
            at_protocol = await read_response(reader)
            app_saw_it = len(srv.seen) > app_saw
            writer.write(b"GET /health/live HTTP/1.1\r\nhost: edge\r\n\r\n")  # the same connection, next request
            next_answer = await read_response(reader)
            writer.close()
            split = whole.index(b"\r\n\r\n") + 4
            by_app = await exchange(srv, whole[:split], whole[split:])  # head, then body: the full path
            metrics = (await exchange(srv, b"GET /metrics HTTP/1.1\r\nhost: edge\r\n\r\n"))[2].decode()
            await asyncio.gather(*running)
            return at_protocol, app_saw_it, next_answer, by_app, metrics

    at_protocol, app_saw_it, next_answer, by_app, metrics = asyncio.run(scenario())
    assert at_protocol[0] == by_app[0] == 429
    assert at_protocol[2] == by_app[2]  # the same body, word for word
    varying = ("date", "x-total-time")
    assert {k: v for k, v in at_protocol[1].items() if k not in varying} == {
        k: v for k, v in by_app[1].items() if k not in varying
    }
    assert "x-total-time" in at_protocol[1] and "x-total-time" in by_app[1]
    assert at_protocol[1]["retry-after"] == "1"
    assert next_answer[0] == 200 and next_answer[2] == b'{"status":"live"}'
    assert not app_saw_it  # answered before h11, routing or the app
    route = "/v1/embed" if path == "/v1/embed" else "/v2/models/{name}/infer"
    labels = {"transport": "http", "route": route, "code": "429"}
    assert metric_value(metrics, "mhaserve_requests_total", labels) == 2
    assert metric_value(metrics, "mhaserve_errors_total", {"type": "overloaded"}) == 2


def test_what_arrives_together_is_let_through_only_as_far_as_the_queue_has_room():
    """Five requests of five tokens at once, with 10 tokens of room: each let through reserves its
    tokens before the app parses it, so the edge refuses the three that cannot fit, at once."""

    async def scenario():
        async with served(inference_workers=1, max_queue_tokens=10) as srv:
            blocker = asyncio.create_task(exchange(srv, request("/v1/embed", {"inputs": "the man"})))
            await asyncio.sleep(0.2)
            connections = [await srv.connect() for _ in range(5)]
            for _, writer in connections:
                writer.write(request("/v1/embed", {"inputs": "the man is"}))
            answers = [await read_response(reader) for reader, _ in connections]
            for _, writer in connections:
                writer.close()
            await blocker
            return answers, list(srv.seen), srv.engine.capacity.reserved_tokens

    answers, seen, reserved = asyncio.run(scenario())
    assert sorted(status for status, _, _ in answers) == [200, 200, 429, 429, 429]
    assert seen.count("POST /v1/embed") == 3  # the blocker and the two that fit
    assert reserved == 0  # every ticket was handed to the engine or released


def test_a_request_the_app_turns_down_gives_its_ticket_back():
    async def scenario():
        async with served() as srv:
            bad = await exchange(srv, request("/v1/embed", {"inputs": "the man", "pooling": "no-such-mode"}))
            return bad, srv.engine.capacity.reserved_tokens

    (status, _, body), reserved = asyncio.run(scenario())
    assert status == 422 and b"pooling" in body
    assert reserved == 0


LIMITS = (16384, 1_000_000)
PLAIN = b'POST /v1/embed HTTP/1.1\r\nhost: x\r\ncontent-length: 13\r\n\r\n{"inputs":1}\n'


@pytest.mark.parametrize(
    "data",
    [
        PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0"),
        PLAIN + PLAIN,  # pipelined
        PLAIN[:-3],  # the body still on its way
        PLAIN.replace(b"13", b"12"),
        PLAIN.replace(b"host: x\r\n", b"content-length: 13\r\n"),  # twice
        PLAIN.replace(b"host: x", b"transfer-encoding: chunked"),
        PLAIN.replace(b"host: x", b"expect: 100-continue"),
        PLAIN.replace(b"host: x", b"connection: close"),
        PLAIN.replace(b"host: x", b"upgrade: websocket"),
        PLAIN.replace(b"host: x", b"host : x"),
        PLAIN.replace(b"host: x\r\n", b"host: x\r\n folded\r\n"),
        PLAIN.replace(b"/v1/embed", b"/v1/%65mbed"),
        PLAIN.replace(b"/v1/embed", b"/v1/tokenize"),
        PLAIN.replace(b"POST", b"PUT"),
    ],
)
def test_only_a_whole_plain_request_to_a_data_route_is_decided_before_h11(data):
    assert plain_request(data, *LIMITS) is None


def test_a_plain_request_gives_its_route_path_and_body():
    keep_alive = PLAIN.replace(b"host: x", b"Connection: Keep-Alive")
    for data in (PLAIN, keep_alive, PLAIN.replace(b"/v1/embed", b"/v1/embed?x=1")):
        route, path, body = plain_request(data, *LIMITS)
        assert (route.path, path, body) == ("/v1/embed", "/v1/embed", b'{"inputs":1}\n')
    kserve = plain_request(PLAIN.replace(b"/v1/embed", b"/v2/models/m/versions/2/infer"), *LIMITS)
    assert kserve.route.model == "m" and kserve.route.path == "/v2/models/{name}/versions/{version}/infer"
    assert plain_request(PLAIN, 16384, 12) is None  # over max_request_bytes: the app answers the 413


def test_requests_uvicorn_answers_itself_past_the_connection_limit_give_their_tickets_back():
    """Past --http-max-connections uvicorn answers 503 without calling the app, and a client may
    go away before its request reaches the app: the connection releases the ticket either way.
    Before it did, each such request kept its room forever, and the server refused everything."""

    async def scenario():
        async with served(http_max_connections=2, max_queue_tokens=200) as srv:
            connections = [await srv.connect() for _ in range(4)]
            for _, writer in connections:
                writer.write(request("/v1/embed", {"inputs": "the man is"}))
            answers = [await read_response(reader) for reader, _ in connections[2:]]
            for _, writer in connections:
                writer.close()
            gone = []
            for _ in range(30):  # whole requests, decided at the protocol, whose clients leave at once
                reader, writer = await srv.connect()
                writer.write(request("/v1/embed", {"inputs": "the man is"}))
                writer.close()
                gone.append(writer)
            await asyncio.sleep(2.5)  # the fake backend computes what was let through in a second each
            capacity = srv.engine.capacity
            after = await exchange(srv, request("/v1/embed", {"inputs": "the man"}))
            metrics = (await exchange(srv, b"GET /metrics HTTP/1.1\r\nhost: edge\r\n\r\n"))[2].decode()
            return answers, capacity.reserved_tokens, capacity.tickets, after, metrics

    answers, reserved, tickets, after, metrics = asyncio.run(scenario())
    assert [status for status, _, _ in answers] == [503, 503]
    assert reserved == 0 and tickets == 0
    assert after[0] == 200
    assert metric_value(metrics, "mhaserve_reserved_tokens", {"model": "fake"}) == 0
    assert metric_value(metrics, "mhaserve_reservations", {"model": "fake"}) == 0


def test_readiness_turns_503_and_says_why_when_the_server_refuses_with_an_empty_queue():
    async def scenario():
        async with served(max_queue_tokens=96) as srv:
            ready = await exchange(srv, b"GET /health/ready HTTP/1.1\r\nhost: edge\r\n\r\n")
            leaked = [srv.engine.try_admit(["word " * 10]) for _ in range(8)]  # all the room, held by nothing
            refused = await exchange(srv, request("/v1/embed", {"inputs": "the man"}))
            capacity = srv.engine.capacity
            start = capacity.clock()
            capacity.clock = lambda: start + STUCK_AFTER_S + 1  # a few seconds later
            stuck = await exchange(srv, b"GET /health/ready HTTP/1.1\r\nhost: edge\r\n\r\n")
            metrics = (await exchange(srv, b"GET /metrics HTTP/1.1\r\nhost: edge\r\n\r\n"))[2].decode()
            for ticket in leaked:
                ticket.release()
            recovered = await exchange(srv, b"GET /health/ready HTTP/1.1\r\nhost: edge\r\n\r\n")
            return ready, refused, stuck, metrics, recovered

    ready, refused, stuck, metrics, recovered = asyncio.run(scenario())
    assert ready[0] == 200 and refused[0] == 429
    assert stuck[0] == 503
    body = orjson.loads(stuck[2])
    assert body["status"] == "stuck"
    assert "refusing with an empty queue" in body["reason"] and "96 tokens held by 8 tickets" in body["reason"]
    assert metric_value(metrics, "mhaserve_reserved_tokens", {"model": "fake"}) == 96
    assert metric_value(metrics, "mhaserve_reservations", {"model": "fake"}) == 8
    assert recovered[0] == 200


def test_the_uvicorn_installed_is_one_the_protocol_edge_is_tested_on_and_has_what_it_reads():
    """GuardedH11Protocol reads uvicorn's H11Protocol internals: another uvicorn fails here, loudly,
    before it can fail in production."""
    import uvicorn

    from service.http.protocol import TESTED_UVICORN, UVICORN_INTERNALS

    assert uvicorn.__version__ in TESTED_UVICORN, (
        f"uvicorn {uvicorn.__version__} is not one the protocol edge is tested on ({TESTED_UVICORN}): "
        "check service/http/protocol.py against its H11Protocol, then add the version"
    )

    async def scenario():
        async with served() as srv:
            reader, writer = await srv.connect()
            writer.write(b"GET /health/live HTTP/1.1\r\nhost: edge\r\n\r\n")
            await read_response(reader)  # a keep-alive connection, still open
            protocols = list(srv.server.server_state.connections)
            writer.close()
            return protocols

    protocols = asyncio.run(scenario())
    assert protocols, "no live connection to inspect"
    for name in UVICORN_INTERNALS:
        assert all(hasattr(protocol, name) for protocol in protocols), f"H11Protocol has no {name!r}"


class RecordingTransport:
    """The little of asyncio.Transport that CoalescedWrites passes writes and closes on to."""

    def __init__(self):
        self.events: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.events.append(("write", data))

    def close(self) -> None:
        self.events.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.events.append(("abort", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default


def test_an_answers_head_leaves_with_its_body_and_what_is_held_leaves_by_the_end_of_the_turn():
    from service.http.protocol import CoalescedWrites

    head, body = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n", b"{}"

    async def scenario() -> list[list[tuple[str, bytes]]]:
        seen = []
        loop = asyncio.get_running_loop()
        raw = RecordingTransport()
        transport = CoalescedWrites(raw, loop)  # type: ignore[arg-type]
        transport.write(head)
        transport.write(b"")
        seen.append(list(raw.events))  # the head is held
        assert transport.get_write_buffer_size() == len(head)
        transport.write(bytearray(body))
        seen.append(list(raw.events))  # and leaves with the body, at once
        transport.write(b"alone")
        await asyncio.sleep(0)
        seen.append(list(raw.events))  # a lone write leaves when the turn is over
        transport.write(b"last")
        transport.close()
        seen.append(list(raw.events))  # a close sends what is held first
        await asyncio.sleep(0)
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's
        dropped = RecordingTransport()
        transport = CoalescedWrites(dropped, loop)  # type: ignore[arg-type]
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0)
        seen.append(list(dropped.events))
        return seen

    held, together, alone, closed, aborted = asyncio.run(scenario())
    answer = ("write", head + body)
    assert held == []
    assert together == [answer]
    assert alone == [answer, ("write", b"alone")]
    assert closed == [answer, ("write", b"alone"), ("write", b"last"), ("close", b"")]
    assert aborted == [("abort", b"")]
