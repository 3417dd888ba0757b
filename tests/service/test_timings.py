"""Where a request's time went, under text-embeddings-inference's names: x-total-time on every
REST answer and every gRPC call's trailing metadata, and the stages' times on every embedding."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2 as kserve_pb
from tritonclient.grpc import service_pb2_grpc as kserve_grpc

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from tests.support.http import raw_request

STAGES = ("x-tokenization-time", "x-queue-time", "x-inference-time")
INFER = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the man"]}]}


def milliseconds(value: str) -> float:
    ms = float(value)
    assert 0 <= ms < 10_000, value
    return ms


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/embed", {"inputs": ["the man is playing"]}),
        ("/v1/embeddings", {"input": "the man is playing"}),
        ("/v2/models/fake/infer", INFER),
    ],
)
def test_every_embedding_answer_says_where_its_time_went(fake_server, path, body):
    response = httpx.post(fake_server.url + path, json=body)
    assert response.status_code == 200, response.text
    stages = [milliseconds(response.headers[name]) for name in STAGES]
    total = milliseconds(response.headers["x-total-time"])
    assert total >= max(stages)  # the whole holds each part
    assert "x-queue-time-ms" not in response.headers


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("GET", "/health/ready", None, 200),
        ("GET", "/v1/models", None, 200),
        ("POST", "/v1/embed", {"inputs": []}, 422),
        ("POST", "/v1/nowhere", {}, 404),
    ],
)
def test_every_rest_answer_carries_its_total_time(fake_server, method, path, body, status):
    response = httpx.request(method, fake_server.url + path, json=body)
    assert response.status_code == status
    milliseconds(response.headers["x-total-time"])


def test_a_refusal_at_the_protocol_carries_its_total_time_too(start_fake_server):
    """A full queue's 429, written before h11 sees the request: one batch computing for 1.5 s
    holds the one worker, another request fills the queue's 8 tokens."""
    server = start_fake_server("--fake-batch-ms", "1500", "--inference-workers", "1", "--max-queue-tokens", "8")
    busy = [
        threading.Thread(target=httpx.post, args=(server.url + "/v1/embed",), kwargs={"json": {"inputs": text}})
        for text in ("a", "the man is")
    ]
    for thread in busy:
        thread.start()
        time.sleep(0.3)
    body = b'{"inputs": "the man is"}'
    head = f"POST /v1/embed HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    answer = raw_request(server.http_port, head + body)
    for thread in busy:
        thread.join()
    assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
    lines = answer.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    headers = dict(line.decode().split(": ", 1) for line in lines)
    milliseconds(headers["x-total-time"])


def trailing(call) -> dict[str, str]:
    return {key: value for key, value in call.trailing_metadata()}


def test_grpc_calls_carry_the_same_times_as_trailing_metadata(fake_server):
    with grpc.insecure_channel(fake_server.grpc_target) as channel:
        encoder = encoder_pb2_grpc.EncoderStub(channel)
        _, call = encoder.Embed.with_call(pb.EmbedRequest(inputs=["the man is playing"]))
        metadata = trailing(call)
        stages = [milliseconds(metadata[name]) for name in STAGES]
        assert milliseconds(metadata["x-total-time"]) >= max(stages)

        kserve = kserve_grpc.GRPCInferenceServiceStub(channel)
        tensor = kserve_pb.ModelInferRequest.InferInputTensor(name="text", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(b"the man")
        _, call = kserve.ModelInfer.with_call(kserve_pb.ModelInferRequest(model_name="fake", inputs=[tensor]))
        metadata = trailing(call)
        for name in (*STAGES, "x-total-time"):
            milliseconds(metadata[name])

        with pytest.raises(grpc.RpcError) as refused:
            encoder.Embed(pb.EmbedRequest(inputs=[]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        metadata = trailing(refused.value)
        milliseconds(metadata["x-total-time"])
        assert metadata["mhaserve-error-type"] == "invalid_request"
