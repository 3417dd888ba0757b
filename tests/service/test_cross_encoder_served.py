"""Real cross-encoders served: small random ones that sentence-transformers' CrossEncoder.save
wrote, exported by `python -m model export`, served beside all-MiniLM-L6-v2. Scores equal
CrossEncoder.predict within 1e-4 with the same ranking, and attention equals transformers' eager
attention within 1e-4, on REST and gRPC."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.__main__ import main
from service.client import GrpcClient, RestClient
from service.types import AttentionSelection
from tests.support.cross_encoder import write_tiny_bert_classifier, write_tiny_cross_encoder
from tests.support.http import post
from tests.support.sentence_transformers import WORDS
from tests.support.server import ARTIFACT, launch

QUERY = "a man plays guitar"
DOCUMENTS = [
    "the dog runs",
    "a woman is playing piano in the park",
    "a man plays guitar",
    " ".join(WORDS * 2),  # cut (longest_first) to the model's 12 tokens with the query
    "park",
]


def export(checkpoint, out, *extra):
    args = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--name", out.name, "--no-int8", *extra]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module", params=["bert", "mpnet"])
def served(request, tmp_path_factory):
    """A reranker (max_length 12), a three-label classifier and the MiniLM embedder in one server."""
    root = tmp_path_factory.mktemp(request.param)
    reranker = write_tiny_cross_encoder(root / "ce", family=request.param)
    classifier = write_tiny_bert_classifier(root / "nli-hf", num_labels=3, seed=1)
    config = json.loads((classifier / "config.json").read_text())
    config["id2label"] = {"0": "contradiction", "1": "entailment", "2": "neutral"}
    (classifier / "config.json").write_text(json.dumps(config))
    rerank_artifact = export(reranker, root / f"xe-{request.param}")
    classify_artifact = export(classifier, root / "xe-nli", "--max-len", "16")
    process = launch("--model-dir", str(classify_artifact), "--model-dir", str(ARTIFACT), model_dir=rerank_artifact)
    yield request.param, reranker, classifier, process
    process.stop()


def test_rerank_scores_equal_cross_encoder_predict_and_rank_alike(served):
    from sentence_transformers import CrossEncoder

    family, reranker, _, server = served
    expected = CrossEncoder(str(reranker), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])
    assert np.ptp(expected) > 1e-3  # the documents score differently: the ranking means something
    order = np.argsort(-expected, kind="stable").tolist()
    for client in (RestClient(server.url), GrpcClient(server.grpc_target)):
        with client:
            answer = client.rerank(QUERY, DOCUMENTS, model=f"xe-{family}")
        assert [r.index for r in answer.results] == order
        np.testing.assert_allclose([r.score for r in answer.results], expected[order], atol=1e-4, rtol=0)
    cohere = post(server, "/v1/rerank", {"model": f"xe-{family}", "query": QUERY, "documents": DOCUMENTS}).json()
    assert [r["index"] for r in cohere["results"]] == order


def test_rerank_attention_equals_transformers_eager_attention(served):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    family, reranker, _, server = served
    model = AutoModelForSequenceClassification.from_pretrained(str(reranker), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(reranker))
    with RestClient(server.url) as rest, GrpcClient(server.grpc_target) as grpc_client:
        answers = [
            c.rerank(QUERY, DOCUMENTS, model=f"xe-{family}", return_tokens=True, attention=AttentionSelection())
            for c in (rest, grpc_client)
        ]
        blocks = rest.rerank(
            QUERY, DOCUMENTS, model=f"xe-{family}", attention=AttentionSelection(block="query_to_document")
        )
    for result in answers[0].results:
        encoded = tokenizer(
            QUERY, DOCUMENTS[result.index], truncation="longest_first", max_length=12, return_tensors="pt"
        )
        assert [t.id for t in result.tokens] == encoded["input_ids"][0].tolist()
        with torch.no_grad():
            theirs = torch.cat(model(**encoded, output_attentions=True).attentions).numpy()  # (L, h, n, n)
        assert result.attention.shape == theirs.shape
        assert np.abs(result.attention - theirs).max() <= 1e-4
        q, d = result.query_span, result.document_span
        block = next(b for b in blocks.results if b.index == result.index).attention
        np.testing.assert_allclose(block, result.attention[:, :, q.start : q.end, d.start : d.end], atol=1e-6)
    for a, b in zip(*(answer.results for answer in answers), strict=True):
        np.testing.assert_array_equal(a.attention, b.attention)


def test_predict_on_a_classifier_equals_transformers_logits(served):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, _, classifier, server = served
    pairs = [(QUERY, d) for d in DOCUMENTS[:3]]
    model = AutoModelForSequenceClassification.from_pretrained(str(classifier)).eval()
    encoded = AutoTokenizer.from_pretrained(str(classifier))(
        [a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True, max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model(**encoded).logits.numpy()
    labels = ["contradiction", "entailment", "neutral"]
    for client in (RestClient(server.url), GrpcClient(server.grpc_target)):
        with client:
            rows = client.predict(pairs, model="xe-nli")  # identity: what CrossEncoder.predict gives for 3 labels
        for row, logits in zip(rows, expected, strict=True):
            assert [p.label for p in row] == [labels[i] for i in np.argsort(-logits, kind="stable")]
            np.testing.assert_allclose([p.score for p in row], np.sort(logits)[::-1], atol=1e-4, rtol=0)


def test_an_embedder_and_rerankers_side_by_side_refuse_each_others_task(served):
    family, _, _, server = served
    with RestClient(server.url) as rest:
        tasks = {info.name: (info.task, info.labels) for info in rest.models()}
        assert tasks == {
            f"xe-{family}": ("rerank", ("LABEL_0",)),
            "xe-nli": ("classify", ("contradiction", "entailment", "neutral")),
            "all-minilm-l6-v2": ("embed", ()),
        }
        assert rest.embed("a dog", model="all-minilm-l6-v2").embeddings.shape == (1, 384)
    embed = post(server, "/v1/embed", {"inputs": ["a dog"]})  # the default model is the reranker
    assert embed.status_code == 400 and f"'xe-{family}' has task 'rerank'" in embed.json()["error"]["message"]
    rerank = post(server, "/rerank", {"query": "a", "texts": ["b"], "model": "all-minilm-l6-v2"})
    assert rerank.status_code == 400 and "has task 'embed'" in rerank.json()["error"]["message"]


def test_minilm_with_a_fresh_head_saved_by_cross_encoder_serves_its_scores(tmp_path):
    """all-MiniLM-L6-v2 + a new one-label head, as CrossEncoder.save writes it, exported and served:
    the full-size graph scores as CrossEncoder.predict within 1e-4, with its ranking."""
    from sentence_transformers import CrossEncoder

    from model.weights import default_checkpoint_dir

    torch.manual_seed(0)
    CrossEncoder(str(default_checkpoint_dir()), num_labels=1, device="cpu").save(str(tmp_path / "ce"))
    artifact = export(tmp_path / "ce", tmp_path / "minilm-rerank")
    query = "A man is playing a guitar."
    documents = [
        "Someone is playing music on a guitar.",
        "A man is playing a flute.",
        "The stock market fell sharply today.",
        "A man plays an acoustic guitar on stage, and the crowd sings along with every chorus.",
    ]
    expected = CrossEncoder(str(tmp_path / "ce"), device="cpu").predict([(query, d) for d in documents])
    server = launch(model_dir=artifact)
    try:
        with GrpcClient(server.grpc_target) as client:
            answer = client.rerank(query, documents)
    finally:
        server.stop()
    order = np.argsort(-expected, kind="stable").tolist()
    assert [r.index for r in answer.results] == order
    np.testing.assert_allclose([r.score for r in answer.results], expected[order], atol=1e-4, rtol=0)
