"""KServe v2 / Open Inference Protocol on both transports, through NVIDIA's official tritonclient.

Also: one input gives bit-identical embeddings over every transport the server speaks.
"""

from __future__ import annotations

import json
import struct
import time
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
from tests.support.decode import decode_float32
from tests.support.http import post, scrape
from tests.support.prometheus import metric_value
from tests.support.server import launch

MODEL = "all-minilm-l6-v2"
KEY = "kserve-test-key"
SENTENCES = [
    "A man is playing a guitar.",
    "Attention is all you need.",
    "short",
    "A considerably longer sentence that goes on and on, so that the batch holds inputs of different lengths.",
]
OUTPUTS = ("embedding", "token_embeddings", "attention", "lengths")


def text_input(module, texts: list[str], binary: bool = True):
    tensor = module.InferInput("text", [len(texts)], "BYTES")
    data = np.array([t.encode() for t in texts], dtype=object)
    if module is triton_http:
        tensor.set_data_from_numpy(data, binary_data=binary)
    else:
        tensor.set_data_from_numpy(data)
    return tensor


def rest_embed(server, body: dict) -> dict:
    response = post(server, "/v1/embed", {"encoding": "base64", **body})
    assert response.status_code == 200, response.text
    return response.json()


def response_json(result) -> dict:
    """The response header as a dict, from either flavour's InferResult."""
    return result.get_response() if isinstance(result, triton_http.InferResult) else result.get_response(as_json=True)


@pytest.fixture(scope="module")
def http_client(server) -> Iterator[triton_http.InferenceServerClient]:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server) -> Iterator[triton_grpc.InferenceServerClient]:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


@pytest.fixture(params=["http", "grpc"])
def client(request, http_client, grpc_client):
    """Each test that takes `client` runs once per tritonclient flavour."""
    return (triton_http, http_client) if request.param == "http" else (triton_grpc, grpc_client)


# inference -------------------------------------------------------------------------------


def test_tritonclient_infer_returns_the_same_embeddings_as_rest(server, client):
    module, triton = client
    result = triton.infer(MODEL, [text_input(module, SENTENCES)], request_id="r-7")
    assert response_json(result)["id"] == "r-7"
    embedding = result.as_numpy("embedding")
    assert embedding.dtype == np.float32 and embedding.shape == (len(SENTENCES), 384)
    rest = rest_embed(server, {"inputs": SENTENCES})
    np.testing.assert_array_equal(embedding, np.stack([decode_float32(v, [384]) for v in rest["embeddings"]]))
    assert result.as_numpy("token_embeddings") is None  # only asked-for outputs come back


def test_padded_token_embeddings_and_attention_with_lengths(server, client):
    module, triton = client
    outputs = [module.InferRequestedOutput(name) for name in OUTPUTS]
    parameters = {"attention_layers": "0,5", "attention_heads": "3"}
    result = triton.infer(MODEL, [text_input(module, SENTENCES)], outputs=outputs, parameters=parameters)
    lengths = result.as_numpy("lengths")
    token_embeddings, attention = result.as_numpy("token_embeddings"), result.as_numpy("attention")
    longest = int(lengths.max())
    assert lengths.dtype == np.int32
    assert token_embeddings.shape == (len(SENTENCES), longest, 384)
    assert attention.shape == (len(SENTENCES), 2, 1, longest, longest)
    rest = rest_embed(
        server,
        {"inputs": SENTENCES, "return_token_embeddings": True, "return_attention": {"layers": [0, 5], "heads": [3]}},
    )
    for i, n in enumerate(lengths):
        expected = rest["token_embeddings"][i]
        np.testing.assert_array_equal(token_embeddings[i, :n], decode_float32(expected["data"], expected["shape"]))
        assert not token_embeddings[i, n:].any()
        expected = rest["attention"][i]
        np.testing.assert_array_equal(attention[i, :, :, :n, :n], decode_float32(expected["data"], expected["shape"]))
        assert not attention[i, :, :, n:].any() and not attention[i, :, :, :, n:].any()


def test_parameters_add_outputs_when_none_are_listed(client):
    module, triton = client
    parameters = {"return_token_embeddings": True, "pooling": "cls", "normalize": False}
    result = triton.infer(MODEL, [text_input(module, ["hello there"])], parameters=parameters)
    names = [o["name"] for o in response_json(result)["outputs"]]
    assert names == ["embedding", "token_embeddings", "lengths"]
    # cls pooling, unnormalised: the first token's state itself
    np.testing.assert_array_equal(result.as_numpy("embedding")[0], result.as_numpy("token_embeddings")[0, 0])


