"""The engine's rerank and predict on the fake cross-encoders, in-process: pairs batched with
other calls' pairs, padding and segments that change no answer, deadlines, cancellation, drain."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from service.backends.fake import FAKE_CLASSIFY_SPEC, FAKE_RERANK_SPEC, FakeBackend
from service.config import load_settings
from service.core.engine import Engine
from service.errors import Cancelled, DeadlineExceeded, NotReady
from service.types import AttentionSelection, PredictRequest, RerankRequest


def run(scenario: Callable[[Engine], Awaitable], backend: FakeBackend | None = None, **settings):
    backend = backend or FakeBackend(spec=FAKE_RERANK_SPEC)
    flags = {name: str(value) for name, value in settings.items()}

    async def main():
        engine = Engine(load_settings(flags, {}), lambda: backend, name=backend.spec.name)
        await engine.start()
        try:
            return await scenario(engine)
        finally:
            await engine.stop(1.0)

    return asyncio.run(main())


QUERY = "the quick brown fox"
DOCUMENTS = ("a lazy dog", "the quick fox jumps", "the fox", "over the lazy dog the fox")


def test_pairs_from_different_calls_share_batches_and_answer_as_alone():
    backend = FakeBackend(spec=FAKE_RERANK_SPEC, delay_s=0.2)
    queries = ["the quick brown fox", "a lazy dog", "the man is playing"]

    async def together(engine):
        blocker = asyncio.create_task(engine.rerank(RerankRequest(query="a", documents=("b",))))
        await asyncio.sleep(0.12)  # computing (after its 50 ms wait): what follows queues up meanwhile
        backend.calls.clear()
        results = await asyncio.gather(*(engine.rerank(RerankRequest(query=q, documents=DOCUMENTS)) for q in queries))
        await blocker
        return results, list(backend.calls)

    results, calls = run(together, backend, max_wait_ms=50, batch_wait="always", inference_workers=1)
    assert sum(shape[0] for _, shape in calls) == 12 and len(calls) < 12  # 3 calls x 4 pairs, in few batches
    for q, result in zip(queries, results, strict=True):
        alone = run(lambda engine, q=q: engine.rerank(RerankRequest(query=q, documents=DOCUMENTS)))
        np.testing.assert_array_equal(result.scores, alone.scores)  # padding and neighbours change nothing


def test_segment_ids_reach_the_backend_so_query_and_document_are_told_apart():
    forward = run(lambda e: e.rerank(RerankRequest(query="the fox", documents=("the dog",), raw_scores=True)))
    swapped = run(lambda e: e.rerank(RerankRequest(query="the dog", documents=("the fox",), raw_scores=True)))
    assert forward.scores[0] == pytest.approx(1 - 0.2)  # "the" shared, two document words
    assert swapped.scores[0] == pytest.approx(1 - 0.2)
    longer = run(lambda e: e.rerank(RerankRequest(query="the fox", documents=("the dog dog",), raw_scores=True)))
    assert longer.scores[0] == pytest.approx(1 - 0.3)


def test_predict_gives_every_label_best_first_with_softmax_scores():
    result = run(
        lambda e: e.predict(PredictRequest(inputs=(("the fox", "the fox dog"), ("the fox",)))),
        FakeBackend(spec=FAKE_CLASSIFY_SPEC),
    )
    first, second = result.predictions
    assert [p.label for p in first] == ["entailment", "neutral", "contradiction"]
    assert sum(p.score for p in first) == pytest.approx(1.0)
    assert {p.label for p in second} == {"contradiction", "entailment", "neutral"}
    assert result.token_counts == (8, 4)


def test_a_pairs_deadline_and_its_clients_departure_drop_its_queued_pairs():
    backend = FakeBackend(spec=FAKE_RERANK_SPEC, delay_s=0.3)

    async def scenario(engine):
        blocker = asyncio.create_task(engine.rerank(RerankRequest(query="a", documents=("b",))))
        await asyncio.sleep(0.05)
        late = engine.rerank(RerankRequest(query=QUERY, documents=DOCUMENTS, timeout_s=0.05))
        gone = engine.rerank(RerankRequest(query=QUERY, documents=DOCUMENTS), is_disconnected=lambda: True)
        outcomes = await asyncio.gather(late, gone, return_exceptions=True)
        await blocker
        return outcomes, engine.m.dropped["cancelled"]._value.get()

    (late, gone), cancelled = run(scenario, backend, inference_workers=1)
    assert isinstance(late, DeadlineExceeded)
    assert isinstance(gone, Cancelled) and cancelled >= 1


def test_a_draining_engine_refuses_new_pairs():
    async def scenario(engine):
        engine.begin_drain()
        return await asyncio.gather(engine.rerank(RerankRequest(query="a", documents=("b",))), return_exceptions=True)

    assert isinstance(run(scenario)[0], NotReady)


def test_attention_limit_counts_the_block_not_the_whole_pair():
    selection = AttentionSelection(block="query_to_document")

    async def scenario(engine):
        return await engine.rerank(RerankRequest(query="the fox", documents=("a dog",), attention=selection))

    # a pair of 7 tokens: the whole pair is 2 x 2 x 7 x 7 = 196 values, the block 2 x 2 x 2 x 2 = 16
    result = run(scenario, max_attention_values=16)
    assert result.attention[0].shape == (2, 2, 2, 2)
    with pytest.raises(Exception, match="over the limit of 15"):
        run(scenario, max_attention_values=15)
