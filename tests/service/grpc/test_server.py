"""The gRPC server (service/grpc/server.py) on `--backend fake` servers: health for the server and
each service, reflection, and SIGTERM: health NOT_SERVING, new calls refused, in-flight ones answered."""

from __future__ import annotations

import signal
import time

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def served(fake_server):
    """Health and reflection are the server's, whatever computes."""
    return fake_server


def test_health_is_serving_for_the_server_and_each_service(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "mhaserve.v1.Encoder", "inference.GRPCInferenceService"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == SERVING
    with pytest.raises(grpc.RpcError) as failure:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_services(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {
        "mhaserve.v1.Encoder",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    pool = descriptor_pool.DescriptorPool(database)  # private: reflection alone, not our stubs
    encoder = pool.FindServiceByName("mhaserve.v1.Encoder")
    assert {m.name for m in encoder.methods} == {
        "Embed",
        "EmbedStream",
        "Tokenize",
        "GetModelInfo",
        "Rerank",
        "Predict",
    }
    kserve = pool.FindServiceByName("inference.GRPCInferenceService")
    assert "ModelInfer" in {m.name for m in kserve.methods}


def test_sigterm_turns_health_not_serving_refuses_new_calls_and_finishes_in_flight_ones(start_fake_server):
    draining = start_fake_server(
        "--max-wait-ms", "2000", "--batch-wait", "always"
    )  # keeps one request in flight for a while
    with grpc.insecure_channel(draining.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="mhaserve.v1.Encoder"), timeout=60
        )
        assert next(watch).status == SERVING
        in_flight = stub.Embed.future(pb.EmbedRequest(inputs=["answered although the server is stopping"]), timeout=60)
        time.sleep(0.3)
        draining.signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(pb.EmbedRequest(inputs=["too late"]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as no_info:  # as every data call: the model is going away
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        assert no_info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(in_flight.result().embeddings) == 1
        watch.cancel()
    assert draining.wait(60) == 0
