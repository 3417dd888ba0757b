"""A real `mhaserve serve` process on ports the OS chooses: what the bench measures and the tests drive."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
ARTIFACT = REPO / "artifacts" / "all-minilm-l6-v2"
LISTENING = re.compile(r"listening: REST https?://[^:]+:(\d+)\s+gRPC [^:]+:(\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    log_path: Path
    http_port: int = 0
    grpc_port: int = 0
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()
        return self.process.returncode

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()[-3000:]}")


def launch(
    *args: str,
    env: dict | None = None,
    model_dir: Path | None = ARTIFACT,
    wait_ready: bool = True,
    checkout: Path = REPO,
) -> ServerProcess:
    """`mhaserve serve` on ports chosen by the OS; returns once it listens (and is ready).

    model_dir None serves `--backend fake` (no artifact, no onnxruntime: protocol behaviour only).
    checkout: the source tree whose server runs (another commit's `git worktree`, to compare)."""
    log_fd, log_path = tempfile.mkstemp(prefix="mhaserve-", suffix=".log")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MHASERVE_")}
    full_env.update(env or {})
    what = ["--backend", "fake"] if model_dir is None else ["--model-dir", str(model_dir)]
    command = [sys.executable, "-m", "service", "serve", *what, "--host", "127.0.0.1"]
    command += ["--http-port", "0", "--grpc-port", "0", *args]
    process = subprocess.Popen(command, stdout=log_fd, stderr=subprocess.STDOUT, env=full_env, cwd=checkout)
    os.close(log_fd)
    server = ServerProcess(process, Path(log_path), env=full_env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = LISTENING.search(server.log())
        if match:
            server.http_port, server.grpc_port = int(match.group(1)), int(match.group(2))
            break
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()[-3000:]}")
        time.sleep(0.05)
    else:
        server.stop()
        raise TimeoutError(f"server did not listen within 60 s:\n{server.log()[-3000:]}")
    if wait_ready:
        server.wait_ready()
    return server
