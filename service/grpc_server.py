"""The gRPC server: mhaserve.v1.Encoder, KServe v2, health and reflection on one grpc.aio server.

Servicers only translate: bytes -> proto -> EmbedRequest -> `await engine.embed` -> proto.
Methods take raw request bytes and parse them here, because grpc-python answers bytes that
don't parse with UNKNOWN before any handler runs; a client that sends garbage should get
INVALID_ARGUMENT, like a REST client gets 422.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.mhaserve.v1 import encoder_pb2 as pb
from service.config import Settings
from service.errors import InvalidRequest, MhaserveError, NotReady
from service.kserve import KSERVE_SERVICE, kserve_grpc_methods
from service.pipeline import Engine
from service.types import AttentionSelection, EmbedRequest, EmbedResult, Token, TokenizeRequest

log = logging.getLogger(__name__)

ENCODER_SERVICE = "mhaserve.v1.Encoder"
HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_NAMES = ("", ENCODER_SERVICE, KSERVE_SERVICE)  # the whole server, and each service
ENCODER_METHODS = ("Embed", "EmbedStream", "Tokenize", "GetModelInfo")
KSERVE_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
POOLING = {pb.POOLING_UNSPECIFIED: None, pb.POOLING_MEAN: "mean", pb.POOLING_CLS: "cls"}
READINESS_POLL_S = 0.25
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING

Context = grpc.aio.ServicerContext


# translation ---------------------------------------------------------------------------


def parse(message_type: type[Message], raw: bytes) -> Any:
    message = message_type()
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:
        raise InvalidRequest(
            f"the request is not a valid {message_type.DESCRIPTOR.full_name} message ({exc})"
        ) from None
    return message


def embed_request(message: pb.EmbedRequest, timeout_s: float | None) -> EmbedRequest:
    if message.pooling not in POOLING:
        raise InvalidRequest(f"pooling {message.pooling} is not a known Pooling value: use POOLING_MEAN or POOLING_CLS")
    attention = None
    if message.HasField("attention"):
        attention = AttentionSelection(
            layers=tuple(message.attention.layers) or None,
            heads=tuple(message.attention.heads) or None,
        )
    return EmbedRequest(
        inputs=tuple(message.inputs),
        pooling=POOLING[message.pooling],
        normalize=message.normalize if message.HasField("normalize") else True,
        truncate=message.truncate if message.HasField("truncate") else True,
        return_tokens=message.return_tokens,
        return_token_embeddings=message.return_token_embeddings,
        attention=attention,
        timeout_s=timeout_s,
    )


def tensor(array: np.ndarray) -> pb.Tensor:
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=array.shape, data=data)


def token_lists(tokens: list[list[Token]]) -> list[pb.TokenList]:
    return [
        pb.TokenList(tokens=[pb.Token(id=t.id, text=t.text, start=t.start, end=t.end) for t in row]) for row in tokens
    ]


def embed_response(request_id: str, result: EmbedResult) -> pb.EmbedResponse:
    response = pb.EmbedResponse(
        id=request_id,
        model=result.model,
        # from Python floats: protobuf takes a list 6x faster than it walks a numpy array
        embeddings=[pb.Embedding(values=row) for row in result.embeddings.tolist()],
        usage=pb.Usage(tokens=result.usage_tokens),
    )
    if result.tokens is not None:
        response.tokens.extend(token_lists(result.tokens))
    if result.token_embeddings is not None:
        response.token_embeddings.extend(tensor(t) for t in result.token_embeddings)
    if result.attention is not None:
        response.attention.extend(tensor(a) for a in result.attention)
        response.attention_layers.extend(result.attention_layers)
        response.attention_heads.extend(result.attention_heads)
    return response


def stream_error(request_id: str, error: MhaserveError) -> pb.EmbedResponse:
    code = error.grpc_code
    return pb.EmbedResponse(
        id=request_id, error=pb.Error(code=code.value[0], code_name=code.name, message=error.message)
    )


def authorization(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


# the encoder service -------------------------------------------------------------------


class EncoderServicer:
    """mhaserve.v1.Encoder; the handler table below parses requests and checks keys first."""

    def __init__(self, engine: Engine):
        self.engine = engine

    async def Embed(self, message: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        request = embed_request(message, time_remaining(context))
        result = await self.engine.embed(request, is_disconnected=context.cancelled)
        return embed_response(message.id, result)

    async def EmbedStream(self, raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[pb.EmbedResponse]:
        """Answers each request as soon as it is computed; any number are in flight at once.

        A request that fails gets an answer carrying its error; the stream goes on.
        """
        answers: asyncio.Queue[pb.EmbedResponse | None] = asyncio.Queue()
        pending: set[asyncio.Task] = set()

        async def answer(raw: bytes) -> None:
            started, request_id = time.perf_counter(), ""
            try:
                message = parse(pb.EmbedRequest, raw)
                request_id = message.id
                request = embed_request(message, time_remaining(context))
                result = await self.engine.embed(request, is_disconnected=context.cancelled)
                response, code = embed_response(request_id, result), "OK"
            except MhaserveError as error:
                self.engine.metrics.observe_error(error)
                response, code = stream_error(request_id, error), error.grpc_code.name
            self.engine.metrics.observe_request("grpc", "EmbedStream", code, time.perf_counter() - started)
            await answers.put(response)

        async def read_all() -> None:
            try:
                async for raw in raws:
                    task = asyncio.create_task(answer(raw))
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
            await reader  # re-raises a failure of the request stream itself
        finally:
            reader.cancel()
            for task in list(pending):
                task.cancel()

    async def Tokenize(self, message: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        truncate = message.truncate if message.HasField("truncate") else True
        result = await self.engine.tokenize(TokenizeRequest(inputs=tuple(message.inputs), truncate=truncate))
        return pb.TokenizeResponse(model=result.model, tokens=token_lists(result.tokens))

    async def GetModelInfo(self, message: pb.GetModelInfoRequest, context: Context) -> pb.ModelInfo:
        info = self.engine.info
        if info is None:
            raise NotReady("the model is still loading; retry in a few seconds")
        return pb.ModelInfo(**dataclasses.asdict(info))


def serialize(message: Message) -> bytes:
    return message.SerializeToString()


def time_remaining(context: Context) -> float | None:
    """The client's deadline as the request's timeout; None when it set none."""
    remaining = context.time_remaining()
    return None if remaining is None else max(remaining, 1e-3)


# handlers: key check, parsing, error mapping and metrics, once for every method -------------

Method = Callable[[Any, Context], Awaitable[Message]]


def unary_handler(
    engine: Engine, name: str, method: Method, request_type: type[Message], needs_key: bool
) -> grpc.RpcMethodHandler:
    async def call(raw: bytes, context: Context) -> Message:
        started, code = time.perf_counter(), "OK"
        try:
            if needs_key:
                engine.keys.check(authorization(context))
            return await method(parse(request_type, raw), context)
        except MhaserveError as error:
            code = error.grpc_code.name
            engine.metrics.observe_error(error)
            await context.abort(error.grpc_code, error.message)
            raise  # abort() raises; never reached
        except asyncio.CancelledError:
            code = "CANCELLED"  # the client went away, or its deadline passed
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("%s failed", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"{name} failed inside the server; see its log")
            raise
        finally:
            engine.metrics.observe_request("grpc", name, code, time.perf_counter() - started)

    return grpc.unary_unary_rpc_method_handler(call, request_deserializer=None, response_serializer=serialize)


def embed_stream_handler(engine: Engine, servicer: EncoderServicer) -> grpc.RpcMethodHandler:
    """Per-request errors travel inside the stream; only a refused key ends the call."""

    async def call(raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Message]:
        try:
            engine.keys.check(authorization(context))
        except MhaserveError as error:
            engine.metrics.observe_error(error)
            engine.metrics.observe_request("grpc", "EmbedStream", error.grpc_code.name, 0.0)
            await context.abort(error.grpc_code, error.message)
        async for response in servicer.EmbedStream(raws, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(call, request_deserializer=None, response_serializer=serialize)


def encoder_handler(engine: Engine) -> grpc.GenericRpcHandler:
    servicer = EncoderServicer(engine)
    methods = {
        "Embed": (servicer.Embed, pb.EmbedRequest),
        "Tokenize": (servicer.Tokenize, pb.TokenizeRequest),
        "GetModelInfo": (servicer.GetModelInfo, pb.GetModelInfoRequest),
    }
    handlers = {name: unary_handler(engine, name, m, t, needs_key=True) for name, (m, t) in methods.items()}
    handlers["EmbedStream"] = embed_stream_handler(engine, servicer)
    return grpc.method_handlers_generic_handler(ENCODER_SERVICE, handlers)


def kserve_handler(engine: Engine) -> grpc.GenericRpcHandler:
    handlers = {
        name: unary_handler(engine, name, method, request_type, needs_key)
        for name, (method, request_type, needs_key) in kserve_grpc_methods(engine).items()
    }
    return grpc.method_handlers_generic_handler(KSERVE_SERVICE, handlers)


# the server ------------------------------------------------------------------------------


class GrpcServer:
    """The running server; health follows the engine's readiness until told otherwise."""

    def __init__(self, server: grpc.aio.Server, port: int, engine: Engine, health_servicer: health.aio.HealthServicer):
        self.server, self.port, self.engine = server, port, engine
        self._health = health_servicer
        self._held_not_serving = False
        self._changed = asyncio.Event()
        self._follower = asyncio.create_task(self._follow_readiness(), name="grpc-health")

    def set_not_serving(self) -> None:
        """Health turns NOT_SERVING now and stays so (shutting down), whatever the engine says."""
        self._held_not_serving = True
        self._changed.set()

    def set_serving(self) -> None:
        """Health is SERVING again whenever the engine is ready."""
        self._held_not_serving = False
        self._changed.set()

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; calls in progress get grace_s seconds to finish, then are cancelled."""
        self._follower.cancel()
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    async def _follow_readiness(self) -> None:
        # readiness changes inside the engine (model loaded, draining, batches failing); a
        # short poll keeps health.v1 in step without the engine knowing about gRPC
        shown = None
        while True:
            serving = self.engine.ready and not self._held_not_serving
            if serving != shown:
                for service in HEALTH_NAMES:
                    await self._health.set(service, SERVING if serving else NOT_SERVING)
                shown = serving
            try:
                await asyncio.wait_for(self._changed.wait(), READINESS_POLL_S)
            except TimeoutError:
                pass
            self._changed.clear()


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; with a client CA, only clients it signed get in (mTLS)."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def start_grpc_server(engine: Engine, settings: Settings) -> GrpcServer:
    """Binds settings.host:settings.grpc_port (0 picks a free port) and starts serving."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
            # GOAWAY after this age: clients reconnect and re-resolve, so a channel balancing
            # over a headless Service picks up replicas added since it connected
            ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.grpc_max_connection_age_grace_s * 1000)),
        ]
    )
    server.add_generic_rpc_handlers((encoder_handler(engine), kserve_handler(engine)))
    engine.metrics.declare_routes("grpc", [*ENCODER_METHODS, *KSERVE_METHODS])
    health_servicer = health.aio.HealthServicer()
    for service in HEALTH_NAMES:
        await health_servicer.set(service, NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (ENCODER_SERVICE, KSERVE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc raises on a port in use or a bad host
        raise OSError(f"the gRPC server could not bind {address}: {exc}") from None
    if port == 0:
        raise OSError(f"the gRPC server could not bind {address}")
    await server.start()
    return GrpcServer(server, port, engine, health_servicer)
