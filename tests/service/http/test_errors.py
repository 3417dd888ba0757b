"""Every error row of the REST API, on `--backend fake` servers: what each refusal says, its status
and headers, and that the requests around it are answered, each with its own vector."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.backends.fake import FAKE_SPEC
from tests.support.fake import assert_matches
from tests.support.http import embed_concurrently, post, scrape
from tests.support.prometheus import metric_value
from tests.support.reference import SENTENCES
from tests.support.server import launch


@pytest.fixture(scope="module")
def limited():
    """A server with small limits and fault injection, shared by the error tests."""
    process = launch(
        "--max-inputs-per-request", "4",
        "--max-request-bytes", "4000",
        "--max-attention-values", "2000",
        "--fault-inject-text", "please fail this batch",
        "--max-wait-ms", "0",
        model_dir=None,
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
        ({"inputs": "word " * 300, "truncate": False}, f"longer than the model's {FAKE_SPEC.max_len} tokens"),
        (
            {"inputs": "x", "return_attention": {"layers": [FAKE_SPEC.n_layers]}},
            f"layer {FAKE_SPEC.n_layers} does not exist",
        ),
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
    assert len(body["tokens"][0]) == FAKE_SPEC.max_len and body["tokens"][0][-1]["text"] == "[SEP]"


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
    # every map of a 32-token input: 2 layers x 2 heads x 32 x 32 = 4096 values, over the 2000 allowed
    response = post(limited, "/v1/embed", {"inputs": "word " * 60, "return_attention": {}})
    assert response.status_code == 413
    assert "--max-attention-values" in response.json()["error"]["message"]


def test_deadline_passed_is_504(limited):
    response = post(limited, "/v1/embed", {"inputs": SENTENCES[:3], "timeout_s": 1e-6})
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "deadline_exceeded"


def test_failed_batch_fails_only_its_own_requests(limited, fake_reference):
    fault = post(limited, "/v1/embed", {"inputs": ["please fail this batch"]})
    assert fault.status_code == 500
    assert "injected fault" in fault.json()["error"]["message"]
    fine = post(limited, "/v1/embed", {"inputs": [SENTENCES[0]]})
    assert fine.status_code == 200
    assert_matches(fine.json()["embeddings"][0], fake_reference.embedding(SENTENCES[0]))
    assert httpx.get(limited.url + "/health/ready").status_code == 200
    assert metric_value(scrape(limited), "mhaserve_errors_total", {"type": "inference_failed"}) >= 1


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_a_body_that_does_not_say_it_is_json_is_422_and_the_same_body_as_json_is_answered(limited, content_type):
    body = b'{"inputs": ["a b"]}'
    headers = {"content-type": content_type} if content_type else {}
    refused = httpx.post(limited.url + "/v1/embed", content=body, headers=headers)
    assert refused.status_code == 422 and "valid dictionary" in refused.json()["error"]["message"]
    for json_type in ("application/json", "application/json; charset=utf-8", "application/vnd.api+json"):
        answered = httpx.post(limited.url + "/v1/embed", content=body, headers={"content-type": json_type})
        assert answered.status_code == 200 and len(answered.json()["embeddings"]) == 1, json_type


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


# The queue holds 320 tokens and each batch of one takes 50 ms: 40 requests of 25 tokens overflow it.
# Twelve fit, leaving 20 tokens of room: busy, not so full that the edge refuses before reading a body
# (it then answers even a request too big for any queue with 429, and the 413 on its retry).
BUSY = ("--max-queue-tokens", "320", "--max-batch-size", "1", "--max-wait-ms", "0", "--fake-batch-ms", "50")


def test_full_queue_is_429_with_retry_after(start_fake_server, fake_reference):
    busy = start_fake_server(*BUSY)
    texts = [f"{SENTENCES[5]} ({i})" for i in range(40)]  # 25 tokens each: the queue holds 12
    responses = asyncio.run(embed_concurrently(busy, texts))
    codes = [r.status_code for r in responses]
    assert 429 in codes and 200 in codes, codes
    assert set(codes) <= {200, 429}
    for text, response in zip(texts, responses, strict=True):
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "overloaded"
        else:
            assert_matches(response.json()["embeddings"][0], fake_reference.embedding(text))
    too_big = post(busy, "/v1/embed", {"inputs": [SENTENCES[5]] * 20})
    assert too_big.status_code == 413 and "split it" in too_big.json()["error"]["message"]


def test_a_request_too_big_for_any_queue_is_413_even_while_the_queue_is_busy(start_fake_server):
    busy = start_fake_server(*BUSY)

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
