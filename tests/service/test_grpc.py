"""mhaserve.v1.Encoder over gRPC against real server processes, through the generated stubs."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from tests.support.decode import decode_float32
from tests.support.http import scrape
from tests.support.prometheus import metric_value
from tests.support.reference import SENTENCES
from tests.support.server import launch

MODEL = "all-minilm-l6-v2"
KEY = "grpc-test-key"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def vector(embedding: pb.Embedding) -> np.ndarray:
    return np.array(embedding.values, dtype=np.float32)


def array(tensor: pb.Tensor) -> np.ndarray:
    assert tensor.dtype == pb.DTYPE_FLOAT32
    return decode_float32(tensor.data, tensor.shape)


def grpc_requests(text: str, route: str, code: str) -> float:
    return metric_value(text, "mhaserve_requests_total", {"transport": "grpc", "route": route, "code": code})


@pytest.fixture(scope="module")
def channel(server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel) -> encoder_pb2_grpc.EncoderStub:
    return encoder_pb2_grpc.EncoderStub(channel)


# every RPC -------------------------------------------------------------------------------


def test_embed_vectors_equal_in_process_onnxruntime(stub, reference):
    response = stub.Embed(pb.EmbedRequest(id="first", inputs=SENTENCES), timeout=60)
    assert (response.id, response.model) == ("first", MODEL)
    assert len(response.embeddings) == len(SENTENCES)
    for text, embedding in zip(SENTENCES, response.embeddings, strict=True):
        np.testing.assert_allclose(vector(embedding), reference.embedding(text), atol=1e-5)
    assert response.usage.tokens == sum(len(reference.ids(t)) for t in SENTENCES)
    assert not response.tokens and not response.token_embeddings and not response.attention


def test_embed_cls_pooling_without_normalisation(stub, reference):
    message = pb.EmbedRequest(inputs=[SENTENCES[0]], pooling=pb.POOLING_CLS, normalize=False)
    response = stub.Embed(message, timeout=60)
    np.testing.assert_allclose(
        vector(response.embeddings[0]), reference.embedding(SENTENCES[0], "cls", False), atol=1e-5
    )


def test_tokens_token_embeddings_and_attention_each_at_their_own_length(stub, reference):
    texts = [SENTENCES[2], SENTENCES[5]]
    message = pb.EmbedRequest(
        inputs=texts,
        return_tokens=True,
        return_token_embeddings=True,
        attention=pb.AttentionSelection(layers=[0, 5], heads=[3, 11]),
    )
    response = stub.Embed(message, timeout=60)
    assert list(response.attention_layers) == [0, 5] and list(response.attention_heads) == [3, 11]
    for i, text in enumerate(texts):
        ids = reference.ids(text)
        assert [t.id for t in response.tokens[i].tokens] == ids
        assert response.tokens[i].tokens[0].text == "[CLS]"
        token_embeddings = array(response.token_embeddings[i])
        assert token_embeddings.shape == (len(ids), 384)
        np.testing.assert_allclose(token_embeddings, reference.hidden(text), atol=1e-4)
        attention = array(response.attention[i])
        assert attention.shape == (2, 2, len(ids), len(ids))
        np.testing.assert_allclose(attention, reference.attention(text)[[0, 5]][:, [3, 11]], atol=1e-5)


def test_an_empty_attention_selection_means_every_layer_and_head(stub):
    response = stub.Embed(pb.EmbedRequest(inputs=["hi"], attention=pb.AttentionSelection()), timeout=60)
    assert list(response.attention_layers) == list(range(6)) and list(response.attention_heads) == list(range(12))
    assert array(response.attention[0]).shape == (6, 12, 3, 3)


def test_tokenize_gives_word_pieces_with_offsets(stub, reference):
    text = "Tokenizers split unbelievable words."
    response = stub.Tokenize(pb.TokenizeRequest(inputs=[text]), timeout=30)
    assert response.model == MODEL
    tokens = response.tokens[0].tokens
    assert [t.id for t in tokens] == reference.ids(text)
    words = [t for t in tokens if t.end > t.start]
    assert words and all(text[t.start : t.end].lower() == t.text.removeprefix("##") for t in words)


def test_get_model_info_describes_the_served_model(stub, artifact):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    manifest = artifact.manifest
    assert (info.name, info.version, info.pooling, info.normalize) == (
        manifest.name,
        manifest.version,
        manifest.pooling,
        manifest.normalize,
    )
    assert (info.d_model, info.embedding_dim, info.n_layers, info.n_heads, info.max_len) == (384, 384, 6, 12, 256)
    assert info.provider.endswith("ExecutionProvider") and info.precision in ("fp32", "fp16", "int8")
    assert info.graph.endswith(".onnx")


def test_stream_answers_1000_requests_in_flight_each_matched_to_its_id(server, stub, reference):
    topics = ["guitars", "foxes", "attention", "rivers", "compilers", "tea", "chess", "volcanoes"]
    texts = {f"req-{i}": f"request {i} is about {topics[i % len(topics)]} and the number {i * 7}" for i in range(1000)}
    before = scrape(server)
    requests = [pb.EmbedRequest(id=i, inputs=[text], return_tokens=True) for i, text in texts.items()]
    answers = list(stub.EmbedStream(iter(requests), timeout=300))
    after = scrape(server)

    assert sorted(a.id for a in answers) == sorted(texts)
    for answer in answers:
        assert not answer.HasField("error"), answer.error
        assert [t.id for t in answer.tokens[0].tokens] == reference.ids(texts[answer.id])
    for answer in answers[::97]:
        np.testing.assert_allclose(vector(answer.embeddings[0]), reference.embedding(texts[answer.id]), atol=1e-5)
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


# errors, metrics, health, reflection -------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (pb.EmbedRequest(), "empty"),
        (pb.EmbedRequest(inputs=["fine", ""]), "inputs[1]"),
        (pb.EmbedRequest(inputs=["x"], attention=pb.AttentionSelection(layers=[6])), "layer 6"),
        (pb.EmbedRequest(inputs=["x"], attention=pb.AttentionSelection(heads=[12])), "head 12"),
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


def test_calls_are_counted_with_transport_grpc(server, stub):
    before = scrape(server)
    stub.Embed(pb.EmbedRequest(inputs=["counted"]), timeout=30)
    stub.Tokenize(pb.TokenizeRequest(inputs=["counted"]), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Embed(pb.EmbedRequest(), timeout=30)
    after = scrape(server)
    for route, code in [("Embed", "OK"), ("Tokenize", "OK"), ("Embed", "INVALID_ARGUMENT")]:
        assert grpc_requests(after, route, code) - grpc_requests(before, route, code) == 1, (route, code)
    errors = {"type": "invalid_request"}
    assert (
        metric_value(after, "mhaserve_errors_total", errors) - metric_value(before, "mhaserve_errors_total", errors)
        == 1
    )


def test_each_streamed_request_is_counted_as_a_unary_call_is(server, stub):
    fine, empty = pb.EmbedRequest(id="fine", inputs=["counted"]), pb.EmbedRequest(id="empty")
    before = scrape(server)
    stub.Embed(fine, timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Embed(empty, timeout=30)
    unary = scrape(server)
    answers = list(stub.EmbedStream(iter([fine, empty]), timeout=30))
    streamed = scrape(server)
    assert sorted(a.id for a in answers) == ["empty", "fine"]
    for code in ("OK", "INVALID_ARGUMENT"):
        assert grpc_requests(unary, "Embed", code) - grpc_requests(before, "Embed", code) == 1, code
        assert grpc_requests(streamed, "EmbedStream", code) - grpc_requests(unary, "EmbedStream", code) == 1, code
    errors = {"type": "invalid_request"}
    counted = [metric_value(text, "mhaserve_errors_total", errors) for text in (before, unary, streamed)]
    assert counted[1] - counted[0] == counted[2] - counted[1] == 1


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


def test_a_failing_batch_is_internal_and_the_server_keeps_serving(start_server):
    failing = start_server("--fault-inject-text", "please fail this batch", "--max-wait-ms", "0")
    with grpc.insecure_channel(failing.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.Embed(pb.EmbedRequest(inputs=["please fail this batch"]), timeout=30)
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert len(stub.Embed(pb.EmbedRequest(inputs=["and now a good one"]), timeout=30).embeddings) == 1


# keys, limits, deadlines, shutdown: servers with their own settings ---------------------


@pytest.fixture(scope="module")
def strict(artifact):
    """An API key, and small messages both ways."""
    process = launch(
        "--api-keys", KEY,
        "--max-request-bytes", "8192",
        "--grpc-max-message-bytes", "65536",
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
        # all 72 attention maps of a 20-token input: 115 KB, over the 64 KB sending limit
        message = pb.EmbedRequest(inputs=["one two three four five six seven eight nine ten " * 2])
        small = stub.Embed(message, timeout=30, metadata=keyed(KEY))
        assert len(small.embeddings) == 1
        message.attention.SetInParent()
        with pytest.raises(grpc.RpcError) as answer_too_big:
            stub.Embed(message, timeout=30, metadata=keyed(KEY))
        assert answer_too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def patient(artifact):
    """A lone request waits 3 s in the queue for company; the queue holds 512 tokens."""
    process = launch("--max-wait-ms", "3000", "--batch-wait", "always", "--max-queue-tokens", "512")
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


def test_sigterm_turns_health_not_serving_refuses_new_calls_and_finishes_in_flight_ones(start_server):
    draining = start_server(
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
