"""The REST routes around the data: /v1/models, health, the OpenAPI description and /docs, and
/metrics, on the default model."""

from __future__ import annotations

import httpx

from tests.support.http import scrape
from tests.support.prometheus import metric_value, samples


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
