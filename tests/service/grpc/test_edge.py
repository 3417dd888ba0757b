"""The gRPC edge (service/grpc/edge.py) on `--backend fake` servers: streams matched by id, each
bad request's INVALID_ARGUMENT, bytes that do not parse, the metrics of every call, keys, message
sizes, deadlines, a full queue and a failing batch."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from tests.support.fake import assert_matches
from tests.support.http import scrape
from tests.support.prometheus import metric_value
from tests.support.server import launch

KEY = "grpc-test-key"
SERVING = health_pb2.HealthCheckResponse.SERVING


def vector(embedding: pb.Embedding) -> np.ndarray:
    return np.array(embedding.values, dtype=np.float32)


def grpc_requests(text: str, route: str, code: str) -> float:
    return metric_value(text, "mhaserve_requests_total", {"transport": "grpc", "route": route, "code": code})


@pytest.fixture(scope="module")
def served(fake_server):
    """The edge's behaviour is the same whatever computes."""
    return fake_server


def test_stream_answers_1000_requests_in_flight_each_matched_to_its_id(start_fake_server, fake_reference):
    server = start_fake_server("--fake-batch-ms", "10")  # batches take time, as a model's do: requests queue up
    topics = ["guitars", "foxes", "attention", "rivers", "compilers", "tea", "chess", "volcanoes"]
    texts = {f"req-{i}": f"request {i} is about {topics[i % len(topics)]} and the number {i * 7}" for i in range(1000)}
    before = scrape(server)
    requests = [pb.EmbedRequest(id=i, inputs=[text], return_tokens=True) for i, text in texts.items()]
    with grpc.insecure_channel(server.grpc_target) as channel:
        answers = list(encoder_pb2_grpc.EncoderStub(channel).EmbedStream(iter(requests), timeout=300))
    after = scrape(server)

    assert sorted(a.id for a in answers) == sorted(texts)
    for answer in answers:
        assert not answer.HasField("error"), answer.error
        assert [t.id for t in answer.tokens[0].tokens] == fake_reference.ids(texts[answer.id])
        assert_matches(vector(answer.embeddings[0]), fake_reference.embedding(texts[answer.id]))
    # every sequence computed exactly once, many per batch: the requests were in flight together
    sequences = metric_value(after, "mhaserve_batch_size_sum") - metric_value(before, "mhaserve_batch_size_sum")
    batches = metric_value(after, "mhaserve_batch_size_count") - metric_value(before, "mhaserve_batch_size_count")
    assert sequences == 1000
    assert sequences / batches >= 4, f"{sequences} sequences in {batches} batches"
    assert grpc_requests(after, "EmbedStream", "OK") - grpc_requests(before, "EmbedStream", "OK") == 1000


def test_stream_answers_a_failed_request_with_its_error_and_goes_on(channel):
    # raw bytes, so one message can be garbage
    call = channel.stream_stream("/mhaserve.v1.Encoder/EmbedStream")
    messages = [
        pb.EmbedRequest(id="ok-1", inputs=["fine"]).SerializeToString(),
        pb.EmbedRequest(id="empty").SerializeToString(),
        b"\xff\xff\xff",
        pb.EmbedRequest(id="layer", inputs=["x"], attention=pb.AttentionSelection(layers=[9])).SerializeToString(),
        pb.EmbedRequest(id="ok-2", inputs=["also fine"]).SerializeToString(),
    ]
    answers = {a.id: a for a in map(pb.EmbedResponse.FromString, call(iter(messages), timeout=60))}
    assert set(answers) == {"ok-1", "empty", "", "layer", "ok-2"}
    assert len(answers["ok-1"].embeddings) == len(answers["ok-2"].embeddings) == 1
    for request_id, fragment in [("empty", "empty"), ("", "not a valid"), ("layer", "layer 9")]:
        error = answers[request_id].error
        assert (error.code, error.code_name) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_ARGUMENT")
        assert fragment in error.message
        assert not answers[request_id].embeddings


