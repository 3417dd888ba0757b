"""A real `mhaserve serve` with the settings a pod of the cpu variant gets: its probes, its
scrape, its key file and its drain behave as the manifests expect, and deploy/capacity.py
measures it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.conftest import REPO, one, server_container
from tests.deploy.test_consistency import container_env, pod_spec_of
from tests.deploy.test_dockerfile import HEALTHCHECK_SCRIPT
from tests.support.server import launch

# measures time or capacity against a bound: make test runs it after the rest, alone
pytestmark = pytest.mark.exclusive


def test_server_with_pod_settings_answers_probes_scrape_keys_and_load_then_drains_in_time(rendered, artifact, tmp_path):
    docs = rendered["cpu"]
    pod_spec = pod_spec_of(docs)
    container = server_container(pod_spec)
    env = container_env(container, docs)
    # The Secret's file: one key per line, two during a rotation.
    keys = tmp_path / "keys"
    keys.write_text("old-key\nnew-key\n")
    env["MHASERVE_API_KEY_FILE"] = str(keys)
    server = launch(env=env)  # ports chosen by the OS; everything else as in the pod
    try:
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container[kind]["httpGet"]["path"]
            assert httpx.get(server.url + path, timeout=5).status_code == 200, kind

        # the grpc-probes variant asks grpc.health.v1 about this service name
        grpc_container = server_container(pod_spec_of(rendered["cpu+components"]))
        service = grpc_container["readinessProbe"]["grpc"]["service"]
        with grpc.insecure_channel(server.grpc_target) as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            answer = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING

        # what the ServiceMonitor scrapes carries the gauges the autoscaler reads
        endpoint = one(docs, "ServiceMonitor")["spec"]["endpoints"][0]
        scrape = httpx.get(server.url + endpoint["path"], timeout=5)
        assert scrape.status_code == 200
        for metric in ("mhaserve_inflight_requests", "mhaserve_queue_depth"):
            assert f"# TYPE {metric} gauge" in scrape.text

        # keys come from the mounted file
        body = {"inputs": ["a sentence"]}
        assert httpx.post(server.url + "/v1/embed", json=body, timeout=30).status_code == 401
        for key in ("old-key", "new-key"):
            headers = {"Authorization": f"Bearer {key}"}
            assert httpx.post(server.url + "/v1/embed", json=body, headers=headers, timeout=30).status_code == 200

        # the capacity script docs/deploy.md's plan uses, briefly, against this replica
        command = [sys.executable, str(REPO / "deploy" / "capacity.py"), "--url", server.url, "--api-key", "new-key"]
        command += ["--concurrency", "4", "--warmup", "0.2", "--duration", "1"]
        measured = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout)
        assert measured["requests_per_s"] > 0 and measured["tokens_per_s"] > measured["requests_per_s"]
        assert measured["refused_or_failed"] == 0

        # the image's HEALTHCHECK, with this container's settings
        check_env = {k: v for k, v in os.environ.items() if not k.startswith("MHASERVE_")}
        check_env |= env | {"PYTHONPATH": str(REPO), "MHASERVE_HTTP_PORT": str(server.http_port)}
        command = [sys.executable, str(HEALTHCHECK_SCRIPT)]
        check = subprocess.run(command, env=check_env, capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr
    finally:
        # the process must be gone before SIGKILL (after any preStop pause, SIGTERM, then the
        # shutdown delay and the drain)
        pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        budget = pod_spec["terminationGracePeriodSeconds"] - pause
        started = time.monotonic()
        code = server.stop()
        elapsed = time.monotonic() - started
    assert code == 0, server.log()[-2000:]
    assert elapsed < budget
    assert "new-key" not in server.log() and "old-key" not in server.log()
