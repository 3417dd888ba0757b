"""gRPC Rerank and Predict, and the Python client's rerank() and predict() on both transports,
against a real `--backend fake` server serving a fake reranker, embedder and classifier."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from service import errors
from service.client import GrpcClient, RestClient
from service.types import AttentionSelection, LabelScore
from tests.service.http.test_rerank import DOCUMENTS, QUERY, fake_logit, sigmoid
from tests.support.http import scrape
from tests.support.prometheus import metric_value
from tests.support.server import launch


@pytest.fixture(scope="module")
def served():
    process = launch("--fake-task", "rerank,embed,classify", "--max-inputs-per-request", "8", model_dir=None)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def clients(served):
    rest, grpc_client = RestClient(served.url), GrpcClient(served.grpc_target)
    yield {"rest": rest, "grpc": grpc_client}
    rest.close()
    grpc_client.close()


@pytest.fixture(scope="module")
def stub(served):
    with grpc.insecure_channel(served.grpc_target) as channel:
        yield encoder_pb2_grpc.EncoderStub(channel)


def test_grpc_rerank_scores_best_first_with_timings(stub):
    response, call = stub.Rerank.with_call(pb.RerankRequest(id="r1", query=QUERY, documents=DOCUMENTS), timeout=30)
    expected = [sigmoid(fake_logit(QUERY, d)) for d in DOCUMENTS]
    assert response.id == "r1" and response.model == "fake-rerank"
    assert [r.index for r in response.results] == sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    for r in response.results:
        assert r.score == pytest.approx(expected[r.index], abs=1e-6)
        assert not r.HasField("attention") and not r.HasField("query_span")
    trailers = dict(call.trailing_metadata())
    assert {"x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time"} <= set(trailers)
    top = stub.Rerank(pb.RerankRequest(query=QUERY, documents=DOCUMENTS, top_n=1, raw_scores=True), timeout=30)
    assert len(top.results) == 1 and top.results[0].score == pytest.approx(max(map(fake_logit, [QUERY] * 4, DOCUMENTS)))


@pytest.mark.parametrize(
    ("method", "message", "code", "says"),
    [
        ("Rerank", pb.RerankRequest(query="q", documents=["d"], model="fake"), "INVALID_ARGUMENT", "task 'embed'"),
        ("Embed", pb.EmbedRequest(inputs=["x"], model="fake-rerank"), "INVALID_ARGUMENT", "task 'rerank'"),
        ("Predict", pb.PredictRequest(inputs=[pb.PredictInput(text="x")], model="fake"), "INVALID_ARGUMENT", "embed"),
        ("Rerank", pb.RerankRequest(query="q", documents=[]), "INVALID_ARGUMENT", "no documents"),
        ("Rerank", pb.RerankRequest(query="q", documents=["d"] * 9), "INVALID_ARGUMENT", "the limit is 8"),
        ("Rerank", pb.RerankRequest(query="q", documents=["d"], top_n=0), "INVALID_ARGUMENT", "top_n must be 1"),
        (
            "Rerank",
            pb.RerankRequest(
                query=" ".join(["the fox"] * 12), documents=["d", " ".join(["a dog"] * 12)], truncate=False
            ),
            "INVALID_ARGUMENT",
            "documents[1] with the query is longer",
        ),
        (
            "Predict",
            pb.PredictRequest(inputs=[pb.PredictInput(text="x")], top_k=1),
            "INVALID_ARGUMENT",
            "top_k chooses among a classify model's labels",
        ),
        ("Rerank", pb.RerankRequest(query="q", documents=["d"], model="nope"), "NOT_FOUND", "not served here"),
        (
            "Rerank",
            pb.RerankRequest(query="q", documents=["d"], attention=pb.AttentionSelection(block=2, rows=[0])),
            "INVALID_ARGUMENT",
            "send rows or a block, not both",
        ),
        (
            "Embed",
            pb.EmbedRequest(inputs=["x"], model="fake", attention=pb.AttentionSelection(block=2)),
            "INVALID_ARGUMENT",
            "block of a pair",
        ),
    ],
)
def test_grpc_refuses_what_rest_refuses_with_the_same_words(stub, method, message, code, says):
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(message, timeout=30)
    assert info.value.code().name == code and says in info.value.details(), info.value.details()


def test_grpc_model_info_reports_task_and_labels(stub):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model="fake-classify"), timeout=30)
    assert (info.task, list(info.labels), info.embedding_dim) == (
        "classify",
        ["contradiction", "entailment", "neutral"],
        0,
    )
    assert stub.GetModelInfo(pb.GetModelInfoRequest(model="fake"), timeout=30).task == "embed"


def test_both_clients_give_the_same_reranking_with_tokens_spans_and_attention_blocks(clients):
    attention = AttentionSelection(layers=(0, 1), heads=(1,), block="document_to_query")
    answers = {
        name: client.rerank(QUERY, DOCUMENTS, top_n=3, return_tokens=True, attention=attention)
        for name, client in clients.items()
    }
    rest, grpc_answer = answers["rest"], answers["grpc"]
    assert len(rest.results) == 3
    for a, b in zip(rest.results, grpc_answer.results, strict=True):
        assert (a.index, a.tokens, a.query_span, a.document_span) == (b.index, b.tokens, b.query_span, b.document_span)
        assert a.score == pytest.approx(b.score, abs=1e-6)
        document = b.document_span.end - b.document_span.start
        assert a.attention.shape == (2, 1, document, b.query_span.end - b.query_span.start)
        np.testing.assert_array_equal(a.attention, b.attention)
    for answer in answers.values():
        assert (answer.attention_layers, answer.attention_heads, answer.attention_block) == (
            (0, 1),
            (1,),
            "document_to_query",
        )


def test_both_clients_predict_texts_and_pairs_alike(clients):
    inputs = ["the fox", ("the fox", "the fox dog"), "a", "b"]
    answers = {name: client.predict(inputs, model="fake-classify") for name, client in clients.items()}
    assert [[p.label for p in row] for row in answers["rest"]] == [[p.label for p in row] for row in answers["grpc"]]
    for a, b in zip(answers["rest"], answers["grpc"], strict=True):
        np.testing.assert_allclose([p.score for p in a], [p.score for p in b], atol=1e-6)
    assert answers["grpc"][1][0].label == "entailment"  # 2 shared words of 3
    assert len(answers["rest"]) == 4  # a list of two lone texts is never read as one pair
    two = {name: client.predict(["a", "b"], model="fake-classify") for name, client in clients.items()}
    assert [len(rows) for rows in two.values()] == [2, 2]
    raw = clients["grpc"].predict([(QUERY, DOCUMENTS[1])], raw_scores=True)
    assert raw == [[LabelScore("score", pytest.approx(fake_logit(QUERY, DOCUMENTS[1]), abs=1e-6))]]


def test_both_clients_raise_the_servers_errors(clients):
    for client in clients.values():
        with pytest.raises(errors.InvalidRequest, match="task 'embed'"):
            client.rerank("q", ["d"], model="fake")
        with pytest.raises(errors.NotFound):
            client.predict(["x"], model="nope")


def test_grpc_rerank_is_counted_under_its_method(served, stub):
    stub.Rerank(pb.RerankRequest(query="q", documents=["d"]), timeout=30)
    text = scrape(served)
    assert metric_value(text, "mhaserve_requests_total", {"transport": "grpc", "route": "Rerank", "code": "OK"}) >= 1