# errors and metrics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (pb.EmbedRequest(), "empty"),
        (pb.EmbedRequest(inputs=["fine", ""]), "inputs[1]"),
        (pb.EmbedRequest(inputs=["x"], attention=pb.AttentionSelection(layers=[2])), "layer 2 does not exist"),
        (pb.EmbedRequest(inputs=["x"], attention=pb.AttentionSelection(heads=[2])), "head 2 does not exist"),
        (pb.EmbedRequest(inputs=["x"], pooling=7), "Pooling"),
        (pb.EmbedRequest(inputs=["x"] * 257), "limit is 256"),
        (pb.EmbedRequest(inputs=["word " * 400], truncate=False), "longer than"),
    ],
    ids=["no-inputs", "empty-input", "layer", "head", "pooling", "too-many", "too-long"],
)
def test_invalid_requests_are_invalid_argument_with_a_message(stub, message, fragment):
    with pytest.raises(grpc.RpcError) as failure:
        stub.Embed(message, timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in failure.value.details()


@pytest.mark.parametrize("method", ["Embed", "Tokenize", "GetModelInfo"])
def test_request_bytes_that_do_not_parse_are_invalid_argument_not_unknown(channel, method):
    with pytest.raises(grpc.RpcError) as failure:
        channel.unary_unary(f"/mhaserve.v1.Encoder/{method}")(b"\x0a\xff\xff\xff\xff", timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid mhaserve.v1." in failure.value.details()


def test_calls_are_counted_with_transport_grpc(fake_server, stub):
    before = scrape(fake_server)
    stub.Embed(pb.EmbedRequest(inputs=["counted"]), timeout=30)
    stub.Tokenize(pb.TokenizeRequest(inputs=["counted"]), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Embed(pb.EmbedRequest(), timeout=30)
    after = scrape(fake_server)
    for route, code in [("Embed", "OK"), ("Tokenize", "OK"), ("Embed", "INVALID_ARGUMENT")]:
        assert grpc_requests(after, route, code) - grpc_requests(before, route, code) == 1, (route, code)
    errors = {"type": "invalid_request"}
    assert (
        metric_value(after, "mhaserve_errors_total", errors) - metric_value(before, "mhaserve_errors_total", errors)
        == 1
    )


def test_each_streamed_request_is_counted_as_a_unary_call_is(fake_server, stub):
    fine, empty = pb.EmbedRequest(id="fine", inputs=["counted"]), pb.EmbedRequest(id="empty")
    before = scrape(fake_server)
    stub.Embed(fine, timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Embed(empty, timeout=30)
    unary = scrape(fake_server)
    answers = list(stub.EmbedStream(iter([fine, empty]), timeout=30))
    streamed = scrape(fake_server)
    assert sorted(a.id for a in answers) == ["empty", "fine"]
    for code in ("OK", "INVALID_ARGUMENT"):
        assert grpc_requests(unary, "Embed", code) - grpc_requests(before, "Embed", code) == 1, code
        assert grpc_requests(streamed, "EmbedStream", code) - grpc_requests(unary, "EmbedStream", code) == 1, code
    errors = {"type": "invalid_request"}
    counted = [metric_value(text, "mhaserve_errors_total", errors) for text in (before, unary, streamed)]
    assert counted[1] - counted[0] == counted[2] - counted[1] == 1


def test_a_failing_batch_is_internal_and_the_server_keeps_serving(start_fake_server):
    failing = start_fake_server("--fault-inject-text", "please fail this batch", "--max-wait-ms", "0")
    with grpc.insecure_channel(failing.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Embed(pb.EmbedRequest(inputs=["please fail this batch"]), timeout=30)
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert len(stub.Embed(pb.EmbedRequest(inputs=["and now a good one"]), timeout=30).embeddings) == 1


# keys, limits, deadlines: servers with their own settings -------------------------------


@pytest.fixture(scope="module")
def strict():
    """An API key, and small messages both ways."""
    process = launch(
        "--api-keys", KEY,
        "--max-request-bytes", "8192",
        "--grpc-max-message-bytes", "12288",
        model_dir=None,
    )  # fmt: skip
    yield process
    process.stop()


def keyed(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def test_api_key_is_required_on_every_encoder_method_but_not_on_health(strict):
    with grpc.insecure_channel(strict.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        calls = [
            (stub.Embed, pb.EmbedRequest(inputs=["x"])),
            (stub.Tokenize, pb.TokenizeRequest(inputs=["x"])),
            (stub.GetModelInfo, pb.GetModelInfoRequest()),
        ]
        for method, message in calls:
            for metadata in [(), keyed("wrong-key"), (("authorization", KEY),)]:
                with pytest.raises(grpc.RpcError) as failure:
                    method(message, timeout=30, metadata=metadata)
                assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method, metadata)
                assert KEY not in failure.value.details()
            method(message, timeout=30, metadata=keyed(KEY))
        with pytest.raises(grpc.RpcError) as failure:
            list(stub.EmbedStream(iter([pb.EmbedRequest(id="a", inputs=["x"])]), timeout=30))
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = list(stub.EmbedStream(iter([pb.EmbedRequest(id="a", inputs=["x"])]), timeout=30, metadata=keyed(KEY)))
        assert [a.id for a in answers] == ["a"]
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING


def test_message_sizes_are_limited_both_ways(strict):
    with grpc.insecure_channel(strict.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as too_big:
            stub.Embed(pb.EmbedRequest(inputs=["x" * 9000]), timeout=30, metadata=keyed(KEY))
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # all 4 attention maps of a 32-token input: 16 KB, over the 12 KB sending limit
        message = pb.EmbedRequest(inputs=["one two three four five six seven eight nine ten " * 3])
        small = stub.Embed(message, timeout=30, metadata=keyed(KEY))
        assert len(small.embeddings) == 1
        message.attention.SetInParent()
        with pytest.raises(grpc.RpcError) as answer_too_big:
            stub.Embed(message, timeout=30, metadata=keyed(KEY))
        assert answer_too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def patient():
    """A lone request waits 3 s in the queue for company; the queue holds 512 tokens."""
    process = launch("--max-wait-ms", "3000", "--batch-wait", "always", "--max-queue-tokens", "512", model_dir=None)
    yield process
    process.stop()


def test_work_past_the_client_deadline_is_dropped_not_computed(patient):
    with grpc.insecure_channel(patient.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        before = scrape(patient)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Embed(pb.EmbedRequest(inputs=["too slow for my deadline"]), timeout=0.5)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(3.5)  # had it stayed queued, its batch would have left by now
        after = scrape(patient)
    dropped = sum(
        metric_value(after, "mhaserve_dropped_sequences_total", {"reason": r})
        - metric_value(before, "mhaserve_dropped_sequences_total", {"reason": r})
        for r in ("deadline", "cancelled")
    )
    assert dropped == 1
    assert metric_value(after, "mhaserve_batch_size_count") == metric_value(before, "mhaserve_batch_size_count")


def test_a_full_queue_is_resource_exhausted(patient):
    message = pb.EmbedRequest(inputs=["this sentence has quite a few tokens in it"] * 30)  # 330 tokens
    with grpc.insecure_channel(patient.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        queued = stub.Embed.future(message, timeout=60)  # waits in the queue for company
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Embed(message, timeout=30)
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "capacity" in failure.value.details()
        assert len(queued.result().embeddings) == 30
