"""KServe v2 / Open Inference Protocol on both transports on the default model, through NVIDIA's
official tritonclient: the answers equal REST's, and one input gives bit-identical embeddings over
every transport the server speaks; health and the model's metadata."""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from tests.support.decode import decode_float32
from tests.support.http import post
from tests.support.kserve import response_json, text_input

MODEL = "all-minilm-l6-v2"
SENTENCES = [
    "A man is playing a guitar.",
    "Attention is all you need.",
    "short",
    "A considerably longer sentence that goes on and on, so that the batch holds inputs of different lengths.",
]
OUTPUTS = ("embedding", "token_embeddings", "attention", "lengths")


def rest_embed(server, body: dict) -> dict:
    response = post(server, "/v1/embed", {"encoding": "base64", **body})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def served(server):
    """The default model: these tests compare numbers across transports."""
    return server


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
