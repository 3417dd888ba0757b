"""Promise 5: a batch whose inference fails fails only its own requests (500 / INTERNAL with a clear
message, counted in mhaserve_errors_total); the server keeps serving and stays ready. A runtime that
keeps failing turns readiness false on every transport, so Kubernetes stops routing to the pod;
a probe batch then checks every --recovery-probe-s and makes it ready again once the runtime works.

Faults come from the documented testing-only setting --fault-inject-text, which wraps whatever
backend computes: the servers here run `--backend fake`, and the answers are checked against the
fake's."""

from __future__ import annotations

import asyncio
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.backends.fake import FAKE_SPEC
from tests.reliability.load import Senders, summarise
from tests.support.fake import assert_matches
from tests.support.http import scrape
from tests.support.prometheus import metric_value, samples
from tests.support.server import launch

FAULT = "please fail this batch"


@pytest.fixture
def faulty():
    # batches wait up to 300 ms for company, so one wave of requests shares a batch; the recovery
    # probe comes after the checks of the unready state
    server = launch(
        "--fault-inject-text", FAULT, "--max-wait-ms", "300", "--batch-wait", "always", "--recovery-probe-s", "8",
        model_dir=None,
    )  # fmt: skip
    yield server
    server.stop()


def failed_count(server) -> float:
    return metric_value(scrape(server), "mhaserve_errors_total", {"type": "inference_failed"})


def embed_requests(server) -> float:
    """Every /v1/embed request answered, whatever its code."""
    return sum(sample.value for sample in samples(scrape(server), "mhaserve_requests_total", {"route": "/v1/embed"}))


def grpc_health(server) -> int:
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


async def wave(server, texts: list[str]) -> list:
    senders = Senders(server, patience_s=60, grpc_timeout_s=30, model=FAKE_SPEC.name)
    try:
        return await asyncio.gather(
            *(senders.send(i, ("rest", "grpc", "kserve")[i % 3], t) for i, t in enumerate(texts))
        )
    finally:
        await senders.close()


def test_a_failing_batch_fails_only_its_requests_on_every_transport_and_the_server_stays_ready(faulty, fake_reference):
    before = failed_count(faulty)
    texts = [FAULT] * 3 + [f"an innocent bystander {i}" for i in range(9)]
    outcomes = asyncio.run(wave(faulty, texts))
    for outcome in outcomes[:3]:  # REST, gRPC and KServe each sent the fault text
        assert outcome.status == "500", (outcome.transport, outcome.status, outcome.detail)
        assert "injected fault" in outcome.detail and "other requests are unaffected" in outcome.detail
    for outcome in outcomes[3:]:  # in the failed batch (500, same message) or answered correctly
        assert outcome.status in ("200", "500"), (outcome.transport, outcome.status, outcome.detail)
        if outcome.status == "500":
            assert "injected fault" in outcome.detail
    summary = summarise("fault", [o for o in outcomes if o.status == "200"], fake_reference)
    assert summary.wrong == 0
    failures = sum(o.status == "500" for o in outcomes)
    assert failed_count(faulty) - before == failures  # one count per failed request
    assert httpx.get(faulty.url + "/health/ready").status_code == 200
    assert grpc_health(faulty) == health_pb2.HealthCheckResponse.SERVING
    after = asyncio.run(wave(faulty, [f"after the fault {i}" for i in range(6)]))
    assert [o.status for o in after] == ["200"] * 6
    assert summarise("after", after, fake_reference).correct == 6


def test_a_runtime_that_keeps_failing_turns_readiness_false_everywhere(faulty, fake_reference):
    for _ in range(3):  # three failed batches in a row
        response = httpx.post(faulty.url + "/v1/embed", json={"inputs": [FAULT]}, timeout=30)
        assert response.status_code == 500 and response.json()["error"]["type"] == "inference_failed"
    ready = httpx.get(faulty.url + "/health/ready")
    assert ready.status_code == 503 and ready.json()["status"] == "failing"
    assert httpx.get(faulty.url + "/v2/health/ready").json() == {"ready": False}
    assert httpx.get(faulty.url + "/health/live").status_code == 200  # not dead: no restart loop
    deadline = time.monotonic() + 5
    while grpc_health(faulty) != health_pb2.HealthCheckResponse.NOT_SERVING:
        assert time.monotonic() < deadline, "gRPC health did not turn NOT_SERVING"
        time.sleep(0.1)
    assert "3 batches failed in a row: readiness is now false" in faulty.log()
    # a request that still reaches the pod and succeeds shows the runtime works again
    fine = httpx.post(faulty.url + "/v1/embed", json={"inputs": ["back to work"]}, timeout=30)
    assert fine.status_code == 200
    assert_matches(fine.json()["embeddings"][0], fake_reference.embedding("back to work"))
    assert httpx.get(faulty.url + "/health/ready").status_code == 200


def test_once_unready_a_probe_batch_makes_the_pod_ready_again_without_any_request(start_fake_server):
    # the injected fault fails only batches holding its text; the probe's batch works
    server = start_fake_server("--fault-inject-text", FAULT, "--recovery-probe-s", "2")
    for _ in range(3):
        assert httpx.post(server.url + "/v1/embed", json={"inputs": [FAULT]}, timeout=30).status_code == 500
    assert httpx.get(server.url + "/health/ready").status_code == 503
    embeds_before = embed_requests(server)
    deadline = time.monotonic() + 15
    while httpx.get(server.url + "/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the probe did not make the pod ready again"
        time.sleep(0.2)
    assert "recovery probe batch succeeded: readiness is true again" in server.log()
    deadline = time.monotonic() + 5
    while grpc_health(server) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, "gRPC health did not turn SERVING again"
        time.sleep(0.1)
    assert embed_requests(server) == embeds_before  # the probe is no client request: not counted as one
