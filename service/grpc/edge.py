"""The gRPC edge, once for every method: key check, parsing, error -> status, metrics.

Methods take raw request bytes and parse them here, because grpc-python answers bytes that
don't parse with UNKNOWN before any handler runs; a client that sends garbage should get
INVALID_ARGUMENT, as a REST client gets 422. Each servicer lists its methods once, in its
RPCS table (name, request type, whether a key is needed); the handlers come from that table.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from service.auth import ApiKeys
from service.core.capacity import UNHELD
from service.core.models import Models
from service.errors import ERROR_TYPE_METADATA, InvalidRequest, MhaserveError
from service.types import total_time

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext


@dataclass(frozen=True)
class Rpc:
    name: str
    request_type: type[Message]
    needs_key: bool = True
    # for a method that queues work: the model and texts of a parsed request, which the edge
    # admits or refuses before the method runs (Models.try_admit); the method then takes the ticket
    admits: Callable[[Any], tuple[str | None, Sequence[str]]] | None = None
    # set for a stream-in, stream-out method: a request's error, as its answer in the stream
    stream_error: Callable[[Any, MhaserveError], Message] | None = None


class Servicer(Protocol):
    RPCS: tuple[Rpc, ...]


def parse(message_type: type[Message], raw: bytes) -> Any:
    message = message_type()
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:
        raise InvalidRequest(
            f"the request is not a valid {message_type.DESCRIPTOR.full_name} message ({exc})"
        ) from None
    return message


def authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


def time_remaining(context: Context) -> float | None:
    """The client's deadline as the request's timeout; None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining, 1e-3)


class Edge:
    def __init__(self, keys: ApiKeys, models: Models):
        self.keys, self.models, self.metrics = keys, models, models.metrics

    def service_handler(self, service: str, servicer: Servicer) -> grpc.GenericRpcHandler:
        handlers = {}
        for rpc in servicer.RPCS:
            method = getattr(servicer, rpc.name)
            handlers[rpc.name] = self._stream(rpc, method) if rpc.stream_error else self._unary(rpc, method)
        self.metrics.declare_routes("grpc", [rpc.name for rpc in servicer.RPCS])
        return grpc.method_handlers_generic_handler(service, handlers)

    async def abort(self, context: Context, error: MhaserveError) -> None:
        self.fail(context, error)
        await context.abort(error.grpc_code, error.message)

    def fail(self, context: Context, error: MhaserveError) -> None:
        """Sets the call's status for the handler to return instead of a message: cheaper than
        abort(), whose exception unwinds through grpc's call machinery (a flood's refusals)."""
        self.metrics.observe_error(error)
        context.set_trailing_metadata(((ERROR_TYPE_METADATA, error.type),))
        context.set_code(error.grpc_code)
        context.set_details(error.message)

    def _unary(self, rpc: Rpc, method: Callable[[Any, Context], Awaitable[Message]]) -> grpc.RpcMethodHandler:
        async def call(raw: bytes, context: Context) -> Message | None:
            started, code = time.perf_counter(), "OK"
            try:
                if rpc.needs_key:
                    self.keys.check(authorization(context))
                message = parse(rpc.request_type, raw)
                if rpc.admits is None:
                    return await method(message, context)
                return await self._admitted(rpc, method, message, context)
            except MhaserveError as error:
                code = error.grpc_code.name
                self.fail(context, error)
                return None  # grpc sends the status set (after an empty message, which clients ignore)
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away, or its deadline passed
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("%s failed", rpc.name)
                await context.abort(grpc.StatusCode.INTERNAL, f"{rpc.name} failed inside the server; see its log")
                raise
            finally:
                seconds = time.perf_counter() - started
                context.set_trailing_metadata((*(context.trailing_metadata() or ()), total_time(seconds)))
                self.metrics.observe_request("grpc", rpc.name, code, seconds)

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=None, response_serializer=serialize)

    async def _admitted(
        self, rpc: Rpc, method: Callable[..., Awaitable[Message]], message: Any, context: Context
    ) -> Message:
        """The edge's decision, as the REST edge makes it: a ticket for the request's expected tokens,
        which the method hands to the engine, or the refusal at once, before any validation. The
        ticket is released here too in case the method fails before the engine takes it over."""
        assert rpc.admits is not None
        model, texts = rpc.admits(message)
        if model and model not in self.models.engines:
            return await method(message, context, UNHELD)  # the method answers NOT_FOUND in its own words
        decision = self.models.try_admit(model or None, texts)
        if isinstance(decision, MhaserveError):
            raise decision
        try:
            return await method(message, context, decision)
        finally:
            decision.release()

    def _stream(self, rpc: Rpc, method: Callable[[Any, Context], Awaitable[Message]]) -> grpc.RpcMethodHandler:
        """Stream in, stream out: `method` answers one request, and each is answered as soon as it
        is computed, any number in flight at once, and counted as a unary call is. A request's error
        is its answer in the stream (rpc.stream_error) and the stream goes on; only a refused key
        or a failure inside the server ends the call."""

        async def answer(raw: bytes, context: Context) -> Message:
            started, code, message = time.perf_counter(), "OK", None
            try:
                message = parse(rpc.request_type, raw)
                return await method(message, context)
            except MhaserveError as error:
                code = error.grpc_code.name
                self.metrics.observe_error(error)
                return rpc.stream_error(message, error)
            except asyncio.CancelledError:
                code = "CANCELLED"  # the client went away, or its deadline passed
                raise
            except Exception:
                code = "INTERNAL"  # logged once, where it ends the call
                raise
            finally:
                self.metrics.observe_request("grpc", rpc.name, code, time.perf_counter() - started)

        async def call(raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Message]:
            if rpc.needs_key:
                try:
                    self.keys.check(authorization(context))
                except MhaserveError as error:
                    self.metrics.observe_request("grpc", rpc.name, error.grpc_code.name, 0.0)
                    await self.abort(context, error)
            answers: asyncio.Queue[Message | None] = asyncio.Queue()
            pending: set[asyncio.Task] = set()

            async def queue_answer(raw: bytes) -> None:
                await answers.put(await answer(raw, context))

            async def read_all() -> None:
                try:
                    async for raw in raws:
                        task = asyncio.create_task(queue_answer(raw))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    if pending:
                        await asyncio.gather(*pending)
                finally:
                    await answers.put(None)

            reader = asyncio.create_task(read_all())
            try:
                while (response := await answers.get()) is not None:
                    yield response
                await reader  # re-raises a failure of the request stream, or of a request
            except Exception:
                log.exception("%s failed", rpc.name)
                await context.abort(grpc.StatusCode.INTERNAL, f"{rpc.name} failed inside the server; see its log")
            finally:
                reader.cancel()
                for task in list(pending):
                    task.cancel()

        return grpc.stream_stream_rpc_method_handler(call, request_deserializer=None, response_serializer=serialize)
