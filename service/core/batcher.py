"""Dynamic batching: sequences from every client share one queue per graph.

A batch leaves when it is full (`max_batch_size` sequences, or `max_batch_tokens` padded
tokens = longest x count) or when its oldest member has waited `max_wait_ms`, so batching
never adds more than that to anyone and, at saturation, the wait is never paid: the next
batch is cut the moment the runtime is free. Sequences of similar length are grouped to cut
padding. Sequences whose request was abandoned (client gone, deadline passed) are dropped
before they are computed. Inference runs in worker threads, off the event loop: with several
workers, the next batch is cut as soon as one is free, while the others still compute. The one
exception is a small batch that finds the batcher idle with nothing else on its way: it runs on
the event loop at once (see `inline_max_tokens`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.errors import Cancelled, DeadlineExceeded, InferenceFailed, MhaserveError, NotReady

T = TypeVar("T")
log = logging.getLogger(__name__)


class Job:
    """One request's sequences: results are collected by index and the future resolves once."""

    def __init__(self, size: int, deadline: float, is_disconnected: Callable[[], bool] | None):
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.results: list[Any] = [None] * size
        self.remaining = size
        self.deadline = deadline
        self.is_disconnected = is_disconnected
        self.queue_s = 0.0
        self.inference_s = 0.0

    @property
    def done(self) -> bool:
        return self.future.done()

    def abandoned(self, now: float) -> MhaserveError | None:
        if self.done:
            return Cancelled("request already answered")
        if self.is_disconnected is not None and self.is_disconnected():
            return Cancelled("client disconnected before its request was computed")
        if now >= self.deadline:
            return DeadlineExceeded("deadline passed while the request was queued; retry with a longer timeout")
        return None

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # a waiter still gets it; one that left (deadline, cancel) reads it no more

    def deliver(self, index: int, result: Any) -> None:
        if self.future.done():
            return
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(self.results)


@dataclass(eq=False)
class Sequence:
    """One input of one request, tokenized, waiting for a batch."""

    job: Job
    index: int  # position in the request
    length: int  # tokens, special tokens included
    payload: Any  # what the batch function needs (token ids, options)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchStats:
    size: int
    padded_tokens: int
    real_tokens: int
    queue_s: list[float]
    inference_s: float
    ok: bool = True


BatchFunction = Callable[[list[Sequence]], list[Any]]

# A batch stops growing when padding would make up more than this share of its tokens: a
# short sentence padded to a paragraph's length costs as much as the paragraph (more, with
# attention's T^2), and on the CPU the runtime, not the number of batches, is the bottleneck
# (docs/performance.md has the server CPU this share costs, and the command that measures it).
MAX_PADDING_SHARE = 0.1


