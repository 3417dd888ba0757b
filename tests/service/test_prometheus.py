"""A real Prometheus server (Debian's `prometheus`) scrapes /metrics and answers queries on it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import httpx
import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="no prometheus binary: `make system-deps` installs Debian's prometheus"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_scrapes_the_request_counter(server, tmp_path):
    for _ in range(3):
        httpx.post(server.url + "/v1/embed", json={"inputs": "scraped"}, timeout=30).raise_for_status()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: mhaserve\n    static_configs: [{{targets: ['127.0.0.1:{server.http_port}']}}]\n"
    )
    port = free_port()
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        query = 'sum(mhaserve_requests_total{transport="http",route="/v1/embed",code="200"})'
        deadline, value = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=5).json()
                if answer["data"]["result"]:
                    value = float(answer["data"]["result"][0]["value"][1])
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert value is not None and value >= 3, "Prometheus never returned the request counter"
        targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()
        assert targets["data"]["activeTargets"][0]["health"] == "up"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
