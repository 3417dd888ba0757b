"""The batcher on its own: how many batches compute at once, and what stop() waits for."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import Batcher, Job, Sequence

BATCH_S = 0.2


class SlowRuntime:
    """A batch function that takes BATCH_S and records how many of its calls overlap."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = self.most_at_once = self.batches = 0

    def __call__(self, batch: list[Sequence]) -> list[str]:
        with self.lock:
            self.running += 1
            self.batches += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(BATCH_S)
        with self.lock:
            self.running -= 1
        return [f"result of {s.payload}" for s in batch]


async def submit(batcher: Batcher, texts: list[str]) -> Job:
    job = Job(len(texts), time.monotonic() + 30, None)
    batcher.submit([Sequence(job, i, 8, text) for i, text in enumerate(texts)])
    return job


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_up_to_workers_batches_compute_at_once_and_each_answer_is_its_own(workers):
    runtime = SlowRuntime()

    async def scenario():
        batcher = Batcher("test", runtime, max_batch_size=1, max_batch_tokens=1024, max_wait_ms=0, workers=workers)
        batcher.start()
        started = time.monotonic()
        jobs = [await submit(batcher, [f"text {i}"]) for i in range(6)]
        results = await asyncio.gather(*(job.future for job in jobs))
        elapsed = time.monotonic() - started
        await batcher.stop()
        return results, elapsed

    results, elapsed = asyncio.run(scenario())
    assert results == [[f"result of text {i}"] for i in range(6)]
    assert runtime.batches == 6 and runtime.most_at_once == workers
    rounds = -(-6 // workers)  # six one-sequence batches, `workers` at a time
    assert rounds * BATCH_S * 0.9 <= elapsed < rounds * BATCH_S + 1.0


def test_stop_lets_every_running_batch_finish_and_fails_what_is_queued():
    runtime = SlowRuntime()

    async def scenario():
        batcher = Batcher("test", runtime, max_batch_size=1, max_batch_tokens=1024, max_wait_ms=0, workers=2)
        batcher.start()
        jobs = [await submit(batcher, [f"text {i}"]) for i in range(3)]
        await asyncio.sleep(BATCH_S / 4)  # two batches are computing, the third is queued
        await batcher.stop()
        return [job.future for job in jobs]

    first, second, third = asyncio.run(scenario())
    assert first.result() == ["result of text 0"] and second.result() == ["result of text 1"]
    with pytest.raises(Exception, match="shut down before this request was computed"):
        third.result()
    assert runtime.batches == 2
