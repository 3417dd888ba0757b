"""Promise 8: SIGTERM during a burst answers everything accepted, refuses the rest with 503 /
UNAVAILABLE, turns gRPC health NOT_SERVING and exits 0 within shutdown_grace_s; with
--shutdown-delay-s it first serves on, unready, for that long. After SIGKILL and a restart,
readiness turns true only once the model is loaded and warmed up."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.mhaserve.v1 import encoder_pb2 as pb
from tests.reliability.drain import GRACE_S, check_drain, health_until_stopped
from tests.reliability.load import Senders, measure_capacity, open_loop, summarise
from tests.support.server import ServerProcess, launch

# measures time or capacity against a bound: make test runs it after the rest, alone
pytestmark = pytest.mark.exclusive


def sigterm_during_burst(server: ServerProcess, capacity_s: float, burst_s: float, sigterm_at_s: float) -> tuple:
    async def scenario():
        senders = Senders(server, patience_s=GRACE_S + 30, grpc_timeout_s=GRACE_S + 20)
        try:
            capacity = await measure_capacity(senders, capacity_s)
            loop = asyncio.get_running_loop()
            burst = asyncio.create_task(open_loop(senders, 3 * capacity, burst_s))
            await asyncio.sleep(sigterm_at_s)
            server.signal(signal.SIGTERM)
            sigterm = time.monotonic()
            health = asyncio.create_task(health_until_stopped(server, sigterm))
            outcomes = await burst
            exit_code = await loop.run_in_executor(None, server.wait, GRACE_S + 10)
            seen, exit_s = await health
            return capacity, sigterm, outcomes, seen, exit_code, exit_s
        finally:
            await senders.close()

    return asyncio.run(scenario())


def test_sigterm_during_a_burst_answers_everything_accepted_and_exits_0(reference):
    server = launch("--max-queue-tokens", "3000", "--shutdown-grace-s", str(GRACE_S))
    try:
        capacity, sigterm, outcomes, health, exit_code, exit_s = sigterm_during_burst(server, 3, 5, 2.0)
    finally:
        server.stop()
    check_drain(outcomes, sigterm, health, exit_code, exit_s)
    summary = summarise("SIGTERM during a 3x burst (5 s)", outcomes, reference)
    assert summary.lost == 0 and summary.wrong == 0 and summary.server_errors == 0, summary.examples
    summary.notes = f"capacity {capacity:.0f} req/s; exit 0 after {exit_s:.1f} s"
    summary.record()


def test_after_sigkill_a_restart_is_ready_only_after_warm_up(start_server):
    first = start_server()
    ports = ("--http-port", str(first.http_port), "--grpc-port", str(first.grpc_port))

    async def in_flight() -> list[BaseException | httpx.Response]:
        async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
            calls = [client.post("/v1/embed", json={"inputs": [f"killed {i} " * 40]}) for i in range(20)]
            tasks = [asyncio.create_task(call) for call in calls]
            await asyncio.sleep(0.2)
            first.signal(signal.SIGKILL)
            return await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(in_flight())
    assert first.wait(timeout=10) == -signal.SIGKILL

    second = start_server(*ports, wait_ready=False)
    observed: list[tuple[int, str]] = []  # (REST readiness status, gRPC health)
    deadline = time.monotonic() + 90
    with grpc.insecure_channel(second.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert time.monotonic() < deadline, second.log()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                # gRPC health first: it follows readiness, so if REST still says loading after it,
                # gRPC must have said NOT_SERVING (the other order races the turn to ready)
                grpc_status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                ready = httpx.get(second.url + "/health/ready", timeout=5)
                embed = httpx.post(second.url + "/v1/embed", json={"inputs": ["too early?"]}, timeout=30)
                log = second.log()
                if ready.status_code == 200:
                    assert "warm-up took" in log and "ready: ModelInfo" in log
                    assert embed.status_code == 200
                    break
                assert ready.json()["status"] == "loading"
                assert grpc_status == health_pb2.HealthCheckResponse.NOT_SERVING
                assert embed.status_code in (200, 503), embed.text  # 200: it turned ready in between
                if embed.status_code == 503:
                    assert embed.json()["error"]["type"] == "not_ready"
                observed.append((ready.status_code, health_pb2.HealthCheckResponse.ServingStatus.Name(grpc_status)))
            time.sleep(0.02)
    assert observed and observed[0] == (503, "NOT_SERVING"), observed[:3]  # it was seen loading, not ready
    assert second.log().index("warm-up took") < second.log().index("ready: ModelInfo")


def test_sigterm_with_a_shutdown_delay_serves_on_unready_then_drains(start_fake_server):
    # a balancer polling readiness needs time to stop routing here: meanwhile requests are
    # answered, not refused, and each REST answer closes its connection
    delay_s = 2.0
    server = start_fake_server("--shutdown-delay-s", str(delay_s), "--shutdown-grace-s", "5")
    body = {"inputs": ["still served"]}
    with grpc.insecure_channel(server.grpc_target) as channel, httpx.Client(base_url=server.url, timeout=10) as rest:
        health = health_pb2_grpc.HealthStub(channel)
        embed = channel.unary_unary(
            "/mhaserve.v1.Encoder/Embed",
            request_serializer=pb.EmbedRequest.SerializeToString,
            response_deserializer=pb.EmbedResponse.FromString,
        )
        before = rest.post("/v1/embed", json=body)
        assert before.status_code == 200 and before.headers.get("connection") != "close"
        server.signal(signal.SIGTERM)
        sigterm = time.monotonic()
        time.sleep(0.3)
        seen = []
        while time.monotonic() < sigterm + delay_s - 0.3:
            ready = rest.get("/health/ready")
            answer = rest.post("/v1/embed", json=body)
            serving = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            rpc = embed(pb.EmbedRequest(inputs=["still served"]), timeout=5)
            seen.append(
                (ready.status_code, ready.json()["status"], answer.status_code, answer.headers.get("connection"))
            )
            assert serving == health_pb2.HealthCheckResponse.NOT_SERVING
            assert len(rpc.embeddings) == 1
            time.sleep(0.1)
        assert seen and set(seen) == {(503, "draining", 200, "close")}, seen[:5]
        time.sleep(sigterm + delay_s + 0.2 - time.monotonic())
        with contextlib.suppress(httpx.TransportError):  # or the port has closed already
            late = rest.post("/v1/embed", json=body)
            assert late.status_code == 503 and late.json()["error"]["type"] == "not_ready", late.text
    assert server.wait(timeout=10) == 0
    assert delay_s < time.monotonic() - sigterm < delay_s + 5
    assert "leaving rotation" in server.log()
