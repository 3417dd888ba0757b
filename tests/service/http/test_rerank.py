"""/rerank, /v1/rerank and /predict against a real `--backend fake` server serving a fake reranker,
embedder and classifier side by side. The fake cross-encoders' scores are a documented function
of the pair (service/backends/fake.py), so values and ranking are checked exactly."""

from __future__ import annotations

import asyncio
import math
import re

import httpx
import numpy as np
import pytest

from service.backends.fake import WORDS
from tests.support.decode import decode_float32
from tests.support.http import post, scrape
from tests.support.prometheus import metric_value
from tests.support.server import launch

QUERY = "the quick brown fox"
DOCUMENTS = ["a lazy dog", "the quick fox jumps", "the fox", "over the lazy dog the fox"]


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]+", text)  # the fake tokenizer's pre-tokenizer


def fake_logit(query: str, document: str) -> float:
    """fake-rerank's documented logit: shared known words minus a tenth of the document's words."""
    known = set(WORDS) & set(words(query))
    shared = sum(1 for w in words(document) if w in known)
    return shared - 0.1 * len(words(document))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture(scope="module")
def served():
    process = launch("--fake-task", "rerank,embed,classify", "--max-inputs-per-request", "8", model_dir=None)
    yield process
    process.stop()


def test_rerank_in_tei_shape_scores_every_document_best_first(served):
    response = post(served, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = [sigmoid(fake_logit(QUERY, d)) for d in DOCUMENTS]
    assert [item["index"] for item in answer] == sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])
    for item in answer:
        assert item["score"] == pytest.approx(expected[item["index"]], abs=1e-6)
        assert item["text"] == DOCUMENTS[item["index"]]
    for header in ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert float(response.headers[header]) >= 0
    raw = post(served, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    assert {i["index"]: i["score"] for i in raw} == pytest.approx(
        {i: fake_logit(QUERY, d) for i, d in enumerate(DOCUMENTS)}, abs=1e-6
    )
    assert "text" not in raw[0]


def test_v1_rerank_in_the_cohere_shape_with_top_n_documents_and_usage(served):
    body = {
        "model": "fake-rerank",
        "query": QUERY,
        "documents": [DOCUMENTS[0], {"text": DOCUMENTS[1]}, *DOCUMENTS[2:]],
        "top_n": 2,
        "return_documents": True,
        "rank_fields": ["text"],  # sent by some clients, ignored
    }
    answer = post(served, "/v1/rerank", body).json()
    expected = {i: sigmoid(fake_logit(QUERY, d)) for i, d in enumerate(DOCUMENTS)}
    best = sorted(expected, key=lambda i: -expected[i])[:2]
    assert answer["model"] == "fake-rerank"
    assert [r["index"] for r in answer["results"]] == best
    for result in answer["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-6)
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    pair_tokens = sum(len(words(QUERY)) + len(words(d)) + 3 for d in DOCUMENTS)
    assert answer["usage"] == {"total_tokens": pair_tokens}
    everything = post(served, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS}).json()
    assert len(everything["results"]) == 4 and "document" not in everything["results"][0]


def test_predict_reads_a_text_a_pair_or_a_list_as_tei_does(served):
    one = post(served, "/predict", {"inputs": "the fox", "model": "fake-classify"}).json()
    pair = post(served, "/predict", {"inputs": ["the fox", "the fox dog"], "model": "fake-classify"}).json()
    batch = post(served, "/predict", {"inputs": [["the fox", "the fox dog"], "the fox"], "model": "fake-classify"})
    assert batch.status_code == 200, batch.text
    batch = batch.json()

    def softmax(logits):
        e = np.exp(np.array(logits) - max(logits))
        return dict(zip(("contradiction", "entailment", "neutral"), e / e.sum(), strict=True))

    # shared 2 of the pair's 3 document words; a single text has no document
    for answer, logits in ((one, [0, 0, -1]), (pair, [-2, 2, 0.3 - 1]), (batch[0], [-2, 2, 0.3 - 1])):
        assert [a["label"] for a in answer] == sorted(softmax(logits), key=lambda k: -softmax(logits)[k])
        for a in answer:
            assert a["score"] == pytest.approx(softmax(logits)[a["label"]], abs=1e-6)
    assert batch[1] == one
    top = post(served, "/predict", {"inputs": ["a", "b", "c"], "model": "fake-classify", "top_k": 1}).json()
    assert [len(row) for row in top] == [1, 1, 1]
    rerank = post(served, "/predict", {"inputs": [QUERY, DOCUMENTS[1]], "raw_scores": True}).json()
    assert rerank == [{"label": "score", "score": pytest.approx(fake_logit(QUERY, DOCUMENTS[1]), abs=1e-6)}]


def test_models_report_task_and_labels(served):
    cards = {card["name"]: card for card in httpx.get(served.url + "/v1/models").json()["data"]}
    assert {name: (c["task"], c["labels"]) for name, c in cards.items()} == {
        "fake-rerank": ("rerank", ["score"]),
        "fake": ("embed", []),
        "fake-classify": ("classify", ["contradiction", "entailment", "neutral"]),
    }
    assert cards["fake-rerank"]["dims"] == 0 and cards["fake"]["dims"] == 8


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/v1/embed", {"inputs": ["x"]}, "'fake-rerank' has task 'rerank'"),
        ("/v1/embed", {"inputs": ["x"], "model": "fake-classify"}, "'fake-classify' has task 'classify'"),
        ("/rerank", {"query": "q", "texts": ["d"], "model": "fake"}, "'fake' has task 'embed'"),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "model": "fake-classify"}, "has task 'classify'"),
        ("/predict", {"inputs": "x", "model": "fake"}, "'fake' has task 'embed'"),
    ],
)
def test_asking_a_model_for_another_task_is_400_naming_its_task(served, path, body, says):
    response = post(served, path, body)
    assert response.status_code == 400 and says in response.json()["error"]["message"], response.text


