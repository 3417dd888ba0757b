"""A minimal gRPC client for unary calls: HTTP/2 frames written by hand, one connection.

grpcio's own client costs about 300-400 µs of CPU per call on a 2-core machine, as much as
the server's refusal of that call; in a flood that shares the server's cores it takes
0.4 of them, and the test then measures the client as much as the server (RawHttp stands
in for httpx for the same reason). This client sends a constant header block (HPACK
literals, no dynamic table) and a length-prefixed message per call, and decodes only what
the server sends back (with `hpack`). It is for load, not for checking the protocol: the
tests that check gRPC behaviour use generated stubs over grpcio.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from dataclasses import dataclass

import grpc
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 0x2, 0x4
DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
MAX_MESSAGE = 16384 - 5  # one DATA frame at HTTP/2's smallest maximum frame size, less the gRPC prefix


@dataclass
class Reply:
    code: int  # the grpc-status: 0 OK, 8 RESOURCE_EXHAUSTED, ...
    message: str  # grpc-message, decoded
    payload: bytes | None  # the response message's bytes (OK only)
    trailers: dict[str, str]

    @property
    def status(self) -> grpc.StatusCode:
        return STATUS_CODES[self.code]


STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


class NotProcessed(ConnectionError):
    """The server's GOAWAY says it never saw this stream: safe to send again."""


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def hpack_int(value: int, prefix_bits: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out, value = [limit], value - limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    return bytes((*out, value))


def literal(name: bytes, value: bytes) -> bytes:
    """A header field without indexing, name and value as plain strings (RFC 7541, 6.2.2)."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


class _Stream:
    __slots__ = ("block", "data", "future", "headers", "started")

    def __init__(self, future: asyncio.Future, started: float):
        self.future, self.started = future, started
        self.headers: list[tuple[str, str]] | None = None
        self.data = bytearray()
        self.block = b""  # a header block waiting for its CONTINUATION frames


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.streams: dict[int, _Stream] = {}
        self.decoder = hpack.Decoder()
        self.next_stream = 1
        self.send_window = DEFAULT_WINDOW
        self.blocked: list[bytes] = []  # DATA frames waiting for the server's WINDOW_UPDATE
        self.going_away = False
        self.lost = asyncio.get_running_loop().create_future()

    # writing ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = SETTINGS_ENABLE_PUSH.to_bytes(2, "big") + (0).to_bytes(4, "big")
        settings += SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + MAX_WINDOW.to_bytes(4, "big")
        grow = (MAX_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")  # the connection's window, once: 2 GiB
        self.transport.write(PREFACE + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, grow))

    def start(self, header_block: bytes, message: bytes, future: asyncio.Future) -> None:
        stream = self.next_stream
        self.next_stream += 2
        self.streams[stream] = _Stream(future, time.monotonic())
        data = frame(DATA, END_STREAM, stream, b"\x00" + len(message).to_bytes(4, "big") + message)
        head = frame(HEADERS, END_HEADERS, stream, header_block)
        if self.blocked or len(data) - 9 > self.send_window:
            self.transport.write(head)
            self.blocked.append(data)
        else:
            self.send_window -= len(data) - 9
            self.transport.write(head + data)

    def _unblock(self) -> None:
        while self.blocked and len(self.blocked[0]) - 9 <= self.send_window:
            data = self.blocked.pop(0)
            self.send_window -= len(data) - 9
            self.transport.write(data)

    # reading ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        at, end = 0, len(buffer)
        while end - at >= 9:
            length = int.from_bytes(buffer[at : at + 3], "big")
            if end - at - 9 < length:
                break
            kind, flags = buffer[at + 3], buffer[at + 4]
            stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
            self._frame(kind, flags, stream, bytes(buffer[at + 9 : at + 9 + length]))
            at += 9 + length
        del buffer[:at]

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == DATA:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.data += unpadded(payload, flags)
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                payload = unpadded(payload, flags)
                if flags & PRIORITY:
                    payload = payload[5:]
            stream = self.streams.get(stream_id)
            block = (stream.block if stream is not None else b"") + payload
            if not flags & END_HEADERS:
                if stream is not None:
                    stream.block = block
                return
            headers = self.decoder.decode(block)  # every block, to keep the decoder's table in step
            if stream is None:
                return
            stream.block = b""
            if stream.headers is None and not flags & END_STREAM:
                stream.headers = headers
            else:
                self._finish(stream_id, headers)
        elif kind == SETTINGS:
            if not flags & ACK:
                self.transport.write(frame(SETTINGS, ACK, 0, b""))
        elif kind == WINDOW_UPDATE:
            if stream_id == 0:
                self.send_window += int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                self._unblock()
        elif kind == PING:
            if not flags & ACK:
                self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream = self.streams.pop(stream_id, None)
            if stream is not None and not stream.future.done():
                code = int.from_bytes(payload[:4], "big")
                stream.future.set_exception(ConnectionResetError(f"the server reset the stream (HTTP/2 error {code})"))
        elif kind == GOAWAY:
            self.going_away = True
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            for stream_id in [s for s in self.streams if s > last]:
                stream = self.streams.pop(stream_id)
                if not stream.future.done():
                    stream.future.set_exception(NotProcessed("GOAWAY before the server saw the call"))

    def _finish(self, stream_id: int, trailers: list[tuple[str, str]]) -> None:
        stream = self.streams.pop(stream_id)
        if stream.future.done():  # the caller gave up
            return
        fields = dict(trailers)
        if "grpc-status" not in fields:
            stream.future.set_exception(ConnectionResetError(f"a response without grpc-status: {fields}"))
            return
        code, data, payload = int(fields["grpc-status"]), stream.data, None
        if code == 0 and len(data) >= 5:  # grpcio sends an empty message with some errors: ignored, as its client does
            payload = bytes(data[5 : 5 + int.from_bytes(data[1:5], "big")])
        stream.future.set_result(Reply(code, urllib.parse.unquote(fields.get("grpc-message", "")), payload, fields))

    def connection_lost(self, exc: Exception | None) -> None:
        self.going_away = True
        for stream in self.streams.values():
            if not stream.future.done():
                stream.future.set_exception(ConnectionResetError(f"the connection closed ({exc})"))
        self.streams.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    def give_up_older_than(self, started: float) -> None:
        for stream_id in [s for s, stream in self.streams.items() if stream.started < started]:
            stream = self.streams.pop(stream_id)
            if not stream.future.done():
                stream.future.set_exception(TimeoutError("no answer within the client's patience"))


def unpadded(payload: bytes, flags: int) -> bytes:
    if flags & PADDED:
        return payload[1 : len(payload) - payload[0]]
    return payload


class RawGrpc:
    """Unary calls on one HTTP/2 connection (a new one after GOAWAY). A call that gets no answer
    within patience_s raises TimeoutError; a refused one returns its Reply, as an OK one does."""

    def __init__(self, host: str, port: int, *, timeout_s: float, patience_s: float):
        self.host, self.port, self.patience_s = host, port, patience_s
        self.timeout_header = f"{max(1, int(timeout_s * 1000))}m".encode()
        self.connection: _Connection | None = None  # new calls go here; older ones finish their streams
        self.connections: set[_Connection] = set()
        self.connections_opened = 0
        self._connecting: asyncio.Task | None = None
        self._blocks: dict[str, bytes] = {}
        self._sweeper: asyncio.Task | None = None

    def _block(self, path: str) -> bytes:
        block = self._blocks.get(path)
        if block is None:
            block = b"\x83\x86" + b"".join(  # :method POST and :scheme http, from the static table
                literal(name, value)
                for name, value in (
                    (b":path", path.encode()),
                    (b":authority", f"{self.host}:{self.port}".encode()),
                    (b"content-type", b"application/grpc"),
                    (b"te", b"trailers"),
                    (b"grpc-timeout", self.timeout_header),
                )
            )
            self._blocks[path] = block
        return block

    async def _connected(self) -> _Connection:
        if self.connection is not None and not self.connection.going_away:
            return self.connection
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self.host, self.port)
        self.connection = connection
        self.connections.add(connection)
        self.connections_opened += 1
        connection.lost.add_done_callback(lambda _: self.connections.discard(connection))
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        return connection

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for connection in list(self.connections):
                connection.give_up_older_than(time.monotonic() - self.patience_s)

    async def unary(self, path: str, message: bytes) -> Reply:
        if len(message) > MAX_MESSAGE:
            size = len(message)
            raise ValueError(f"RawGrpc sends a message in one DATA frame: at most {MAX_MESSAGE} bytes, not {size}")
        for attempt in (1, 2):
            connection = await self._connected()
            future = asyncio.get_running_loop().create_future()
            connection.start(self._block(path), message, future)
            try:
                return await future
            except NotProcessed:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.transport.close()
            await connection.lost
