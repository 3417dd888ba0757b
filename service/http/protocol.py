"""uvicorn for the REST app: a guarded h11 protocol, the server config, and port discovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import NamedTuple

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Settings
from service.core.capacity import Ticket
from service.core.models import Models
from service.errors import MhaserveError, Overloaded
from service.http.data_routes import DataRoute, data_route
from service.http.edge import TICKET, admit_at_edge, error_body, error_headers
from service.types import total_time

log = logging.getLogger("mhaserve")

# GuardedH11Protocol extends uvicorn's H11Protocol and reads its internals (UVICORN_INTERNALS):
# the uvicorn releases it is tested on. pyproject.toml pins this one; the test of this module
# fails on any other, so an upgrade is a decision with its tests run, not an accident.
TESTED_UVICORN = ("0.54.0",)
UVICORN_INTERNALS = (
    "conn",  # the h11.Connection: their_state, our_state, trailing_data
    "cycle",  # the request's RequestResponseCycle: its scope carries the ticket
    "server_state",  # default_headers, total_requests
    "config",  # h11_max_incomplete_event_size
    "loop",
    "transport",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
    "timeout_keep_alive_handler",
    "_unset_keepalive_if_required",
    "on_response_complete",  # called for every complete answer, uvicorn's own 503 included
)


CONNECTION_CLOSE = (b"connection", b"close")


class HttpServer(uvicorn.Server):
    closing_connections = False

    def close_connections_after_answers(self) -> None:
        """From now on every answer says `Connection: close` and its connection closes after it:
        keep-alive clients, and balancers' pooled connections, reconnect, and a balancer sends
        the next request to a replica still in rotation."""
        self.closing_connections = True
        self._add_close_header()

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)  # rebuilds the default headers once a second
        if self.closing_connections:
            self._add_close_header()
        return should_exit

    def _add_close_header(self) -> None:
        headers = self.server_state.default_headers
        if CONNECTION_CLOSE not in headers:
            self.server_state.default_headers = [*headers, CONNECTION_CLOSE]

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The process's signals belong to serve(), which stops both servers; uvicorn's own
        # handler would stop only itself and re-raise the signal afterwards (exit 143).
        yield

    @property
    def port(self) -> int:
        return self.servers[0].sockets[0].getsockname()[1]


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus deadlines for a request head and body and for a stalled reader.

    uvicorn times out idle keep-alive connections only after a response, and any byte
    cancels that timer: a client that opens a connection and trickles its headers
    (slowloris) would hold it forever. Here a connection waiting for a request head (new,
    or after its last response) is closed if the whole head has not arrived in time, and
    one whose body has not all arrived body_timeout_s after its head (a slow POST) too. And
    a client that stops reading its answer keeps a connection, a task and the unsent bytes
    for as long as it likes; here the connection is dropped once writing has been paused
    (the client's socket buffer full) for send_timeout_s.

    And the edge decides on a data route's request here, before h11 parses it: under a flood
    most requests are refused, each for the price of one write (refuse_at_once), and each let
    through holds a ticket in its model's queue until the engine takes it. The connection holds
    the ticket too, and releases it when the request's answer is complete or the connection is
    lost: uvicorn may answer a request without calling the app (503 past --http-max-connections),
    and a task may end before the app runs, so no release inside the app can be the only one.
    """

    head_timeout_s = 10.0  # all set per server by http_protocol()
    body_timeout_s = 30.0
    send_timeout_s = 30.0
    models: Models | None = None  # the edge's decisions at the protocol: see data_received()
    max_request_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._ticket: Ticket | None = None  # the current request's, when decided here
        super().connection_made(transport)
        self.transport = CoalescedWrites(transport, self.loop)  # type: ignore[assignment]
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        request = self.whole_plain_request(data)
        decision = None if request is None else admit_at_edge(self.models, request.route, request.body)  # type: ignore[arg-type]
        if isinstance(decision, Overloaded):
            return self.refuse_at_once(decision, request)  # type: ignore[arg-type]
        cycle = self.cycle
        try:
            super().data_received(data)
        finally:
            if decision is not None:
                self._hold(decision, None if self.cycle is cycle else self.cycle.scope)
        if self.conn.their_state is not h11.IDLE:  # the request head has arrived
            self._head_timer = cancel(self._head_timer)
        if self.conn.their_state is h11.SEND_BODY:  # and its body is still on the way
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
        else:
            self._body_timer = cancel(self._body_timer)

    def whole_plain_request(self, data: bytes) -> PlainRequest | None:
        """The request in `data`, for the edge to decide on before h11 sees it: only a whole,
        plain request (see plain_request) in one chunk on an idle keep-alive connection, and
        only when the server has models. Anything else takes the full path, where `Intake`
        decides the same way."""
        if self.models is None or not data.startswith(b"POST "):
            return None
        conn = self.conn
        if conn.their_state is not h11.IDLE or conn.our_state is not h11.IDLE or conn.trailing_data[0]:
            return None
        return plain_request(data, self.config.h11_max_incomplete_event_size, self.max_request_bytes)

    def refuse_at_once(self, refusal: Overloaded, request: PlainRequest) -> None:
        """Answers the refusal without h11, routing or the app: a flood's refusals cost a split of
        the request head, an orjson peek at its body and one write. h11 never saw the request,
        so the connection stays idle for the next one."""
        started = time.perf_counter()
        self._unset_keepalive_if_required()
        headers = [*self.server_state.default_headers, total_header(started)]
        self.transport.write(response_bytes(refusal, request.path, headers))
        self.server_state.total_requests += 1
        metrics = self.models.metrics
        metrics.observe_error(refusal)
        metrics.observe_request("http", request.route.path, str(refusal.http_status), time.perf_counter() - started)
        if CONNECTION_CLOSE in headers:  # the server is leaving: HttpServer.close_connections_after_answers
            self.transport.close()
            return
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._arm_head_timer()  # waiting for the next request head, as after any response

    def _hold(self, ticket: Ticket, scope: dict | None) -> None:
        """The ticket travels with the request it was made for (the engine takes it over from the
        scope) and stays with the connection until that request is answered (see the class)."""
        if scope is None:  # h11 turned the request down (a 400): it reaches no app
            ticket.release()
            return
        scope[TICKET] = ticket
        self._ticket = ticket

    def _release_ticket(self) -> None:
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None

    def on_response_complete(self) -> None:
        self._release_ticket()
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()  # waiting for the next request head

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._send_timer = cancel(self._send_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_timer = cancel(self._head_timer)
        self._body_timer = cancel(self._body_timer)
        self._send_timer = cancel(self._send_timer)
        self._release_ticket()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        cancel(self._head_timer)
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("closing a connection whose request head did not arrive in %.1f s", self.head_timeout_s)
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            log.debug("closing a connection whose request body did not arrive in %.1f s", self.body_timeout_s)
            self.transport.abort()  # the request's handler sees a disconnect; nothing is answered

    def _send_timed_out(self) -> None:
        self._send_timer = None
        log.debug("dropping a connection whose client read nothing for %.1f s", self.send_timeout_s)
        self.transport.abort()  # close() would wait to flush what the client does not read


class CoalescedWrites:
    """A connection's transport whose writes within one turn of the event loop leave as one.

    uvicorn writes an answer's head and its body separately, and each write is a send(2) the
    moment it is made; a send is the dearest step of a small answer, and two make the client read
    twice. Here a write is held until the next one, and the two leave together: an answer's head
    goes out with its body. What is still held when the turn is over, or when the connection
    closes, is sent then. Everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._pending.append(bytes(data))
        if len(self._pending) == 1:
            self._loop.call_soon(self._flush)  # held: an answer's body follows its head
        else:
            self._flush()

    def writelines(self, chunks) -> None:  # type: ignore[no-untyped-def]
        for chunk in chunks:
            self.write(chunk)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending = []
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._transport, name)


NOT_PLAIN = (b"transfer-encoding", b"expect", b"upgrade", b"connection")  # but Connection: keep-alive is plain


class PlainRequest(NamedTuple):
    route: DataRoute
    path: str
    body: bytes


def plain_request(data: bytes, max_head_bytes: int, max_body_bytes: int) -> PlainRequest | None:
    """`data` as exactly one whole HTTP/1.1 POST to a data route, with a Content-Length body and
    no Transfer-Encoding, Expect, Upgrade or Connection header (but keep-alive); None for
    anything else, which h11 then reads."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > max_head_bytes:
        return None
    request_line, *header_lines = data[:end].split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return None
    raw_path = parts[1].partition(b"?")[0]
    if not raw_path.isascii() or b"%" in raw_path:
        return None
    path = raw_path.decode("ascii")
    route = data_route(path)
    if route is None:
        return None
    length = None
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            return None  # obsolete folding, a space before the colon: h11 says what is wrong
        name, value = name.lower(), value.strip()
        if name in NOT_PLAIN and not (name == b"connection" and value.lower() == b"keep-alive"):
            return None
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
    if length is None or length > max_body_bytes or len(data) != end + 4 + length:
        return None
    return PlainRequest(route, path, data[end + 4 :])


def response_bytes(error: MhaserveError, path: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """The error's whole HTTP/1.1 answer, as the app would give it: same status, headers and body."""
    status = error.http_status
    body = error_body(error, path)
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in default_headers]
    lines += [b"content-type: application/json", b"content-length: " + str(len(body)).encode()]
    lines += [f"{name.lower()}: {value}".encode("latin-1") for name, value in error_headers(error).items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def total_header(started: float) -> tuple[bytes, bytes]:
    name, value = total_time(time.perf_counter() - started)
    return name.encode(), value.encode()


def cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def http_protocol(settings: Settings, models: Models | None = None) -> type[H11Protocol]:
    if uvicorn.__version__ not in TESTED_UVICORN:
        log.warning(
            "uvicorn %s: the REST protocol edge is tested on uvicorn %s only", uvicorn.__version__, TESTED_UVICORN
        )
    per_server = {
        "head_timeout_s": settings.http_header_timeout_s,
        "body_timeout_s": settings.http_body_timeout_s,
        "send_timeout_s": settings.http_send_timeout_s,
        "models": models,
        "max_request_bytes": settings.max_request_bytes,
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), per_server)


def http_config(app: object, settings: Settings, models: Models | None = None) -> uvicorn.Config:
    tls = {}
    if settings.tls_cert is not None:
        tls = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=http_protocol(settings, models),
        timeout_keep_alive=settings.http_keepalive_timeout_s,  # type: ignore[arg-type]
        limit_concurrency=settings.http_max_connections,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        # connections still open when the drain is over get this long to finish sending
        timeout_graceful_shutdown=5,
        **tls,  # type: ignore[arg-type]
    )
