"""The batcher on its own: how many batches compute at once, and what stop() waits for."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.core.batcher import WAKEUPS_PER_TURN, Batcher, Job, Sequence

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


def queued(batcher: Batcher, lengths: list[int]) -> list[Sequence]:
    """Sequences of these lengths, queued oldest first (the batcher's loop is not started)."""
    job = Job(len(lengths), time.monotonic() + 30, None)
    sequences = []
    for i, length in enumerate(lengths):
        sequence = Sequence(job, i, length, payload=i)
        sequence.enqueued = 1000.0 + i  # strictly increasing: the first is the oldest
        sequences.append(sequence)
    batcher.submit(sequences)
    return sequences


def selected(lengths: list[int], **limits) -> tuple[list[int], bool]:
    async def scenario():
        options = {"max_batch_size": 64, "max_batch_tokens": 16384, "max_wait_ms": 2.0, **limits}
        batcher = Batcher("test", lambda batch: batch, **options)
        queued(batcher, lengths)
        batch, full = batcher._select()
        return [s.length for s in batch], full

    return asyncio.run(scenario())


def test_a_batch_grows_from_the_oldest_sequence_to_its_nearest_lengths():
    batch, full = selected([20, 5, 21, 19, 80, 22])
    assert sorted(batch) == [19, 20, 21, 22] and full  # 5 and 80 would make it mostly padding


def test_padding_never_passes_a_tenth_of_a_batch():
    for lengths in ([10, 9, 8, 7, 6, 5, 4, 3], [30, 29, 31, 25, 33, 28, 40], [12] * 5 + [11] * 5 + [1]):
        batch, _ = selected(lengths)
        padded = max(batch) * len(batch)
        assert padded - sum(batch) <= 0.1 * padded, (lengths, batch)
        assert lengths[0] in batch  # the oldest sequence is always in the batch cut next


def test_a_batch_respects_its_token_and_size_limits():
    batch, full = selected([100] * 10, max_batch_tokens=350)
    assert batch == [100, 100, 100] and full
    batch, full = selected([8] * 10, max_batch_size=4)
    assert batch == [8] * 4 and full
    batch, full = selected([8, 8, 8])
    assert batch == [8, 8, 8] and not full  # room for more: it may wait for company


def test_abandoned_sequences_are_dropped_before_they_are_computed():
    computed: list[int] = []
    drops: list[str] = []

    async def scenario():
        batcher = Batcher(
            "test",
            lambda batch: [computed.append(s.payload) or s.payload for s in batch],
            max_batch_size=64,
            max_batch_tokens=16384,
            max_wait_ms=0,
            on_drop=lambda error: drops.append(type(error).__name__),
        )
        gone = Job(1, time.monotonic() + 30, is_disconnected=lambda: True)
        expired = Job(1, time.monotonic() - 1, None)
        kept = Job(1, time.monotonic() + 30, None)
        batcher.submit([Sequence(gone, 0, 8, "gone"), Sequence(expired, 0, 8, "expired"), Sequence(kept, 0, 8, "kept")])
        batcher.start()
        result = await kept.future
        await batcher.stop()
        return result, gone.future.exception(), expired.future.exception()

    result, gone_error, expired_error = asyncio.run(scenario())
    assert result == ["kept"] and computed == ["kept"]
    assert "disconnected" in str(gone_error) and "deadline" in str(expired_error)
    assert sorted(drops) == ["Cancelled", "DeadlineExceeded"]


def test_a_batch_s_answers_go_out_in_turns_so_the_loop_reads_its_sockets_between():
    """64 answers at once would wake 64 tasks in one pass of the loop, ahead of every socket."""

    async def scenario():
        batcher = Batcher("test", SlowRuntime(), max_batch_size=64, max_batch_tokens=10**6, max_wait_ms=0)
        batcher.start()
        jobs = [await submit(batcher, [f"text {i}"]) for i in range(64)]
        delivered_when_ticked: list[int] = []

        async def ticker():  # stands for the loop's I/O: one callback per pass
            while not all(job.future.done() for job in jobs):
                delivered_when_ticked.append(sum(job.future.done() for job in jobs))
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(job.future for job in jobs))
        await tick
        await batcher.stop()
        return delivered_when_ticked

    seen = asyncio.run(scenario())
    partial = [n for n in seen if 0 < n < 64]
    assert partial, seen  # the ticker ran while the batch's answers were going out
    assert all(n % WAKEUPS_PER_TURN == 0 for n in partial), partial


