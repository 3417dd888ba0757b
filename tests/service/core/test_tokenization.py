"""The tokenizer worker: short requests at idle on the loop, everything else coalesced on its thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.backends.fake import fake_tokenizer
from service.core.tokenization import INLINE_CHARS, TokenizerWorker
from service.errors import InvalidRequest


class Recording:
    """The fake tokenizer, recording the thread and the size of every encode_batch call."""

    def __init__(self) -> None:
        self.inner = fake_tokenizer(32)
        self.calls: list[tuple[str, int]] = []

    def encode_batch(self, texts: list[str]):
        self.calls.append((threading.current_thread().name, len(texts)))
        return self.inner.encode_batch(texts)


def run(scenario):
    async def main():
        tokenizer = Recording()
        worker = TokenizerWorker(tokenizer)  # type: ignore[arg-type]
        try:
            return await scenario(worker), tokenizer.calls
        finally:
            worker.close()

    return asyncio.run(main())


def test_a_short_request_at_idle_is_tokenized_on_the_loop_and_a_long_one_on_the_worker():
    long_text = "the man is playing " * (INLINE_CHARS // 10)

    async def scenario(worker):
        short = await worker.encode(["the man is playing"])
        long = await worker.encode([long_text])
        return short, long

    (short, long), calls = run(scenario)
    assert calls[0] == (threading.main_thread().name, 1)
    assert calls[1][0].startswith("tokenizer")
    assert short[0].ids == fake_tokenizer(32).encode("the man is playing").ids
    assert len(long[0].ids) == 32  # truncated at max_len, as on the loop


def test_requests_arriving_while_the_worker_is_busy_share_its_next_call():
    long_text = "a " * INLINE_CHARS

    async def scenario(worker):
        return await asyncio.gather(worker.encode([long_text]), *(worker.encode(["the man"]) for _ in range(5)))

    answers, calls = run(scenario)
    assert all(name.startswith("tokenizer") for name, _ in calls)  # none on the loop while draining
    assert sum(size for _, size in calls) == 6 and len(calls) <= 2
    assert [a[0].ids for a in answers[1:]] == [fake_tokenizer(32).encode("the man").ids] * 5


def test_a_text_the_tokenizer_refuses_on_the_loop_is_that_request_s_invalid_request():
    async def scenario(worker):
        with pytest.raises(InvalidRequest, match="valid Unicode"):
            await worker.encode(["\ud800"])
        return await worker.encode(["the man"])

    answer, _ = run(scenario)
    assert answer[0].ids == fake_tokenizer(32).encode("the man").ids
