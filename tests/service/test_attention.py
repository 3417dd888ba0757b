"""Head reductions, rollout and rows against a real server on every transport, compared with
transformers' eager attention and numpy (tests/support/attention.py), not with the server's code."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from service.client import GrpcClient, RestClient
from service.errors import InvalidRequest
from service.types import AttentionSelection
from tests.support.attention import expected_answer, transformers_attention
from tests.support.http import post

MODEL = "all-minilm-l6-v2"
SHORT = "The cat sat on the mat because it was tired."
LONG = " ".join(
    [
        "Attention rollout follows how information flows from the input tokens through the layers of a",
        "transformer encoder, mixing each layer's attention with the identity to account for the residual",
        "connections, and multiplying the layers together from the first to the last.",
    ]
    * 4
)  # 214 tokens: every head of it fits the default --max-attention-values
ALL_LAYERS, ALL_HEADS = list(range(6)), list(range(12))
OPTIONS = [
    dict(),
    dict(reduce_heads="mean"),
    dict(reduce_heads="max"),
    dict(layers=[4, 1], heads=[0, 7, 11], rows=[0, 3]),
    dict(rollout=True),
    dict(rollout=True, rows=[0]),
    dict(rollout=True, reduce_heads="max", layers=[0, 2, 5]),
    dict(reduce_heads="mean", heads=[2, 9], rows=[5, 1]),
]


def option_id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "all-heads"


def expected(truth: np.ndarray, options: dict) -> np.ndarray:
    return expected_answer(
        truth,
        options.get("layers", ALL_LAYERS),
        options.get("heads", ALL_HEADS),
        options.get("reduce_heads", "none"),
        options.get("rollout", False),
        options.get("rows"),
    )


def selection(options: dict) -> AttentionSelection:
    return AttentionSelection(
        layers=tuple(options["layers"]) if "layers" in options else None,
        heads=tuple(options["heads"]) if "heads" in options else None,
        reduce_heads=options.get("reduce_heads", "none"),
        rollout=options.get("rollout", False),
        rows=tuple(options["rows"]) if "rows" in options else None,
    )


@pytest.fixture(scope="module")
def texts(server) -> dict[str, list[int]]:
    with RestClient(server.url) as client:
        tokens = client.tokenize([SHORT, LONG])
    ids = {SHORT: [t.id for t in tokens[0]], LONG: [t.id for t in tokens[1]]}
    assert len(ids[SHORT]) < 20 and 200 < len(ids[LONG]) <= 256
    return ids


@pytest.fixture(scope="module")
def truth(texts) -> dict[str, np.ndarray]:
    return dict(zip(texts, transformers_attention(list(texts.values())), strict=True))


@pytest.fixture(scope="module")
def rest(server) -> Iterator[RestClient]:
    with RestClient(server.url, timeout_s=120) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(server) -> Iterator[GrpcClient]:
    with GrpcClient(server.grpc_target, timeout_s=120) as client:
        yield client


@pytest.mark.parametrize("options", OPTIONS, ids=option_id)
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_answers_equal_transformers_attention_reduced_in_numpy(transport, options, rest, grpc_client, truth):
    client = rest if transport == "rest" else grpc_client
    result = client.embed([SHORT, LONG], attention=selection(options))
    for text, answer in zip(truth, result.attention, strict=True):
        want = expected(truth[text], options)
        assert answer.shape == want.shape
        np.testing.assert_allclose(answer, want, atol=1e-4)
        assert (answer >= 0).all()
        if options.get("rollout") or options.get("reduce_heads") != "max":
            np.testing.assert_allclose(answer.sum(-1), 1.0, atol=1e-4)
    assert result.attention_layers == tuple(options.get("layers", ALL_LAYERS))
    assert result.attention_reduce_heads == options.get("reduce_heads", "none")
    assert result.attention_rollout == options.get("rollout", False)
    assert result.attention_rows == (tuple(options["rows"]) if "rows" in options else None)


@pytest.mark.parametrize("module", [triton_http, triton_grpc], ids=["http", "grpc"])
def test_kserve_parameters_give_the_same_answers_padded_to_the_longest_input(module, server, truth):
    target = server.grpc_target if module is triton_grpc else f"127.0.0.1:{server.http_port}"
    client = module.InferenceServerClient(target)
    try:
        text = module.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array([SHORT.encode(), LONG.encode()], dtype=object))
        outputs = [module.InferRequestedOutput("attention"), module.InferRequestedOutput("lengths")]
        for parameters, options in [
            ({"attention_rollout": True, "attention_rows": "0"}, dict(rollout=True, rows=[0])),
            ({"attention_reduce_heads": "mean", "attention_layers": "5,0"}, dict(reduce_heads="mean", layers=[5, 0])),
            ({"attention_reduce_heads": "max", "attention_rows": "2,0"}, dict(reduce_heads="max", rows=[2, 0])),
        ]:
            result = client.infer(MODEL, [text], outputs=outputs, parameters=parameters)
            attention, lengths = result.as_numpy("attention"), result.as_numpy("lengths")
            for i, (name, n) in enumerate(zip(truth, lengths, strict=True)):
                want = expected(truth[name], options)
                got = attention[i, :, :, : want.shape[2], :n]
                np.testing.assert_allclose(got, want, atol=1e-4)
                assert not attention[i, :, :, :, n:].any()
    finally:
        client.close()


def kserve_attention(server, texts: list[str], parameters: dict) -> list[np.ndarray]:
    """Each input's answer, cut from the padded KServe tensor by its length."""
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        text = triton_http.InferInput("text", [len(texts)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
        outputs = [triton_http.InferRequestedOutput("attention"), triton_http.InferRequestedOutput("lengths")]
        result = client.infer(MODEL, [text], outputs=outputs, parameters=parameters)
    finally:
        client.close()
    attention, lengths = result.as_numpy("attention"), result.as_numpy("lengths")
    rows = len(parameters["attention_rows"].split(",")) if "attention_rows" in parameters else None
    return [attention[i, :, :, : rows or n, :n] for i, n in enumerate(lengths)]


def answers_on(transport: str, server, rest, grpc_client, texts: list[str], options: dict) -> list[np.ndarray]:
    if transport == "kserve":
        parameters = {f"attention_{k}": ",".join(map(str, v)) if isinstance(v, list) else v for k, v in options.items()}
        return kserve_attention(server, texts, parameters)
    client = rest if transport == "rest" else grpc_client
    return client.embed(texts, attention=selection(options)).attention


@pytest.mark.parametrize("transport", ["rest", "grpc", "kserve"])
def test_properties_hold_on_every_transport(transport, server, rest, grpc_client):
    texts = [SHORT, "A man is playing a guitar.", LONG]
    per_head = answers_on(transport, server, rest, grpc_client, texts, {})
    mean = answers_on(transport, server, rest, grpc_client, texts, {"reduce_heads": "mean"})
    rows = answers_on(transport, server, rest, grpc_client, texts, {"rows": [0, 4]})
    rollout = answers_on(transport, server, rest, grpc_client, texts, {"rollout": True})
    for i, text in enumerate(texts):
        for answer in (per_head[i], mean[i], rows[i], rollout[i]):
            assert (answer >= 0).all()
            np.testing.assert_allclose(answer.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(mean[i], per_head[i].mean(axis=1, keepdims=True), atol=1e-6)
        np.testing.assert_array_equal(rows[i], per_head[i][:, :, [0, 4]])
        # alone (no padding) and in another order: the same answer
        alone = answers_on(transport, server, rest, grpc_client, [text], {"rollout": True})[0]
        np.testing.assert_allclose(alone, rollout[i], atol=1e-5)
    reordered = answers_on(transport, server, rest, grpc_client, texts[::-1], {"rollout": True})
    for i in range(len(texts)):
        np.testing.assert_allclose(reordered[::-1][i], rollout[i], atol=1e-5)


def test_a_rollout_cls_row_of_a_250_token_text_is_under_a_fiftieth_of_all_heads(start_server):
    server = start_server("--max-attention-values", "5000000")  # all heads of 250 tokens: 4.5 M values
    text = " ".join(["word"] * 248)  # [CLS] + 248 + [SEP]
    sizes = {}
    for name, attention in [("all", {}), ("rollout", {"rollout": True, "rows": [0]})]:
        response = post(server, "/v1/embed", {"inputs": [text], "return_attention": attention, "encoding": "base64"})
        assert response.status_code == 200, response.text
        assert response.json()["attention"][0]["shape"][-1] == 250
        sizes[name] = len(response.content)
    assert sizes["rollout"] * 50 < sizes["all"], sizes


@pytest.mark.parametrize(
    ("attention", "message"),
    [
        ({"rows": [40]}, "attention row 40 is outside input 0 (0-based), which is 13 tokens long"),
        ({"rows": []}, "the attention row selection is empty"),
        ({"layers": []}, "the attention layer selection is empty"),
        ({"heads": []}, "the attention head selection is empty"),
        ({"reduce_heads": "median"}, "'none', 'mean' or 'max'"),
        ({"rollout": "yes"}, "rollout"),
        ({"rows": [-1]}, "not a token position"),
        ({"rows": "first"}, "rows"),
    ],
)
def test_bad_options_are_422_saying_what_to_send_on_rest(server, attention, message):
    response = post(server, "/v1/embed", {"inputs": [SHORT], "return_attention": attention})
    assert response.status_code == 422, response.text
    assert message in response.text


@pytest.fixture(scope="module")
def stub(server) -> Iterator[encoder_pb2_grpc.EncoderStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield encoder_pb2_grpc.EncoderStub(channel)


@pytest.mark.parametrize(
    ("attention", "message"),
    [
        (pb.AttentionSelection(rows=[40]), "attention row 40 is outside input 0 (0-based), which is 13 tokens long"),
        (pb.AttentionSelection(reduce_heads=7), "is not a known HeadReduction value"),
        (pb.AttentionSelection(rows=[-2]), "not a token position"),
        (pb.AttentionSelection(layers=[6]), "layer 6 does not exist"),
    ],
)
def test_bad_options_are_invalid_argument_on_grpc(stub, attention, message):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Embed(pb.EmbedRequest(inputs=[SHORT], attention=attention), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_unset_lists_on_grpc_mean_all_as_omitting_them_does_on_rest(stub, server):
    response = stub.Embed(pb.EmbedRequest(inputs=[SHORT], attention=pb.AttentionSelection(rollout=True)), timeout=60)
    rest = post(server, "/v1/embed", {"inputs": [SHORT], "return_attention": {"rollout": True}}).json()
    assert list(response.attention_layers) == rest["attention"][0]["layers"] == ALL_LAYERS
    assert list(response.attention_rows) == [] and rest["attention"][0]["rows"] == "all"
    assert response.attention_rollout and response.attention_reduce_heads == pb.HEAD_REDUCTION_NONE


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"attention_rows": "40"}, "attention row 40 is outside input 0 (0-based), which is 13 tokens long"),
        ({"attention_rows": ""}, "the attention row selection is empty"),
        ({"attention_layers": ""}, "the attention layer selection is empty"),
        ({"attention_reduce_heads": "median"}, "'none', 'mean' or 'max'"),
        ({"attention_rollout": "yes"}, "'attention_rollout' must be a bool"),
    ],
)
def test_bad_options_are_refused_on_kserve(server, parameters, message):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        text = triton_http.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([SHORT.encode()], dtype=object))
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [text], outputs=[triton_http.InferRequestedOutput("attention")], parameters=parameters)
        assert message in str(caught.value)
    finally:
        client.close()


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_the_client_refuses_an_empty_selection_on_both_transports(transport, rest, grpc_client):
    client = rest if transport == "rest" else grpc_client
    with pytest.raises(InvalidRequest, match="the attention layer selection is empty"):
        client.embed(SHORT, attention=AttentionSelection(layers=()))


def test_openapi_documents_the_options_with_examples(server):
    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    body = schema["components"]["schemas"]["AttentionBody"]
    assert {"reduce_heads", "rollout", "rows"} <= set(body["properties"])
    assert body["examples"]
    examples = schema["paths"]["/v1/embed"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert examples["rollout_cls_row"]["value"]["return_attention"] == {"rollout": True, "rows": [0]}
