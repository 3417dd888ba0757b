"""Promise 9: with API keys configured (several, from a file and the environment), every data route
of every transport refuses a missing or wrong key, health stays open, /metrics is keyed by a setting,
and no key ever shows up in the log, the metrics or an error body. Keys are checked at the edges,
whatever computes: the server here runs `--backend fake`."""

from __future__ import annotations

import re
import secrets

import grpc
import httpx
import pytest

from service.backends.fake import FAKE_SPEC
from tests.support.server import REPO, launch

MODEL = FAKE_SPEC.name
FILE_KEYS = (f"file-key-{secrets.token_hex(8)}", f"file-key-{secrets.token_hex(8)}")
ENV_KEY = f"env-key-{secrets.token_hex(8)}"
WRONG_KEY = f"wrong-key-{secrets.token_hex(8)}"
# Routes anyone may call: health (probes), the /ui page's own files, the API's description.
OPEN_ROUTES = {
    "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready",
    "/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready",
}  # fmt: skip
BODIES = {
    "/v1/embed": {"inputs": ["a key check"]},
    "/v1/embeddings": {"input": "a key check", "model": MODEL},
    "/v1/tokenize": {"inputs": "a key check"},
    "/v2/models/{name}/infer": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
    "/v2/models/{name}/versions/{version}/infer": {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]
    },
    "/rerank": {"query": "a key check", "texts": ["a"]},
    "/v1/rerank": {"query": "a key check", "documents": ["a"]},
    "/predict": {"inputs": "a key check"},
}
# the keyed server serves an embedder: with a valid key, a cross-encoder's route gets past the key
# check to the refusal that names the model's task
PAST_THE_KEY = {"/rerank": 400, "/v1/rerank": 400, "/predict": 400}  # past the key: the model is an embedder
ENCODER_METHODS = ("Embed", "Tokenize", "GetModelInfo", "Rerank", "Predict")
KSERVE_KEYED = ("ServerMetadata", "ModelMetadata", "ModelInfer")
KSERVE_OPEN = ("ServerLive", "ServerReady", "ModelReady")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "api-keys"
    key_file.write_text(f"# mounted from a Secret\n{FILE_KEYS[0]}\n\n{FILE_KEYS[1]}\n")
    server = launch(
        "--api-key-file", str(key_file), "--metrics-require-key", "true", "--log-level", "debug",
        env={"MHASERVE_API_KEYS": ENV_KEY}, model_dir=None,
    )  # fmt: skip
    yield server
    server.stop()


def operations(server) -> list[tuple[str, str]]:
    schema = httpx.get(server.url + "/openapi.json", timeout=10).json()
    return [(method.upper(), path) for path, item in schema["paths"].items() for method in item]


def call(server, method: str, path: str, key: str | None) -> httpx.Response:
    url = server.url + path.replace("{name}", MODEL).replace("{version}", "1")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, url, json=BODIES.get(path), headers=headers, timeout=30)


def grpc_call(server, path: str, key: str | None, payload: bytes = b"") -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {key}"),) if key else ()
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            channel.unary_unary(path)(payload, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_every_rest_data_route_refuses_a_missing_or_wrong_key(keyed):
    keyed_operations = [(m, p) for m, p in operations(keyed) if p not in OPEN_ROUTES and p != "/metrics"]
    known = {("POST", "/v1/embed"), ("POST", "/v1/embeddings"), ("POST", "/v1/tokenize"), ("GET", "/v1/models")}
    known |= {("GET", "/v2"), ("GET", "/v2/models/{name}"), ("POST", "/v2/models/{name}/infer")}
    known |= {("POST", path) for path in PAST_THE_KEY}
    assert known <= set(keyed_operations), keyed_operations
    for method, path in keyed_operations:
        for key in (None, WRONG_KEY):
            response = call(keyed, method, path, key)
            assert response.status_code == 401, (method, path, key, response.text)
            assert WRONG_KEY not in response.text
        for key in (*FILE_KEYS, ENV_KEY):  # every configured key works, so keys can be rotated
            response = call(keyed, method, path, key)
            assert response.status_code == PAST_THE_KEY.get(path, 200), (method, path, response.text)
            if path in PAST_THE_KEY:
                assert f"{MODEL!r} has task 'embed'" in response.text, response.text


def test_health_stays_open_and_metrics_follow_their_setting(keyed):
    for _, path in operations(keyed):
        if path in OPEN_ROUTES:
            assert call(keyed, "GET", path, None).status_code == 200, path
    assert call(keyed, "GET", "/metrics", None).status_code == 401
    assert call(keyed, "GET", "/metrics", WRONG_KEY).status_code == 401
    metrics = call(keyed, "GET", "/metrics", FILE_KEYS[0])
    assert metrics.status_code == 200
    assert not any(key in metrics.text for key in (*FILE_KEYS, ENV_KEY, WRONG_KEY))


def test_the_ui_page_loads_openly_but_each_of_its_calls_needs_a_key(keyed):
    assert httpx.get(keyed.url + "/ui", timeout=10).status_code == 200
    api = (REPO / "service" / "static" / "api.js").read_text()
    calls = set(re.findall(r'this\.request\("(GET|POST)", "(/[^"]+)"', api))
    assert calls == {("GET", "/v1/models"), ("POST", "/v1/tokenize"), ("POST", "/v1/embed")}, calls
    for method, path in calls:
        assert call(keyed, method, path, None).status_code == 401, path
        assert call(keyed, method, path, FILE_KEYS[1]).status_code == 200, path


def test_every_grpc_data_method_refuses_a_missing_or_wrong_key(keyed):
    paths = [f"/mhaserve.v1.Encoder/{m}" for m in ENCODER_METHODS]
    paths += [f"/inference.GRPCInferenceService/{m}" for m in KSERVE_KEYED]
    for path in paths:
        for key in (None, WRONG_KEY, "not-bearer"):
            assert grpc_call(keyed, path, key) == grpc.StatusCode.UNAUTHENTICATED, (path, key)
        # with a key the request goes on to be judged on its (empty) content, never UNAUTHENTICATED
        assert grpc_call(keyed, path, ENV_KEY) != grpc.StatusCode.UNAUTHENTICATED, path
    with grpc.insecure_channel(keyed.grpc_target) as channel:
        stream = channel.stream_stream("/mhaserve.v1.Encoder/EmbedStream")
        with pytest.raises(grpc.RpcError) as refused:
            list(stream(iter([b""]), metadata=(("authorization", f"Bearer {WRONG_KEY}"),), timeout=30))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_health_and_kserve_liveness_stay_open(keyed):
    for method in KSERVE_OPEN:
        assert grpc_call(keyed, f"/inference.GRPCInferenceService/{method}", None) in (
            grpc.StatusCode.OK,
            grpc.StatusCode.NOT_FOUND,  # ModelReady with an empty model name
        ), method
    assert grpc_call(keyed, "/grpc.health.v1.Health/Check", None) == grpc.StatusCode.OK


def test_no_key_appears_anywhere_in_the_server_log(keyed):
    # runs after the tests above (file order): the log holds every refusal and every success
    test_every_grpc_data_method_refuses_a_missing_or_wrong_key(keyed)
    call(keyed, "POST", "/v1/embed", WRONG_KEY)
    log = keyed.log()
    assert "settings:" in log and "DEBUG" in log  # the whole start-up, at the most talkative level
    for key in (*FILE_KEYS, ENV_KEY, WRONG_KEY):
        assert key not in log
        assert key[-8:] not in log  # nor a telling fragment
