"""Containers of the built image, run as users run them: read-only root with a tmpfs at /tmp, the
image's own user, host networking bound to 127.0.0.1 on ports chosen at random (the engine runs
without a bridge: `dockerd --bridge=none --iptables=false`), so no traffic leaves loopback.
Shared by the image tests and the rollout test; without a container engine they skip and say
why, and in CI (CI=true) they fail instead."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

IMAGE = os.environ.get("MHASERVE_TEST_IMAGE", "mhaserve:cpu")
READY_WITHIN_S = 60
HEALTHY_WITHIN_S = 60  # the image's HEALTHCHECK runs every 15 s
STOP_TIMEOUT_S = 30  # what `docker stop` waits for by default before it kills


def docker_cli() -> str | None:
    named = os.environ.get("DOCKER")
    if named:
        return shutil.which(named)
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI: {reason} (.ci/run installs and starts the engine; it should be here)")
    pytest.skip(reason)


def docker_run(docker: str, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([docker, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Container:
    docker: str
    name: str
    http_port: int
    grpc_port: int
    started_at: float
    scheme: str = "http"
    context: ssl.SSLContext | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    def request(self, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        headers = self.headers | ({"Content-Type": "application/json"} if data else {})
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_ready(self, within_s: float = READY_WITHIN_S) -> float:
        """Seconds from `docker run` to the first 200 from /health/ready."""
        deadline = self.started_at + within_s
        last: object = None
        while time.monotonic() < deadline:
            try:
                if self.request("/health/ready", timeout=2)[0] == 200:
                    return time.monotonic() - self.started_at
            except OSError as exc:
                last = exc
            assert self.state()["Running"], f"the container stopped:\n{self.logs()}"
            time.sleep(0.25)
        raise AssertionError(f"not ready within {within_s} s ({last}):\n{self.logs()}")

    def state(self) -> dict:
        return json.loads(docker_run(self.docker, "inspect", "--format", "{{json .State}}", self.name).stdout)

    def wait_health(self, within_s: float = HEALTHY_WITHIN_S) -> list[dict]:
        """Docker's own HEALTHCHECK status reaches `healthy`: the probes' log."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            health = self.state().get("Health") or {}
            if health.get("Status") == "healthy":
                return health["Log"]
            assert health.get("Status") != "unhealthy", health
            time.sleep(1)
        raise AssertionError(f"not healthy within {within_s} s: {self.state().get('Health')}")

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return docker_run(self.docker, "exec", self.name, *command, check=False, timeout=60)

    def logs(self) -> str:
        result = docker_run(self.docker, "logs", "--tail", "40", self.name, check=False)
        return result.stdout + result.stderr


def start(docker: str, name: str, *, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
          mounts: tuple[str, ...] = (), image: str = IMAGE, stop_timeout_s: int = STOP_TIMEOUT_S,
          ports: tuple[int, int] | None = None, run_args: tuple[str, ...] = (),
          **kwargs) -> Container:  # fmt: skip
    """`docker run` detached; ports: (REST, gRPC) on 127.0.0.1, by default two free ones;
    run_args: more `docker run` options (resources)."""
    http_port, grpc_port = ports or (free_port(), free_port())
    env = {"MHASERVE_HOST": "127.0.0.1", "MHASERVE_HTTP_PORT": str(http_port), "MHASERVE_GRPC_PORT": str(grpc_port)} | (
        env or {}
    )
    command = ["run", "--detach", "--name", name, "--read-only", "--tmpfs", "/tmp", "--network", "host"]
    command += ["--stop-timeout", str(stop_timeout_s), *run_args]
    for key, value in env.items():
        command += ["--env", f"{key}={value}"]
    for mount in mounts:
        command += ["--volume", mount]
    docker_run(docker, "rm", "--force", name, check=False)
    started_at = time.monotonic()
    docker_run(docker, *command, image, *args)
    return Container(docker, name, http_port, grpc_port, started_at, **kwargs)
