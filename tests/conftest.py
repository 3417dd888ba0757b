"""Shared fixtures: real server processes on random localhost ports, and in-process references.

The helpers they use live in tests/support."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from artifact.manifest import Artifact
from tests.support.fake import FakeReference
from tests.support.reference import Reference
from tests.support.server import ARTIFACT, ServerProcess, launch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker's in-process torch gets one thread: two workers on two cores
    with two spinning threads each spend more CPU than they save."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def fake_server() -> Iterator[ServerProcess]:
    """One `--backend fake` server shared by the tests of protocol behaviour: no artifact, no
    onnxruntime, answers in microseconds; its vectors mean nothing, so no test checks numbers on it."""
    process = launch(model_dir=None)
    yield process
    process.stop()


def server_factory(**fixed) -> Iterator:
    """Starts servers with their own settings (and `fixed` launch arguments); stops each after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict | None = None, wait_ready: bool = True, **kwargs) -> ServerProcess:
        process = launch(*args, env=env, wait_ready=wait_ready, **fixed, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def start_fake_server() -> Iterator:
    """Factory for `--backend fake` servers: protocol behaviour only."""
    yield from server_factory(model_dir=None)


@pytest.fixture
def start_server(artifact: Artifact) -> Iterator:
    """Factory for servers with their own settings; each is stopped after the test."""
    yield from server_factory()


@pytest.fixture(scope="session")
def reference(artifact: Artifact) -> Reference:
    return Reference(artifact)


@pytest.fixture(scope="session")
def fake_reference() -> FakeReference:
    """What a `--backend fake` server must answer: its documented hidden states, pooled in numpy."""
    return FakeReference()
