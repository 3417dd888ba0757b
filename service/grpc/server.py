"""The gRPC server: mhaserve.v1.Encoder, KServe v2, health and reflection on one grpc.aio server.

`create_server` binds (port 0 picks a free one) and starts it; the standard health service
follows the engine's readiness. Health and reflection are open; every other method's key
rule is in its servicer's RPCS table.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from service.auth import ApiKeys
from service.config import Settings
from service.core.models import Models
from service.grpc import encoder
from service.grpc.edge import Edge
from service.kserve import grpc as kserve

HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_NAMES = ("", encoder.SERVICE, kserve.SERVICE)  # the whole server, and each service
READINESS_POLL_S = 0.25
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcServer:
    """The running server; health follows every model's readiness until told otherwise."""

    def __init__(self, server: grpc.aio.Server, port: int, models: Models, health_servicer: health.aio.HealthServicer):
        self.server, self.port, self.models = server, port, models
        self._health = health_servicer
        self._held_not_serving = False
        self._changed = asyncio.Event()
        self._follower = asyncio.create_task(self._follow_readiness(), name="grpc-health")

    def set_not_serving(self) -> None:
        """Health turns NOT_SERVING now and stays so (shutting down), whatever the models say."""
        self._held_not_serving = True
        self._changed.set()

    def set_serving(self) -> None:
        """Health is SERVING again whenever every model is ready."""
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
            serving = self.models.ready and not self._held_not_serving
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


async def create_server(settings: Settings, models: Models, keys: ApiKeys) -> GrpcServer:
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
    edge = Edge(keys, models)
    server.add_generic_rpc_handlers(
        (
            edge.service_handler(encoder.SERVICE, encoder.EncoderServicer(models)),
            edge.service_handler(kserve.SERVICE, kserve.KServeServicer(models)),
        )
    )
    health_servicer = health.aio.HealthServicer()
    for service in HEALTH_NAMES:
        await health_servicer.set(service, NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (encoder.SERVICE, kserve.SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server
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
    return GrpcServer(server, port, models, health_servicer)
