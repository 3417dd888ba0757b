"""service.client: RestClient and GrpcClient give the same typed answers and raise the same errors."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from service import errors
from service.backends.fake import FAKE_SPEC
from service.client import Embeddings, GrpcClient, RestClient, embed_message
from service.types import AttentionSelection
from tests.support.server import REPO, launch

KEY = "client-test-key"
TEXTS = ["Attention is all you need.", "short", "A longer sentence, so the two inputs differ in length."]


@pytest.fixture(scope="module")
def rest(server) -> Iterator[RestClient]:
    with RestClient(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(server) -> Iterator[GrpcClient]:
    with GrpcClient(server.grpc_target) as client:
        yield client


@pytest.fixture(params=["rest", "grpc"])
def client(request, rest, grpc_client) -> RestClient | GrpcClient:
    return rest if request.param == "rest" else grpc_client


def test_embed_returns_float32_arrays_equal_to_in_process_onnxruntime(client, reference):
    answer = client.embed(TEXTS)
    assert isinstance(answer, Embeddings) and answer.model == "all-minilm-l6-v2"
    assert answer.embeddings.dtype == np.float32 and answer.embeddings.shape == (3, 384)
    for text, vector in zip(TEXTS, answer.embeddings, strict=True):
        np.testing.assert_allclose(vector, reference.embedding(text), atol=1e-5)
    assert answer.usage_tokens == sum(len(reference.ids(t)) for t in TEXTS)
    assert answer.tokens is None and answer.token_embeddings is None and answer.attention is None


def test_both_clients_give_identical_answers_with_every_option(rest, grpc_client):
    options = {
        "pooling": "cls",
        "normalize": False,
        "return_tokens": True,
        "return_token_embeddings": True,
        "attention": AttentionSelection(layers=(1, 4), heads=None),
    }
    over_rest, over_grpc = rest.embed(TEXTS, **options), grpc_client.embed(TEXTS, **options)
    np.testing.assert_array_equal(over_rest.embeddings, over_grpc.embeddings)
    assert over_rest.tokens == over_grpc.tokens
    assert over_rest.attention_layers == over_grpc.attention_layers == (1, 4)
    assert over_rest.attention_heads == over_grpc.attention_heads == tuple(range(12))
    for i, tokens in enumerate(over_rest.tokens):
        n = len(tokens)
        assert over_rest.token_embeddings[i].shape == over_grpc.token_embeddings[i].shape == (n, 384)
        np.testing.assert_array_equal(over_rest.token_embeddings[i], over_grpc.token_embeddings[i])
        assert over_grpc.attention[i].shape == (2, 12, n, n)
        np.testing.assert_array_equal(over_rest.attention[i], over_grpc.attention[i])


def test_tokenize_model_info_and_health(rest, grpc_client, reference):
    assert rest.tokenize("unbelievable") == grpc_client.tokenize("unbelievable")
    assert [t.id for t in grpc_client.tokenize("unbelievable")[0]] == reference.ids("unbelievable")
    (card,) = rest.models()
    info = grpc_client.model_info()
    assert card == info  # every field, over both transports
    assert (card.name, card.provider, card.precision, card.graph) == (
        "all-minilm-l6-v2",
        "CPUExecutionProvider",
        "fp32",
        "fast.onnx",
    )
    assert rest.live() and rest.ready() and grpc_client.serving() and grpc_client.serving("mhaserve.v1.Encoder")


def test_embed_stream_yields_every_answer_with_its_id(grpc_client, reference):
    requests = [embed_message(text, request_id=f"t{i}") for i, text in enumerate(TEXTS)]
    requests.append(embed_message([], request_id="empty"))
    answers = dict(grpc_client.embed_stream(requests))
    assert set(answers) == {"t0", "t1", "t2", "empty"}
    assert isinstance(answers["empty"], errors.InvalidRequest)
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(answers[f"t{i}"].embeddings[0], reference.embedding(text), atol=1e-5)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.embed([]), errors.InvalidRequest),
        (lambda c: c.embed("x", attention=AttentionSelection(layers=(7,))), errors.InvalidRequest),
        (lambda c: c.tokenize(["fine", ""]), errors.InvalidRequest),
        (lambda c: c.embed("word " * 300, attention=AttentionSelection()), errors.PayloadTooLarge),
    ],
    ids=["empty", "layer", "empty-string", "attention-too-large"],
)
def test_errors_are_the_servers_own_types(client, call, error):
    with pytest.raises(error):
        call(client)


@pytest.fixture(scope="module")
def guarded():
    process = launch(
        "--api-keys", KEY, "--max-wait-ms", "2000", "--batch-wait", "always", model_dir=None
    )  # slow batches: room for deadlines; keys and deadlines are the transports', whatever computes
    yield process
    process.stop()


def test_api_keys_and_deadlines_raise_typed_errors(guarded):
    clients = [
        (RestClient(guarded.url), RestClient(guarded.url, api_key=KEY)),
        (GrpcClient(guarded.grpc_target), GrpcClient(guarded.grpc_target, api_key=KEY)),
    ]
    for anonymous, keyed in clients:
        with anonymous, keyed:
            with pytest.raises(errors.Unauthenticated):
                anonymous.embed("x")
            with pytest.raises(errors.DeadlineExceeded):
                keyed.embed("waits up to 2 s for company", timeout_s=0.3)
            assert keyed.embed("x", timeout_s=10).embeddings.shape == (1, FAKE_SPEC.embedding_dim)


def test_the_grpc_docs_python_examples_run_against_a_real_server(server):
    """The stub, timing-metadata, typed-client and tritonclient examples of docs/grpc.md, each in a
    fresh interpreter."""
    page = (REPO / "docs" / "grpc.md").read_text()
    examples = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(examples) == 4
    for example in examples:
        code = example.replace("localhost:50051", server.grpc_target).replace("http://localhost:8000", server.url)
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{example}\n{result.stderr[-2000:]}"
