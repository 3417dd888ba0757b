"""A channel and an Encoder stub to the server each module of this folder names `served`."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from protos.mhaserve.v1 import encoder_pb2_grpc


@pytest.fixture(scope="module")
def channel(served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel) -> encoder_pb2_grpc.EncoderStub:
    return encoder_pb2_grpc.EncoderStub(channel)
