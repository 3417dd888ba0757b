"""What a drain under load must show: shared by the SIGTERM tests (fast and slow)."""

from __future__ import annotations

import asyncio
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.reliability.load import CLOSED, Outcome
from tests.support.server import ServerProcess

GRACE_S = 15.0


async def health_until_stopped(server: ServerProcess, since: float) -> tuple[list[tuple[float, int | None]], float]:
    """gRPC health of the whole server every 50 ms until the process is gone: ((seconds, status)...),
    and the seconds from `since` to the moment the process was seen gone."""
    seen: list[tuple[float, int | None]] = []
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while server.process.poll() is None:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                seen.append((time.monotonic() - since, answer.status))
            except grpc.aio.AioRpcError:
                seen.append((time.monotonic() - since, None))  # stopped listening
            await asyncio.sleep(0.05)
    return seen, time.monotonic() - since


def check_drain(outcomes: list[Outcome], sigterm: float, health: list, exit_code: int, exit_s: float) -> None:
    for o in outcomes:
        assert o.status in ("200", "429", "503", CLOSED), (o.transport, o.status, o.detail)
        if o.status == "503":
            assert o.sent_at > sigterm - 0.5, "refused as not ready before the SIGTERM"
    late = [o for o in outcomes if o.sent_at > sigterm + 0.1]
    assert late and all(o.status in ("503", CLOSED) for o in late)  # nothing new is taken in
    assert any(o.status == "503" for o in late)  # and refused explicitly while draining
    answered_after = [o for o in outcomes if o.status == "200" and o.sent_at + o.seconds > sigterm]
    assert answered_after, "nothing was in flight at the SIGTERM: the test proved nothing"
    statuses = [status for seconds, status in health if seconds < 1.0 and status is not None]
    assert statuses and statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING, health[:10]
    assert exit_code == 0 and exit_s < GRACE_S
