"""The model card on every transport, served from a model whose Dense layer makes its vectors
(8 wide) narrower than its encoder (16 wide): the card's vector size is the answer's."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
import tritonclient.grpc as triton_grpc

from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc
from service.client import GrpcClient, RestClient
from tests.support.http import post
from tests.support.sentence_transformers import write_tiny_mpnet_st
from tests.support.server import ServerProcess, launch

NAME, EMBEDDING_DIM, D_MODEL = "dense-8", 8, 16
TEXTS = ["a man plays guitar", "the dog runs"]


@pytest.fixture(scope="module")
def dense_server(tmp_path_factory) -> Iterator[ServerProcess]:
    from model.__main__ import main

    root = tmp_path_factory.mktemp("dense")
    (root / "st").mkdir()
    checkpoint = write_tiny_mpnet_st(root / "st", "mean")
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--out", str(root / "art"), "--name", NAME, "--no-int8"]) == 0
    )
    server = launch(model_dir=root / "art")
    yield server
    server.stop()


def test_rest_card_reports_the_width_of_the_vectors_it_answers(dense_server):
    (card,) = httpx.get(dense_server.url + "/v1/models").json()["data"]
    answer = post(dense_server, "/v1/embed", {"inputs": TEXTS, "return_token_embeddings": True}).json()
    openai = post(dense_server, "/v1/embeddings", {"input": TEXTS}).json()
    assert card["dims"] == EMBEDDING_DIM == len(answer["embeddings"][0]) == len(openai["data"][0]["embedding"])
    assert card["d_model"] == D_MODEL == answer["token_embeddings"][0]["shape"][-1]


def test_grpc_model_info_reports_the_width_of_the_vectors_it_answers(dense_server):
    with grpc.insecure_channel(dense_server.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        answer = stub.Embed(pb.EmbedRequest(inputs=TEXTS, return_token_embeddings=True), timeout=30)
    assert info.embedding_dim == EMBEDDING_DIM == len(answer.embeddings[0].values)
    assert info.d_model == D_MODEL == answer.token_embeddings[0].shape[-1]


def test_the_python_clients_report_the_width_of_the_vectors_they_get(dense_server):
    with RestClient(dense_server.url) as rest, GrpcClient(dense_server.grpc_target) as grpc_client:
        for info, client in [(rest.models()[0], rest), (grpc_client.model_info(), grpc_client)]:
            answer = client.embed(TEXTS, return_token_embeddings=True)
            assert info.embedding_dim == EMBEDDING_DIM == answer.embeddings.shape[1]
            assert info.d_model == D_MODEL == answer.token_embeddings[0].shape[1]


def test_kserve_metadata_gives_the_embedding_its_width_and_token_embeddings_theirs(dense_server):
    rest = httpx.get(f"{dense_server.url}/v2/models/{NAME}").json()
    triton = triton_grpc.InferenceServerClient(dense_server.grpc_target)
    try:
        wire = triton.get_model_metadata(NAME, as_json=True)
    finally:
        triton.close()
    expected = {"embedding": [-1, EMBEDDING_DIM], "token_embeddings": [-1, -1, D_MODEL]}
    for metadata in (rest, wire):
        shapes = {t["name"]: [int(n) for n in t["shape"]] for t in metadata["outputs"]}
        assert {name: shapes[name] for name in expected} == expected
    infer = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
    (embedding,) = post(dense_server, f"/v2/models/{NAME}/infer", infer).json()["outputs"]
    assert embedding["name"] == "embedding" and embedding["shape"] == [len(TEXTS), EMBEDDING_DIM]
