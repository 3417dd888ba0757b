"""/v1/embed and /v1/tokenize on the default model: vectors, tokens and attention equal in-process
onnxruntime, the encodings, and concurrent requests computed together, each with its own answer."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.support.decode import decode_float32
from tests.support.http import embed_concurrently, post, scrape
from tests.support.prometheus import metric_value
from tests.support.reference import SENTENCES

# answers ---------------------------------------------------------------------------------


def test_embed_vectors_equal_in_process_onnxruntime(server, reference):
    response = post(server, "/v1/embed", {"inputs": SENTENCES})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "all-minilm-l6-v2"
    for text, vector in zip(SENTENCES, body["embeddings"], strict=True):
        np.testing.assert_allclose(vector, reference.embedding(text), atol=1e-5)
    assert body["usage"]["tokens"] == sum(len(reference.ids(t)) for t in SENTENCES)
    for header in ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert float(response.headers[header]) >= 0


def test_embed_single_string_cls_pooling_and_no_normalisation(server, reference):
    body = post(server, "/v1/embed", {"inputs": SENTENCES[0], "pooling": "cls", "normalize": False}).json()
    np.testing.assert_allclose(body["embeddings"][0], reference.embedding(SENTENCES[0], "cls", False), atol=1e-5)


def test_tokens_token_embeddings_and_attention_each_at_their_own_length(server, reference):
    texts = [SENTENCES[2], SENTENCES[5]]
    body = post(
        server,
        "/v1/embed",
        {
            "inputs": texts,
            "return_tokens": True,
            "return_token_embeddings": True,
            "return_attention": {"layers": [0, 5], "heads": [3, 11]},
        },
    ).json()
    for i, text in enumerate(texts):
        ids = reference.ids(text)
        n = len(ids)
        assert [t["id"] for t in body["tokens"][i]] == ids
        assert body["tokens"][i][0]["text"] == "[CLS]"
        assert body["token_embeddings"][i]["shape"] == [n, 384]
        np.testing.assert_allclose(body["token_embeddings"][i]["data"], reference.hidden(text), atol=1e-4)
        attention = body["attention"][i]
        assert attention["layers"] == [0, 5] and attention["heads"] == [3, 11]
        assert attention["shape"] == [2, 2, n, n]
        expected = reference.attention(text)[[0, 5]][:, [3, 11]]
        np.testing.assert_allclose(attention["data"], expected, atol=1e-5)
        np.testing.assert_allclose(np.sum(attention["data"], axis=-1), 1.0, atol=1e-5)


def test_base64_encoding_carries_the_same_float32_values(server):
    request = {"inputs": SENTENCES[:2], "return_token_embeddings": True, "return_attention": {"layers": [1]}}
    floats = post(server, "/v1/embed", request).json()
    packed = post(server, "/v1/embed", {**request, "encoding": "base64"}).json()
    for i in range(2):
        np.testing.assert_array_equal(
            decode_float32(packed["embeddings"][i], [384]), np.float32(floats["embeddings"][i])
        )
        t = packed["token_embeddings"][i]
        np.testing.assert_array_equal(
            decode_float32(t["data"], t["shape"]), np.float32(floats["token_embeddings"][i]["data"])
        )
        a = packed["attention"][i]
        np.testing.assert_array_equal(decode_float32(a["data"], a["shape"]), np.float32(floats["attention"][i]["data"]))


def test_tokenize_gives_word_pieces_with_offsets(server, reference):
    text = "Tokenizers split unbelievable words."
    body = post(server, "/v1/tokenize", {"inputs": text}).json()
    tokens = body["tokens"][0]
    assert [t["id"] for t in tokens] == reference.ids(text)
    words = [t for t in tokens if t["end"] > t["start"]]
    assert all(text[t["start"] : t["end"]].lower() == t["text"].removeprefix("##") for t in words)


# concurrency and batching ----------------------------------------------------------------


def test_200_concurrent_requests_each_get_their_own_vector(server, reference):
    texts = [f"request number {i}: {SENTENCES[i % len(SENTENCES)]}" for i in range(200)]
    responses = asyncio.run(embed_concurrently(server, texts))
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["embeddings"][0], reference.embedding(text), atol=1e-5)


def test_concurrent_single_sentences_are_computed_together(server):
    before = scrape(server)
    asyncio.run(embed_concurrently(server, [f"sentence {i} about batching" for i in range(64)]))
    after = scrape(server)
    batches = metric_value(after, "mhaserve_batch_size_count") - metric_value(before, "mhaserve_batch_size_count")
    sequences = metric_value(after, "mhaserve_batch_size_sum") - metric_value(before, "mhaserve_batch_size_sum")
    assert sequences == 64
    assert sequences / batches >= 4, f"{sequences} sequences in {batches} batches"
