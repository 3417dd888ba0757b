"""REST API against real server processes: vectors, the OpenAI client, batching, every error row."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.support.decode import decode_float32
from tests.support.http import post, scrape
from tests.support.prometheus import metric_value, samples
from tests.support.reference import SENTENCES
from tests.support.server import launch

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


def test_models_lists_the_served_model(server):
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert card["id"] == "all-minilm-l6-v2"
    assert (card["dims"], card["d_model"], card["layers"], card["heads"], card["max_len"]) == (384, 384, 6, 12, 256)
    assert card["provider"] == "CPUExecutionProvider" and card["precision"] == "fp32"


def test_health_openapi_and_docs(server):
    assert httpx.get(server.url + "/health/live").json() == {"status": "live"}
    assert httpx.get(server.url + "/health/ready").json() == {"status": "ready"}
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/embed", "/v1/embeddings", "/v1/tokenize", "/v1/models"} <= set(spec["paths"])
    assert httpx.get(server.url + "/docs").status_code == 200


def test_official_openai_client_works_unchanged(server, reference):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    for encoding in ("float", "base64", openai.NOT_GIVEN):
        answer = client.embeddings.create(model="all-minilm-l6-v2", input=SENTENCES[:3], encoding_format=encoding)
        assert [d.index for d in answer.data] == [0, 1, 2]
        for text, item in zip(SENTENCES[:3], answer.data, strict=True):
            # asked for base64 explicitly, the client hands the string through; by default it decodes
            vector = decode_float32(item.embedding, [384]) if encoding == "base64" else item.embedding
            np.testing.assert_allclose(vector, reference.embedding(text), atol=1e-5)
        assert answer.usage.prompt_tokens == sum(len(reference.ids(t)) for t in SENTENCES[:3])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions"):
        client.embeddings.create(model="all-minilm-l6-v2", input="x", dimensions=64)


# concurrency and batching ----------------------------------------------------------------


async def embed_concurrently(url: str, texts: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(texts))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post("/v1/embed", json={"inputs": text}) for text in texts))


def test_200_concurrent_requests_each_get_their_own_vector(server, reference):
    texts = [f"request number {i}: {SENTENCES[i % len(SENTENCES)]}" for i in range(200)]
    responses = asyncio.run(embed_concurrently(server.url, texts))
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["embeddings"][0], reference.embedding(text), atol=1e-5)


def test_concurrent_single_sentences_are_computed_together(server):
    before = scrape(server)
    asyncio.run(embed_concurrently(server.url, [f"sentence {i} about batching" for i in range(64)]))
    after = scrape(server)
    batches = metric_value(after, "mhaserve_batch_size_count") - metric_value(before, "mhaserve_batch_size_count")
    sequences = metric_value(after, "mhaserve_batch_size_sum") - metric_value(before, "mhaserve_batch_size_sum")
    assert sequences == 64
    assert sequences / batches >= 4, f"{sequences} sequences in {batches} batches"


def test_every_metric_is_present_from_start_up(server):
    text = scrape(server)
    names = {sample.name for sample in samples(text)}
    for name in (
        "mhaserve_requests_total",
        "mhaserve_request_duration_seconds_bucket",
        "mhaserve_queue_duration_seconds_bucket",
        "mhaserve_inference_duration_seconds_bucket",
        "mhaserve_batch_size_bucket",
        "mhaserve_batch_tokens_bucket",
        "mhaserve_padding_ratio_bucket",
        "mhaserve_queue_depth",
        "mhaserve_inflight_requests",
        "mhaserve_tokens_total",
        "mhaserve_errors_total",
        "mhaserve_model_info",
    ):
        assert name in names, name
    assert metric_value(text, "mhaserve_model_info", {"provider": "CPUExecutionProvider", "precision": "fp32"}) == 1


# errors ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited():
    """A server with small limits and fault injection, shared by the error tests."""
    process = launch(
        "--max-inputs-per-request", "4",
        "--max-request-bytes", "4000",
        "--max-attention-values", "20000",
        "--fault-inject-text", "please fail this batch",
        "--max-wait-ms", "0",
    )  # fmt: skip
    yield process
    process.stop()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"inputs": []}, "inputs is empty"),
        ({"inputs": [""]}, "empty string"),
        ({"inputs": 42}, "inputs"),
        ({"inputs": ["ok", None]}, "inputs"),
        ({"inputs": ["a", "b", "c", "d", "e"]}, "limit is 4"),
        ({"inputs": "word " * 300, "truncate": False}, "longer than the model's 256 tokens"),
        ({"inputs": "x", "return_attention": {"layers": [6]}}, "layer 6 does not exist"),
        ({"inputs": "x", "return_attention": {"heads": [-1]}}, "head -1 does not exist"),
        ({"inputs": "x", "return_attention": {"layers": []}}, "layer selection is empty"),
        ({"inputs": "x", "pooling": "median"}, "pooling"),
        ({"inputs": "x", "normalise": True}, "normalise"),
        ({"inputs": "x", "normalize": "yes"}, "normalize"),
    ],
)
def test_invalid_input_is_422_saying_what_to_change(limited, body, says):
    response = post(limited, "/v1/embed", body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert says in error["message"]


def test_truncate_true_cuts_long_inputs_at_max_len(limited):
    body = post(limited, "/v1/embed", {"inputs": "word " * 300, "return_tokens": True}).json()
    assert len(body["tokens"][0]) == 256 and body["tokens"][0][-1]["text"] == "[SEP]"


def test_body_over_the_limit_is_413_while_reading(limited):
    response = post(limited, "/v1/embed", {"inputs": ["x" * 3000, "y" * 3000]})
    assert response.status_code == 413
    assert "max_request_bytes" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: refused once the running total passes the limit
        for _ in range(100):
            yield b" " * 1000

    streamed = httpx.post(limited.url + "/v1/embed", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_attention_answer_over_the_limit_is_413_naming_the_knob(limited):
    response = post(limited, "/v1/embed", {"inputs": "word " * 60, "return_attention": {}})
    assert response.status_code == 413
    assert "--max-attention-values" in response.json()["error"]["message"]


def test_deadline_passed_is_504(limited):
    response = post(limited, "/v1/embed", {"inputs": SENTENCES[:3], "timeout_s": 1e-6})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "deadline_exceeded"


def test_failed_batch_fails_only_its_own_requests(limited, reference):
    fault = post(limited, "/v1/embed", {"inputs": ["please fail this batch"]})
    assert fault.status_code == 500
    assert "injected fault" in fault.json()["error"]["message"]
    fine = post(limited, "/v1/embed", {"inputs": [SENTENCES[0]]})
    assert fine.status_code == 200
    np.testing.assert_allclose(fine.json()["embeddings"][0], reference.embedding(SENTENCES[0]), atol=1e-5)
    assert httpx.get(limited.url + "/health/ready").status_code == 200
    assert metric_value(scrape(limited), "mhaserve_errors_total", {"type": "inference_failed"}) >= 1


def test_unknown_route_is_404_json(limited):
    response = httpx.get(limited.url + "/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"


def test_api_key_is_required_on_data_routes_only(start_fake_server):
    keyed = start_fake_server(env={"MHASERVE_API_KEYS": "k-one,k-two"})
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "k-one"}):
        response = post(keyed, "/v1/embed", {"inputs": "x"}, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert "k-one" not in response.text
    for key in ("k-one", "k-two"):  # several keys, for rotation
        assert post(keyed, "/v1/embed", {"inputs": "x"}, headers={"authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(keyed.url + "/v1/models").status_code == 401
    assert httpx.get(keyed.url + "/health/ready").status_code == 200
    assert httpx.get(keyed.url + "/metrics").status_code == 200
    assert "k-one" not in keyed.log() and "k-two" not in keyed.log()


def test_full_queue_is_429_with_retry_after(start_server, reference):
    busy = start_server("--max-queue-tokens", "300", "--max-batch-size", "1", "--max-wait-ms", "0")
    texts = [f"{SENTENCES[5]} ({i})" for i in range(40)]  # ~25 tokens each: the queue holds ~12
    responses = asyncio.run(embed_concurrently(busy.url, texts))
    codes = [r.status_code for r in responses]
    assert 429 in codes and 200 in codes, codes
    assert set(codes) <= {200, 429}
    for text, response in zip(texts, responses, strict=True):
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "overloaded"
        else:
            np.testing.assert_allclose(response.json()["embeddings"][0], reference.embedding(text), atol=1e-5)
    too_big = post(busy, "/v1/embed", {"inputs": [SENTENCES[5]] * 20})
    assert too_big.status_code == 413 and "split it" in too_big.json()["error"]["message"]


def test_a_request_too_big_for_any_queue_is_413_even_while_the_queue_is_busy(start_server):
    busy = start_server("--max-queue-tokens", "300", "--max-batch-size", "1", "--max-wait-ms", "0")

    async def scenario():
        async with httpx.AsyncClient(base_url=busy.url, timeout=60) as client:
            load = [
                asyncio.create_task(client.post("/v1/embed", json={"inputs": [f"{SENTENCES[5]} ({i})"]}))
                for i in range(40)
            ]
            await asyncio.sleep(0.2)  # the queue now holds work
            too_big = await client.post("/v1/embed", json={"inputs": [SENTENCES[5]] * 20})
            return too_big, await asyncio.gather(*load)

    too_big, answers = asyncio.run(scenario())
    assert 429 in [r.status_code for r in answers]  # the queue was full around it
    assert too_big.status_code == 413 and "split it" in too_big.json()["error"]["message"]


def inference_nice_values(pid: int) -> dict[int, int]:
    """Each thread's nice value (field 19 of /proc/<pid>/task/<tid>/stat)."""
    values = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
        values[int(tid)] = int(fields[16])
    return values


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are a Linux feature")
def test_inference_threads_run_at_the_inference_nice_value_and_the_event_loop_does_not(start_server):
    lowered = start_server("--inference-nice", "7")
    assert post(lowered, "/v1/embed", {"inputs": ["runs a batch"]}).status_code == 200
    nice = inference_nice_values(lowered.process.pid)
    assert nice[lowered.process.pid] == 0  # the main thread runs the event loop
    # the batcher threads and onnxruntime's pool threads, at least one of each
    assert list(nice.values()).count(7) >= 2, nice

    loading = start_server(wait_ready=False)
    ready = httpx.get(loading.url + "/health/ready")
    embed = post(loading, "/v1/embed", {"inputs": "x"})
    if ready.status_code == 503:  # the model was still loading when we asked
        assert ready.json()["status"] == "loading"
        assert embed.status_code in (503, 200)
    loading.wait_ready()
    assert post(loading, "/v1/embed", {"inputs": "x"}).status_code == 200


def test_sigterm_answers_every_inflight_request_then_exits_0(start_server, reference):
    draining = start_server("--max-batch-size", "2", "--max-wait-ms", "0")
    texts = [f"in flight {i}: " + SENTENCES[5] * 8 for i in range(40)]  # ~200 tokens: ~2 s of work

    async def scenario():
        async with httpx.AsyncClient(base_url=draining.url, timeout=60) as client:
            tasks = [asyncio.create_task(client.post("/v1/embed", json={"inputs": t})) for t in texts]
            await asyncio.sleep(0.3)  # the requests are queued or computing
            draining.signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            late = await client.post("/v1/embed", json={"inputs": "too late"})
            ready = await client.get("/health/ready")
            return await asyncio.gather(*tasks), late, ready

    started = time.monotonic()
    responses, late, ready = asyncio.run(scenario())
    for text, response in zip(texts, responses, strict=True):
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["embeddings"][0], reference.embedding(text), atol=1e-5)
    assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert draining.wait(timeout=30) == 0
    assert time.monotonic() - started < 25
