"""Several models in one server: a copy of the default artifact served under a second name.

The copy links the same graphs and tokenizer, so its answers must equal the default's; what is
tested is that every transport reaches the model a request names, and that metrics, readiness
and errors are per model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from service.client import GrpcClient, RestClient
from tests.support.http import post, scrape
from tests.support.prometheus import samples
from tests.support.server import ARTIFACT, ServerProcess, launch

DEFAULT, SECOND = "all-minilm-l6-v2", "minilm-second"
TEXTS = ["Attention is all you need.", "A man is playing a guitar."]


def renamed_copy(directory: Path, name: str) -> Path:
    """The artifact with its graphs and tokenizer linked and its manifest under another name."""
    directory.mkdir()
    for path in ARTIFACT.iterdir():
        if path.name != "manifest.json":
            (directory / path.name).symlink_to(path)
    manifest = json.loads((ARTIFACT / "manifest.json").read_text())
    manifest["name"] = name
    manifest["matryoshka_dims"] = [128, 256]  # as if trained for them: the server only truncates
    manifest["prompts"] = {"query": "query: ", "passage": "passage: "}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="module")
def two_models(artifact, tmp_path_factory) -> Iterator[ServerProcess]:
    second = renamed_copy(tmp_path_factory.mktemp("models") / SECOND, SECOND)
    server = launch("--model-dir", str(second))  # launch() names the default artifact first
    yield server
    server.stop()


def test_v1_models_lists_every_model_the_first_being_the_default(two_models):
    cards = httpx.get(two_models.url + "/v1/models").json()["data"]
    assert [card["id"] for card in cards] == [DEFAULT, SECOND]
    unnamed = post(two_models, "/v1/embed", {"inputs": TEXTS}).json()
    assert unnamed["model"] == DEFAULT


def test_every_transport_reaches_the_model_a_request_names(two_models, reference):
    expected = np.stack([reference.embedding(t) for t in TEXTS])
    with RestClient(two_models.url) as rest, GrpcClient(two_models.grpc_target) as grpc_client:
        for client in (rest, grpc_client):
            answer = client.embed(TEXTS, model=SECOND)
            assert answer.model == SECOND
            np.testing.assert_allclose(answer.embeddings, expected, atol=1e-5)
            assert client.tokenize("unbelievable", model=SECOND) == client.tokenize("unbelievable")
        assert grpc_client.model_info(SECOND).name == SECOND and grpc_client.model_info().name == DEFAULT
    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS}]}
    kserve = post(two_models, f"/v2/models/{SECOND}/infer", infer).json()
    assert kserve["model_name"] == SECOND
    np.testing.assert_allclose(np.reshape(kserve["outputs"][0]["data"], (2, -1)), expected, atol=1e-5)


def test_the_openai_client_selects_either_model_by_name(two_models, reference):
    client = openai.OpenAI(base_url=two_models.url + "/v1", api_key="unused")
    for name in (DEFAULT, SECOND):
        answer = client.embeddings.create(model=name, input=TEXTS)
        assert answer.model == name
        np.testing.assert_allclose(answer.data[1].embedding, reference.embedding(TEXTS[1]), atol=1e-5)
    with pytest.raises(openai.NotFoundError, match=f"choose one of: '{DEFAULT}', '{SECOND}'"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.UnprocessableEntityError, match="declares no Matryoshka truncations"):
        client.embeddings.create(model=DEFAULT, input="x", dimensions=128)
    with pytest.raises(openai.UnprocessableEntityError, match=r"not one of minilm-second's Matryoshka dimensions"):
        client.embeddings.create(model=SECOND, input="x", dimensions=100)
    truncated = client.embeddings.create(model=SECOND, input=TEXTS[1], dimensions=128).data[0].embedding
    full = reference.embedding(TEXTS[1])[:128]
    np.testing.assert_allclose(truncated, full / np.linalg.norm(full), atol=1e-5)  # the first 128, renormalised


def test_an_unknown_model_is_404_listing_the_served_ones_on_every_transport(two_models):
    for path, body in (
        ("/v1/embed", {"inputs": "x", "model": "nope"}),
        ("/v1/tokenize", {"inputs": "x", "model": "nope"}),
    ):
        response = post(two_models, path, body)
        assert response.status_code == 404 and f"'{DEFAULT}', '{SECOND}'" in response.json()["error"]["message"]
    kserve = httpx.get(two_models.url + "/v2/models/nope")
    assert kserve.status_code == 404 and SECOND in kserve.json()["error"]
    with grpc.insecure_channel(two_models.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Embed(pb.EmbedRequest(inputs=["x"], model="nope"), timeout=30)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and SECOND in refused.value.details()


def test_metrics_carry_a_model_label_for_each_model(two_models):
    post(two_models, "/v1/embed", {"inputs": ["counted for the second model"], "model": SECOND})
    text = scrape(two_models)
    tokens = {s.labels["model"]: s.value for s in samples(text, "mhaserve_tokens_total")}
    assert set(tokens) == {DEFAULT, SECOND} and tokens[SECOND] > 0
    depth = {s.labels["model"] for s in samples(text, "mhaserve_queue_depth")}
    assert depth == {DEFAULT, SECOND}
    info = {s.labels["name"] for s in samples(text, "mhaserve_model_info")}
    assert info == {DEFAULT, SECOND}


def test_two_model_directories_with_one_name_are_refused_at_start(artifact):
    command = [sys.executable, "-m", "service", "serve", "--model-dir", str(ARTIFACT), "--model-dir", str(ARTIFACT)]
    result = subprocess.run(
        [*command, "--http-port", "0", "--grpc-port", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert f"two models are named '{DEFAULT}'" in result.stderr and "Traceback" not in result.stderr


def test_a_prompt_name_prepends_the_models_prompt_on_every_transport(two_models, reference):
    expected = reference.embedding("query: " + TEXTS[0])
    with RestClient(two_models.url) as rest, GrpcClient(two_models.grpc_target) as grpc_client:
        for client in (rest, grpc_client):
            answer = client.embed(TEXTS[0], model=SECOND, prompt_name="query")
            np.testing.assert_allclose(answer.embeddings[0], expected, atol=1e-5)
    refused = post(two_models, "/v1/embed", {"inputs": "x", "model": SECOND, "prompt_name": "title"})
    assert refused.status_code == 422
    assert "'title' is not one of minilm-second's prompts ('query', 'passage')" in refused.json()["error"]["message"]
    no_prompts = post(two_models, "/v1/embed", {"inputs": "x", "prompt_name": "query"})
    assert no_prompts.status_code == 422 and "prompts (none)" in no_prompts.json()["error"]["message"]


@pytest.mark.parametrize("pooling", ["max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_every_sentence_transformers_pooling_mode_is_served_on_rest_and_grpc(two_models, reference, pooling):
    expected = reference.embedding(TEXTS[1], pooling=pooling)
    with RestClient(two_models.url) as rest, GrpcClient(two_models.grpc_target) as grpc_client:
        for client in (rest, grpc_client):
            np.testing.assert_allclose(client.embed(TEXTS[1], pooling=pooling).embeddings[0], expected, atol=1e-5)