def test_json_tensors_without_the_binary_extension(server, http_client):
    tensor = text_input(triton_http, SENTENCES[:2], binary=False)
    output = triton_http.InferRequestedOutput("embedding", binary_data=False)
    result = http_client.infer(MODEL, [tensor], outputs=[output])
    rest = rest_embed(server, {"inputs": SENTENCES[:2]})
    np.testing.assert_array_equal(result.as_numpy("embedding")[1], decode_float32(rest["embeddings"][1], [384]))
    # and as a plain client would write it, nested [n, 1] shape included
    body = {
        "id": "plain",
        "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [[SENTENCES[0]], [SENTENCES[1]]]}],
    }
    answer = post(server, f"/v2/models/{MODEL}/infer", body).json()
    assert answer["id"] == "plain" and answer["model_name"] == MODEL
    (embedding,) = answer["outputs"]
    assert (embedding["name"], embedding["datatype"], embedding["shape"]) == ("embedding", "FP32", [2, 384])
    np.testing.assert_array_equal(np.float32(embedding["data"][384:]), decode_float32(rest["embeddings"][1], [384]))


def test_same_input_gives_bit_identical_embeddings_over_rest_grpc_and_kserve(server, http_client, grpc_client):
    with grpc.insecure_channel(server.grpc_target) as channel:
        encoder = encoder_pb2_grpc.EncoderStub(channel)
        for text in SENTENCES:
            packed = rest_embed(server, {"inputs": [text]})["embeddings"][0]
            floats = post(server, "/v1/embed", {"inputs": [text]}).json()["embeddings"][0]
            openai = post(server, "/v1/embeddings", {"input": text}).json()
            over = {
                "rest base64": decode_float32(packed, [384]),
                "rest float": np.float32(floats),
                "openai": np.float32(openai["data"][0]["embedding"]),
                "grpc": np.float32(encoder.Embed(pb.EmbedRequest(inputs=[text]), timeout=60).embeddings[0].values),
                "kserve http": http_client.infer(MODEL, [text_input(triton_http, [text])]).as_numpy("embedding")[0],
                "kserve http json": http_client.infer(
                    MODEL,
                    [text_input(triton_http, [text], binary=False)],
                    outputs=[triton_http.InferRequestedOutput("embedding", binary_data=False)],
                ).as_numpy("embedding")[0],
                "kserve grpc": grpc_client.infer(MODEL, [text_input(triton_grpc, [text])]).as_numpy("embedding")[0],
            }
            first = over["rest base64"]
            for transport, vector in over.items():
                assert vector.tobytes() == first.tobytes(), f"{transport} differs for {text!r}"


# health and metadata ---------------------------------------------------------------------


def test_health_and_metadata(client):
    module, triton = client
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(MODEL)
    assert triton.is_model_ready(MODEL, model_version="1")
    server_metadata = triton.get_server_metadata(**({"as_json": True} if module is triton_grpc else {}))
    assert server_metadata["name"] == "mhaserve" and "binary_tensor_data" in server_metadata["extensions"]
    metadata = triton.get_model_metadata(MODEL, **({"as_json": True} if module is triton_grpc else {}))
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"] and metadata["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("text", "BYTES")]
    outputs = {t["name"]: (t["datatype"], [int(n) for n in t["shape"]]) for t in metadata["outputs"]}
    assert outputs == {
        "embedding": ("FP32", [-1, 384]),
        "token_embeddings": ("FP32", [-1, -1, 384]),
        "attention": ("FP32", [-1, -1, -1, -1, -1]),
        "lengths": ("INT32", [-1]),
    }


def test_rest_health_routes(server):
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{server.url}/v2/models/{MODEL}/ready").status_code == 200
    missing = httpx.get(server.url + "/v2/models/nope/ready")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


# errors ----------------------------------------------------------------------------------


def ids_input(module):
    return module.InferInput("ids", [1], "INT64").set_data_from_numpy(np.zeros(1, np.int64))


def attention_of_head_12(module, triton):
    outputs = [module.InferRequestedOutput("attention")]
    return triton.infer(MODEL, [text_input(module, ["x"])], outputs=outputs, parameters={"attention_heads": "12"})


