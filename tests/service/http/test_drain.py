"""SIGTERM over REST, on a `--backend fake` server whose batches take 100 ms: every request in
flight is answered with its own vector, new ones get 503, readiness says draining, exit 0."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.support.fake import assert_matches
from tests.support.reference import SENTENCES


def test_sigterm_answers_every_inflight_request_then_exits_0(start_fake_server, fake_reference):
    draining = start_fake_server("--max-batch-size", "2", "--max-wait-ms", "0", "--fake-batch-ms", "100")
    texts = [f"in flight {i}: " + SENTENCES[5] * 8 for i in range(40)]  # 20 batches of 100 ms: 2 s of work

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
        assert_matches(response.json()["embeddings"][0], fake_reference.embedding(text))
    assert late.status_code == 503 and "shutting down" in late.json()["error"]["message"]
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert draining.wait(timeout=30) == 0
    assert time.monotonic() - started < 25