LONG = " ".join(["the quick brown fox"] * 6)


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        ("/rerank", {"query": QUERY, "texts": []}, "no documents"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, "no documents"),
        ("/rerank", {"query": "", "texts": ["a"]}, "query is empty"),
        ("/rerank", {"query": QUERY, "texts": ["a"] * 9}, "9 documents in one request, the limit is 8"),
        ("/rerank", {"query": LONG, "texts": ["a", LONG], "truncate": False}, "documents[1] with the query is longer"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n must be 1 or more"),
        ("/predict", {"inputs": "x", "top_k": 1}, "top_k chooses among a classify model's labels"),
        ("/predict", {"inputs": [["a", "b", "c"]]}, "inputs[0] has 3 texts"),
        ("/predict", {"inputs": []}, "inputs is empty"),
        ("/rerank", {"query": QUERY, "texts": ["a"], "return_attention": {"block": "rows"}}, "block"),
        (
            "/rerank",
            {"query": QUERY, "texts": ["a"], "return_attention": {"block": "query_to_document", "rows": [0]}},
            "send rows or a block, not both",
        ),
    ],
)
def test_bad_input_is_422_saying_what_to_change_and_leaves_its_batch_alone(served, path, body, says):
    async def together():
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            good = {"query": QUERY, "texts": DOCUMENTS}
            answers = await asyncio.gather(
                client.post("/rerank", json=good), client.post(path, json=body), client.post("/rerank", json=good)
            )
            return answers

    before, bad, after = asyncio.run(together())
    assert bad.status_code == 422 and says in bad.json()["error"]["message"], bad.text
    assert before.status_code == after.status_code == 200
    assert before.json() == after.json()


def test_attention_blocks_are_the_pairs_full_attention_cut_where_query_and_document_sit(served):
    def ask(selection):
        body = {"query": QUERY, "texts": DOCUMENTS[1:3], "return_tokens": True, "return_attention": selection}
        response = post(served, "/rerank", body)
        assert response.status_code == 200, response.text
        return {item["index"]: item for item in response.json()}

    full = ask({"layers": [1], "reduce_heads": "mean"})
    blocks = {
        b: ask({"layers": [1], "reduce_heads": "mean", "block": b}) for b in ("query_to_document", "document_to_query")
    }
    rollout = ask({"rollout": True})
    rollout_block = ask({"rollout": True, "block": "query_to_document"})
    for index, item in full.items():
        texts = [t["text"] for t in item["tokens"]]
        (q0, q1), (d0, d1) = item["query_span"], item["document_span"]
        assert texts[q0:q1] == words(QUERY) and texts[d0:d1] == words(DOCUMENTS[1 + index])
        assert texts[0] == "[CLS]" and texts[q1] == "[SEP]" and texts[-1] == "[SEP]" and d1 == len(texts) - 1
        whole = np.array(item["attention"]["data"])  # (1, 1, n, n)
        assert whole.shape == (1, 1, len(texts), len(texts)) and item["attention"]["block"] == "full"
        np.testing.assert_allclose(whole.sum(-1), 1.0, atol=1e-6)
        q2d = blocks["query_to_document"][index]["attention"]
        d2q = blocks["document_to_query"][index]["attention"]
        np.testing.assert_allclose(q2d["data"], whole[:, :, q0:q1, d0:d1], atol=1e-7)
        np.testing.assert_allclose(d2q["data"], whole[:, :, d0:d1, q0:q1], atol=1e-7)
        assert q2d["shape"] == [1, 1, q1 - q0, d1 - d0] and q2d["block"] == "query_to_document"
        r = np.array(rollout[index]["attention"]["data"])
        np.testing.assert_allclose(rollout_block[index]["attention"]["data"], r[:, :, q0:q1, d0:d1], atol=1e-6)
    embed = post(served, "/v1/embed", {"inputs": ["x"], "model": "fake", "return_attention": {"block": "full"}})
    assert embed.status_code == 422  # embed's attention has no blocks: the field is not part of its body