BAD_REQUESTS = {
    "model": (lambda m, t: t.infer("nope", [text_input(m, ["x"])]), "not_found", "not served here"),
    "version": (lambda m, t: t.infer(MODEL, [text_input(m, ["x"])], model_version="9"), "not_found", "no version"),
    "input": (lambda m, t: t.infer(MODEL, [ids_input(m)]), "invalid", "unknown input 'ids'"),
    "output": (
        lambda m, t: t.infer(MODEL, [text_input(m, ["x"])], outputs=[m.InferRequestedOutput("logits")]),
        "invalid",
        "unknown output 'logits'",
    ),
    "parameter": (
        lambda m, t: t.infer(MODEL, [text_input(m, ["x"])], parameters={"temperature": 1}),
        "invalid",
        "unknown parameter 'temperature'",
    ),
    "layers": (
        lambda m, t: t.infer(MODEL, [text_input(m, ["x"])], parameters={"attention_layers": "x"}),
        "invalid",
        "attention_layers",
    ),
    "empty": (lambda m, t: t.infer(MODEL, [text_input(m, [""])]), "invalid", "empty string"),
    "head": (attention_of_head_12, "invalid", "head 12"),
}
STATUS = {
    ("http", "not_found"): "404",
    ("http", "invalid"): "422",
    ("grpc", "not_found"): "StatusCode.NOT_FOUND",
    ("grpc", "invalid"): "StatusCode.INVALID_ARGUMENT",
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_say_what_to_change(client, case):
    module, triton = client
    call, kind, fragment = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as failure:
        call(module, triton)
    assert fragment in failure.value.message()
    assert failure.value.status() == STATUS[("http" if module is triton_http else "grpc", kind)]


def binary_request(raw: bytes, count: int, declared: int | None = None) -> tuple[bytes, int]:
    """A binary-extension body: the JSON header, then `raw` as the BYTES tensor's data."""
    size = len(raw) if declared is None else declared
    tensor = {"name": "text", "shape": [count], "datatype": "BYTES", "parameters": {"binary_data_size": size}}
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + raw, len(header)


def bytes_elements(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def test_malformed_binary_bodies_are_refused_in_the_protocols_error_shape(server):
    url = f"{server.url}/v2/models/{MODEL}/infer"
    body, header_length = binary_request(bytes_elements(["fine", "also fine"]), 2)
    ok = httpx.post(url, content=body, headers={"Inference-Header-Content-Length": str(header_length)}, timeout=60)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [2, 384]
    cases = [
        (body, len(body) + 1, "does not fit"),
        (body[:-3], header_length, "does not match"),
        (*binary_request(struct.pack("<I", 9) + b"ab", 1), "past the data"),
        (*binary_request(bytes_elements(["one", "two"]), 3), "but 2 elements"),
        (b"not json", None, "not valid JSON"),
    ]
    for content, length, fragment in cases:
        headers = {"Inference-Header-Content-Length": str(length)} if length is not None else {}
        response = httpx.post(url, content=content, headers=headers, timeout=60)
        assert response.status_code == 422, (fragment, response.text)
        assert isinstance(response.json()["error"], str) and fragment in response.json()["error"]


def test_grpc_request_bytes_that_do_not_parse_are_invalid_argument(server):
    with grpc.insecure_channel(server.grpc_target) as channel, pytest.raises(grpc.RpcError) as failure:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\x2a\xff\xff", timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inference.ModelInferRequest" in failure.value.details()


def test_grpc_calls_are_counted_by_method(server, grpc_client):
    before = scrape(server)
    grpc_client.infer(MODEL, [text_input(triton_grpc, ["counted"])])
    after = scrape(server)
    labels = {"transport": "grpc", "route": "ModelInfer", "code": "OK"}
    assert (
        metric_value(after, "mhaserve_requests_total", labels) - metric_value(before, "mhaserve_requests_total", labels)
        == 1
    )


# keys and deadlines ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(artifact):
    process = launch(
        "--api-keys", KEY, "--max-wait-ms", "2000", "--batch-wait", "always"
    )  # slow batches: room for deadlines
    yield process
    process.stop()


def key_header() -> dict[str, str]:
    # a new dict each call: tritonclient.http adds its own headers to the dict it is given
    return {"authorization": f"Bearer {KEY}"}


def test_api_key_guards_inference_and_metadata_but_not_health(keyed_server):
    http = triton_http.InferenceServerClient(f"127.0.0.1:{keyed_server.http_port}")
    grpc_flavour = triton_grpc.InferenceServerClient(keyed_server.grpc_target)
    try:
        for module, triton, refused in [
            (triton_http, http, "401"),
            (triton_grpc, grpc_flavour, "StatusCode.UNAUTHENTICATED"),
        ]:
            assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(MODEL)
            for call in (
                lambda h, m=module, t=triton: t.infer(MODEL, [text_input(m, ["x"])], headers=h),
                lambda h, t=triton: t.get_model_metadata(MODEL, headers=h),
            ):
                for headers in (None, {"authorization": "Bearer wrong"}):
                    with pytest.raises(InferenceServerException) as failure:
                        call(headers)
                    assert failure.value.status() == refused
                call(key_header())
    finally:
        http.close()
        grpc_flavour.close()


def test_deadlines_from_the_timeout_parameter_and_the_grpc_deadline(keyed_server):
    http = triton_http.InferenceServerClient(f"127.0.0.1:{keyed_server.http_port}")
    grpc_flavour = triton_grpc.InferenceServerClient(keyed_server.grpc_target)
    try:
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as failure:
            http.infer(MODEL, [text_input(triton_http, ["waits 2 s"])], headers=key_header(), timeout=300_000)  # 0.3 s
        assert failure.value.status() == "504" and time.monotonic() - started < 1.5
        with pytest.raises(InferenceServerException) as failure:
            inputs = [text_input(triton_grpc, ["waits 2 s"])]
            grpc_flavour.infer(MODEL, inputs, headers=key_header(), client_timeout=0.3)
        assert failure.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    finally:
        http.close()
        grpc_flavour.close()
