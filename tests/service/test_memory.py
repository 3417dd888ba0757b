"""Freed heap pages go back to the OS once a burst is over, and only then."""

from __future__ import annotations

import asyncio

from service import memory
from service.metrics import Metrics


def test_the_heap_is_trimmed_after_a_quiet_second_following_work_and_not_during_it(monkeypatch):
    monkeypatch.setattr(memory, "QUIET_S", 0.1)
    trims: list[int] = []

    async def scenario():
        metrics = Metrics()
        task = asyncio.create_task(memory.return_memory_after_bursts(metrics, trim=lambda pad: trims.append(pad) or 1))
        await asyncio.sleep(0.3)
        idle = len(trims)  # nothing answered yet: nothing to give back
        for _ in range(20):  # a burst: an answer every 10 ms, never a quiet 100 ms
            metrics.answered += 1
            await asyncio.sleep(0.01)
        during = len(trims)
        await asyncio.sleep(0.5)
        task.cancel()
        return idle, during, len(trims)

    idle, during, after = asyncio.run(scenario())
    assert (idle, during, after) == (0, 0, 1)


def test_glibc_s_malloc_trim_is_found_here():
    trim = memory.glibc_malloc_trim()
    assert trim is not None and trim(0) in (0, 1)
