"""Shared fixtures: real server processes on random localhost ports, and in-process references."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from artifact.manifest import ATTENTION, FAST, Artifact
from artifact.pooling import pad_batch, pool

REPO = Path(__file__).resolve().parent.parent
ARTIFACT = REPO / "artifacts" / "all-minilm-l6-v2"
# a mix of lengths, scripts and punctuation, shared by the transport tests
SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need.",
    "Ein Satz auf Deutsch, mit Umlauten: äöü.",
    "short",
    "A considerably longer sentence that goes on and on, so that batches hold inputs of quite different lengths.",
]
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


def launch(*args: str, env: dict | None = None, model_dir: Path = ARTIFACT, wait_ready: bool = True) -> ServerProcess:
    """`mhaserve serve` on ports chosen by the OS; returns once it listens (and is ready)."""
    log_fd, log_path = tempfile.mkstemp(prefix="mhaserve-", suffix=".log")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MHASERVE_")}
    full_env.update(env or {})
    command = [sys.executable, "-m", "service", "serve", "--model-dir", str(model_dir), "--host", "127.0.0.1"]
    command += ["--http-port", "0", "--grpc-port", "0", *args]
    process = subprocess.Popen(command, stdout=log_fd, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
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


@pytest.fixture(scope="session")
def artifact() -> Artifact:
    if not (ARTIFACT / "manifest.json").exists():
        pytest.fail(f"{ARTIFACT} is missing: run `make model` (make test builds it first)")
    return Artifact.load(ARTIFACT)


@pytest.fixture(scope="session")
def server(artifact: Artifact) -> Iterator[ServerProcess]:
    """One default server shared by the tests that don't change its settings."""
    process = launch()
    yield process
    process.stop()


@pytest.fixture
def start_server(artifact: Artifact) -> Iterator:
    """Factory for servers with their own settings; each is stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict | None = None, wait_ready: bool = True, **kwargs) -> ServerProcess:
        process = launch(*args, env=env, wait_ready=wait_ready, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


class Reference:
    """In-process onnxruntime on the same graphs the server runs: the truth to compare with."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.fast = ort.InferenceSession(str(artifact.graph_path(FAST)), options, providers=["CPUExecutionProvider"])
        self.attention_session = ort.InferenceSession(
            str(artifact.graph_path(ATTENTION)), options, providers=["CPUExecutionProvider"]
        )

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def hidden(self, text: str) -> np.ndarray:
        input_ids, mask = pad_batch([self.ids(text)])
        return self.fast.run(None, {"input_ids": input_ids, "attention_mask": mask})[0][0]

    def embedding(self, text: str, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        hidden = self.hidden(text)[None]
        return pool(hidden, np.array([hidden.shape[1]]), pooling, normalize)[0]

    def attention(self, text: str) -> np.ndarray:
        input_ids, mask = pad_batch([self.ids(text)])
        return self.attention_session.run(None, {"input_ids": input_ids, "attention_mask": mask})[1][0]


@pytest.fixture(scope="session")
def reference(artifact: Artifact) -> Reference:
    return Reference(artifact)


def metric_value(metrics_text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one sample in a Prometheus exposition."""
    for line in metrics_text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == name or (
            sample.startswith(name + "{") and all(f'{k}="{v}"' in sample for k, v in (labels or {}).items())
        ):
            return float(value)
    raise KeyError(f"{name} {labels or ''} not in the exposition")