def test_v1_rerank_gives_each_pairs_attention_and_spans_as_rerank_does(served):
    selection = {"layers": [1], "reduce_heads": "mean", "block": "query_to_document"}
    tei = post(served, "/rerank", {"query": QUERY, "texts": DOCUMENTS[1:3], "return_attention": selection})
    body = {"query": QUERY, "documents": DOCUMENTS[1:3], "return_attention": selection, "encoding": "base64"}
    cohere = post(served, "/v1/rerank", body)
    plain = post(served, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS[1:3]})
    assert tei.status_code == cohere.status_code == plain.status_code == 200, (tei.text, cohere.text)
    by_index = {item["index"]: item for item in tei.json()}
    results = cohere.json()["results"]
    assert [r["index"] for r in results] == [item["index"] for item in tei.json()]  # best first, both
    for result in results:
        expected = by_index[result["index"]]
        assert result["query_span"] == expected["query_span"] and result["document_span"] == expected["document_span"]
        attention = result["attention"]
        assert attention["block"] == "query_to_document" and attention["shape"] == expected["attention"]["shape"]
        got = decode_float32(attention["data"]).reshape(attention["shape"])
        np.testing.assert_allclose(got, expected["attention"]["data"], atol=1e-7)
    assert all(set(r) == {"index", "relevance_score"} for r in plain.json()["results"])  # nothing unasked


def test_a_rerank_of_n_documents_is_n_sequences_in_one_batch(served):
    before = scrape(served)
    documents = ["the dog", "a fox", "the man", "a guitar", "the fox", "a dog"]  # all one length: one batch
    assert post(served, "/rerank", {"query": "the man", "texts": documents}).status_code == 200
    after = scrape(served)
    labels = {"model": "fake-rerank"}
    grew = {
        name: metric_value(after, name, labels) - metric_value(before, name, labels)
        for name in ("mhaserve_batch_size_count", "mhaserve_batch_size_sum")
    }
    assert grew == {"mhaserve_batch_size_count": 1, "mhaserve_batch_size_sum": 6}
    assert metric_value(after, "mhaserve_requests_total", {"transport": "http", "route": "/rerank", "code": "200"})
    assert metric_value(after, "mhaserve_model_info", {"name": "fake-rerank", "task": "rerank"}) == 1


def test_rerank_is_refused_when_the_queue_is_full_and_answers_504_past_its_deadline(start_fake_server):
    # each request of EVEN holds 36 tokens in one batch: one computing, one queued, no room for a third
    slow = start_fake_server(
        *("--max-queue-wait-s", "0", "--fake-task", "rerank", "--fake-batch-ms", "700"),
        *("--inference-workers", "1", "--max-queue-tokens", "42"),
    )
    even = {"query": "the man", "texts": ["the dog", "a fox", "the man", "a guitar"]}

    async def scenario():
        async with httpx.AsyncClient(base_url=slow.url, timeout=30) as client:
            first = asyncio.create_task(client.post("/rerank", json=even))
            await asyncio.sleep(0.2)  # computing; the queue now holds what follows
            queued = asyncio.create_task(client.post("/rerank", json=even))
            await asyncio.sleep(0.1)
            refused = await client.post("/v1/rerank", json={"query": even["query"], "documents": even["texts"]})
            late = await client.post("/rerank", json={"query": "a", "texts": ["b"], "timeout_s": 0.05})
            return await first, await queued, refused, late

    first, queued, refused, late = asyncio.run(scenario())
    assert first.status_code == 200 and queued.status_code == 200
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    assert late.status_code == 504  # its 5 tokens fit, but its 50 ms pass while the others compute
