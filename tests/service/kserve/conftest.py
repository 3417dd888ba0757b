"""tritonclient's two flavours, connected to the server each module of this folder names `served`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http


@pytest.fixture(scope="module")
def http_client(served) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{served.http_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(served) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(served.grpc_target)
    yield client
    client.close()


@pytest.fixture(params=["http", "grpc"])
def client(request, http_client, grpc_client):
    """Each test that takes `client` runs once per tritonclient flavour."""
    return (triton_http, http_client) if request.param == "http" else (triton_grpc, grpc_client)