class ThreadRecorder:
    """A quick batch function that records the thread each batch ran on; `fail_on` fails a batch."""

    def __init__(self, fail_on: str | None = None, hold_s: float = 0.0):
        self.threads: list[int] = []
        self.fail_on, self.hold_s = fail_on, hold_s

    def __call__(self, batch: list[Sequence]) -> list[str]:
        self.threads.append(threading.get_ident())
        time.sleep(self.hold_s)
        if any(s.payload == self.fail_on for s in batch):
            raise RuntimeError("this batch fails")
        return [f"result of {s.payload}" for s in batch]


def lengths_job(batcher: Batcher, lengths: list[int], text: str = "t") -> Job:
    job = Job(len(lengths), time.monotonic() + 30, None)
    batcher.submit([Sequence(job, i, n, f"{text} {i}") for i, n in enumerate(lengths)])
    return job


def test_a_small_batch_at_idle_runs_on_the_event_loop_and_is_answered_as_it_is_submitted():
    runtime = ThreadRecorder(fail_on="bad 0")

    async def scenario():
        batcher = Batcher(
            "test",
            runtime,
            max_batch_size=8,
            max_batch_tokens=1024,
            max_wait_ms=0,
            inline_max_tokens=32,
            alone=lambda: True,  # no other request in the engine (its count)
        )
        batcher.start()
        loop_thread = threading.get_ident()
        lone = lengths_job(batcher, [13])
        answered_at_once = lone.done
        pair = lengths_job(batcher, [16, 16])  # 32 padded tokens: still small
        bad = lengths_job(batcher, [8], "bad")  # fails on the loop as it would on a worker: only its job
        big = lengths_job(batcher, [17, 17])  # 34 padded tokens: a worker's
        await asyncio.gather(big.future)
        await batcher.stop()
        return loop_thread, answered_at_once, lone, pair, bad, big

    loop_thread, answered_at_once, lone, pair, bad, big = asyncio.run(scenario())
    assert answered_at_once and lone.future.result() == ["result of t 0"]
    assert pair.future.result() == ["result of t 0", "result of t 1"]
    with pytest.raises(Exception, match="inference failed for the batch holding this request"):
        bad.future.result()
    assert big.future.result() == ["result of t 0", "result of t 1"]
    assert runtime.threads[:3] == [loop_thread] * 3 and runtime.threads[3] != loop_thread


def test_a_small_batch_goes_to_a_worker_when_another_computes_or_it_is_not_alone():
    runtime = ThreadRecorder(hold_s=0.05)
    coming = False

    async def scenario():
        batcher = Batcher(
            "test",
            runtime,
            max_batch_size=1,
            max_batch_tokens=1024,
            max_wait_ms=0,
            inline_max_tokens=32,
            more_coming=lambda: coming,
            alone=lambda: not coming,
        )
        batcher.start()
        first = lengths_job(batcher, [40])  # too big: a worker's
        await asyncio.sleep(0.01)  # it computes
        beside = lengths_job(batcher, [8])  # small, but another batch computes
        await asyncio.gather(first.future, beside.future)
        nonlocal coming
        coming = True
        company = lengths_job(batcher, [8])  # idle, but not alone: it waits for company
        waited = not company.done
        await company.future
        coming = False
        never = Batcher("never", runtime, max_batch_size=1, max_batch_tokens=1024, max_wait_ms=0)
        never.start()
        default = lengths_job(never, [8])  # inline_max_tokens 0: never on the loop
        await default.future
        await batcher.stop()
        await never.stop()
        return threading.get_ident(), waited

    loop_thread, waited = asyncio.run(scenario())
    assert waited and len(runtime.threads) == 4 and loop_thread not in runtime.threads
