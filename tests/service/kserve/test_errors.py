"""KServe v2's refusals on `--backend fake` servers, through tritonclient and raw bytes: every bad
request says what to change in the protocol's error shape, malformed binary bodies too; calls are
counted by method; keys guard inference and metadata but not health; deadlines come from the
timeout parameter and the gRPC deadline."""

from __future__ import annotations

import json
import struct
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service.backends.fake import FAKE_SPEC
from tests.support.http import scrape
from tests.support.kserve import text_input
from tests.support.prometheus import metric_value
from tests.support.server import launch

MODEL = FAKE_SPEC.name
KEY = "kserve-test-key"


@pytest.fixture(scope="module")
def served(fake_server):
    """Refusals are the protocol's, whatever computes."""
    return fake_server


def ids_input(module):
    return module.InferInput("ids", [1], "INT64").set_data_from_numpy(np.zeros(1, np.int64))


def attention_of_head_2(module, triton):  # the fake has heads 0 and 1
    outputs = [module.InferRequestedOutput("attention")]
    return triton.infer(MODEL, [text_input(module, ["x"])], outputs=outputs, parameters={"attention_heads": "2"})


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
    "head": (attention_of_head_2, "invalid", "head 2 does not exist"),
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


def test_malformed_binary_bodies_are_refused_in_the_protocols_error_shape(fake_server):
    url = f"{fake_server.url}/v2/models/{MODEL}/infer"
    body, header_length = binary_request(bytes_elements(["fine", "also fine"]), 2)
    ok = httpx.post(url, content=body, headers={"Inference-Header-Content-Length": str(header_length)}, timeout=60)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [2, FAKE_SPEC.embedding_dim]
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


def test_grpc_request_bytes_that_do_not_parse_are_invalid_argument(fake_server):
    with grpc.insecure_channel(fake_server.grpc_target) as channel, pytest.raises(grpc.RpcError) as failure:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(b"\x2a\xff\xff", timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inference.ModelInferRequest" in failure.value.details()


def test_grpc_calls_are_counted_by_method(fake_server, grpc_client):
    before = scrape(fake_server)
    grpc_client.infer(MODEL, [text_input(triton_grpc, ["counted"])])
    after = scrape(fake_server)
    labels = {"transport": "grpc", "route": "ModelInfer", "code": "OK"}
    assert (
        metric_value(after, "mhaserve_requests_total", labels) - metric_value(before, "mhaserve_requests_total", labels)
        == 1
    )


# keys and deadlines ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server():
    process = launch(
        "--api-keys", KEY, "--max-wait-ms", "2000", "--batch-wait", "always", model_dir=None
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