class Batcher:
    """One queue and one worker thread for one graph."""

    def __init__(
        self,
        name: str,
        run_batch: BatchFunction,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait_ms: float,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_drop: Callable[[MhaserveError], None] | None = None,
        on_depth: Callable[[], None] | None = None,
        more_coming: Callable[[], bool] | None = None,
        thread_initializer: Callable[[], None] | None = None,
        workers: int = 1,
        inline_max_tokens: int = 0,
        alone: Callable[[], bool] | None = None,
    ):
        """inline_max_tokens: a request of at most this many padded tokens that finds nothing
        queued or computing here, and is `alone` (no other request admitted, being tokenized or
        in flight: the engine's count), runs on the event loop as it is submitted, instead of
        handing over to a worker thread and back: at idle those two thread wake-ups are a tenth
        of a short sentence's latency, and a batch this small holds the loop no longer than a
        couple of milliseconds. Requests that arrive meanwhile are read once it is over and hold
        tickets by then, so they are batched as usual. 0 (or no `alone`): never."""
        self.name = name
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.on_drop = on_drop
        self.on_depth = on_depth
        self.more_coming = more_coming or (lambda: True)
        self.inline_max_tokens = inline_max_tokens
        self.alone = alone or (lambda: False)
        self.queue: list[Sequence] = []
        self.queued_tokens = 0
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(workers, f"batcher-{name}", thread_initializer)
        self._worker_free = asyncio.Semaphore(workers)
        self._computing: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Fail what is still queued and stop the workers; running batches complete first."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._computing:
            await asyncio.wait(self._computing)
        for sequence in self.queue:
            sequence.job.fail(NotReady("server shut down before this request was computed; retry"))
        self._take(list(self.queue))
        self._executor.shutdown(wait=True)

    def submit(self, sequences: list[Sequence]) -> None:
        if self._runs_inline(sequences):
            self._compute_inline(sequences)
            return
        self.queue.extend(sequences)
        self.queued_tokens += sum(s.length for s in sequences)
        if self.on_depth:
            self.on_depth()
        self._arrived.set()

    def _runs_inline(self, sequences: list[Sequence]) -> bool:
        if not self.inline_max_tokens or self.queue or self._computing or self._task is None or self._task.done():
            return False
        padded = len(sequences) * max((s.length for s in sequences), default=0)
        return 0 < padded <= self.inline_max_tokens and self.alone()

    def _compute_inline(self, batch: list[Sequence]) -> None:
        started = time.monotonic()
        try:
            results = self.run_batch(batch)
        except Exception as exc:
            self._failed(batch, exc, started)
            return
        elapsed = time.monotonic() - started
        for sequence, result in zip(batch, results, strict=True):
            self._deliver(sequence, result, started, elapsed)
        self._observe(batch, started, elapsed)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self.queue:
                await self._worker_free.acquire()
                batch = await self._next_batch()
                if batch is None:
                    self._worker_free.release()
                    break
                self._take(batch)
                task = asyncio.create_task(self._compute(loop, batch))
                self._computing.add(task)
                task.add_done_callback(self._computed)

    async def _next_batch(self) -> list[Sequence] | None:
        """The batch a free worker runs next, once it is full or has waited enough; None if the queue empties."""
        while True:
            self._drop_abandoned()
            if not self.queue:
                return None
            batch, full = self._select()
            # wait for company only if some is on its way: a lone request at idle leaves at once
            if full or not self.more_coming():
                return batch
            waited = time.monotonic() - min(s.enqueued for s in self.queue)
            if waited >= self.max_wait_s:
                return batch
            # wait for company, but never past the oldest member's max_wait; then re-select
            try:
                await asyncio.wait_for(self._arrived.wait(), self.max_wait_s - waited)
                self._arrived.clear()
            except TimeoutError:
                pass

    def _computed(self, task: asyncio.Task) -> None:
        self._computing.discard(task)

    def _drop_abandoned(self) -> None:
        now = time.monotonic()
        dropped, counted = [], set()
        for sequence in self.queue:
            job = sequence.job
            reason = job.abandoned(now)
            if reason is None:
                continue
            dropped.append(sequence)
            if job.done:  # failed by its waiter (deadline) or by an earlier batch
                exc = job.future.exception() if not job.future.cancelled() else None
                reason = exc if isinstance(exc, MhaserveError) else reason
            else:
                job.fail(reason)
            if id(job) not in counted and self.on_drop:
                counted.add(id(job))
                self.on_drop(reason)
        if dropped:
            self._take(dropped)

    def _select(self) -> tuple[list[Sequence], bool]:
        """The oldest sequence plus its nearest neighbours by length, within the limits.

        Returns the batch and whether it is full (no further sequence would fit)."""
        by_length = sorted(self.queue, key=lambda s: (s.length, s.enqueued))
        oldest = min(range(len(by_length)), key=lambda i: by_length[i].enqueued)
        lo = hi = oldest  # the batch is by_length[lo : hi + 1]
        longest = real = by_length[oldest].length
        while hi - lo + 1 < self.max_batch_size:
            left = by_length[lo - 1] if lo > 0 else None
            right = by_length[hi + 1] if hi + 1 < len(by_length) else None
            if left is None and right is None:
                return by_length[lo : hi + 1], False
            # take the neighbour that adds the least padding
            if right is None or (left is not None and longest - left.length <= right.length - longest):
                candidate, new_longest = left, longest
            else:
                candidate, new_longest = right, right.length
            padded = new_longest * (hi - lo + 2)
            if padded > self.max_batch_tokens or padded - (real + candidate.length) > MAX_PADDING_SHARE * padded:
                return by_length[lo : hi + 1], True
            if candidate is left:
                lo -= 1
            else:
                hi += 1
            longest, real = new_longest, real + candidate.length
        return by_length[lo : hi + 1], True

    def _take(self, sequences: list[Sequence]) -> None:
        taken = set(map(id, sequences))
        self.queue = [s for s in self.queue if id(s) not in taken]
        self.queued_tokens -= sum(s.length for s in sequences)
        if self.on_depth:
            self.on_depth()

    async def _compute(self, loop: asyncio.AbstractEventLoop, batch: list[Sequence]) -> None:
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, batch)
        except Exception as exc:
            self._failed(batch, exc, started)
            return
        finally:
            self._worker_free.release()  # free for the next batch while this one's answers go out
        elapsed = time.monotonic() - started
        async for sequence, result in taking_turns(zip(batch, results, strict=True)):
            self._deliver(sequence, result, started, elapsed)
        self._observe(batch, started, elapsed)

    def _failed(self, batch: list[Sequence], exc: Exception, started: float) -> None:
        log.exception("batch of %d on the %s graph failed", len(batch), self.name)
        error = exc if isinstance(exc, MhaserveError) else _inference_failed(exc)
        for sequence in batch:
            sequence.job.fail(error)
        if self.on_batch:
            self.on_batch(BatchStats(len(batch), 0, 0, [], time.monotonic() - started, ok=False))

    @staticmethod
    def _deliver(sequence: Sequence, result: Any, started: float, elapsed: float) -> None:
        job = sequence.job
        job.queue_s = max(job.queue_s, started - sequence.enqueued)
        job.inference_s = max(job.inference_s, elapsed)
        job.deliver(sequence.index, result)

    def _observe(self, batch: list[Sequence], started: float, elapsed: float) -> None:
        if self.on_batch:
            longest = max(s.length for s in batch)
            self.on_batch(
                BatchStats(
                    size=len(batch),
                    padded_tokens=longest * len(batch),
                    real_tokens=sum(s.length for s in batch),
                    queue_s=[started - s.enqueued for s in batch],
                    inference_s=elapsed,
                )
            )


WAKEUPS_PER_TURN = 8


async def taking_turns(items: Iterable[T]) -> AsyncIterator[T]:
    """The items, with a turn of the event loop after every WAKEUPS_PER_TURN of them.

    Each item given out wakes a request's task (a batch's answers, a tokenized group), and
    asyncio runs everything woken in one pass before it reads its sockets again: 64 answers at
    once would hold every arriving request, and every refusal, for that long."""
    for count, item in enumerate(items, 1):
        yield item
        if count % WAKEUPS_PER_TURN == 0:
            await asyncio.sleep(0)


def _inference_failed(exc: Exception) -> MhaserveError:
    return InferenceFailed(
        f"inference failed for the batch holding this request ({type(exc).__name__}: {exc}); "
        "other requests are unaffected, retrying may succeed"
    )
