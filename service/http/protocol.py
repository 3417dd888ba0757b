"""uvicorn for the REST app: a guarded h11 protocol, the server config, and port discovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.config import Settings

log = logging.getLogger("mhaserve")


class HttpServer(uvicorn.Server):
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
    """

    head_timeout_s = 10.0  # all set per server by http_protocol()
    body_timeout_s = 30.0
    send_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request head has arrived
            self._head_timer = cancel(self._head_timer)
        if self.conn.their_state is h11.SEND_BODY:  # and its body is still on the way
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_timed_out)
        else:
            self._body_timer = cancel(self._body_timer)

    def on_response_complete(self) -> None:
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


def cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def http_protocol(settings: Settings) -> type[H11Protocol]:
    timeouts = {
        "head_timeout_s": settings.http_header_timeout_s,
        "body_timeout_s": settings.http_body_timeout_s,
        "send_timeout_s": settings.http_send_timeout_s,
    }
    return type("GuardedH11Protocol", (GuardedH11Protocol,), timeouts)


def http_config(app: object, settings: Settings) -> uvicorn.Config:
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
        http=http_protocol(settings),
        timeout_keep_alive=settings.http_keepalive_timeout_s,  # type: ignore[arg-type]
        limit_concurrency=settings.http_max_connections,
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        # connections still open when the drain is over get this long to finish sending
        timeout_graceful_shutdown=5,
        **tls,  # type: ignore[arg-type]
    )
