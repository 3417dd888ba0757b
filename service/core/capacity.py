"""Capacity: whether a model's queue has room for a request, and the tickets that hold room.

Every edge asks the same question before the work is parsed and validated in full
(`Models.try_admit`): a guess at the request's tokens against the queue's room, so that a
refusal under overload costs no validation and no tokenizer round trip. What is let through
holds a `Ticket` for its expected tokens until the engine takes the request over; the exact
token count is checked again when the request is queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

from service.config import Settings
from service.errors import Overloaded, PayloadTooLarge

MIN_REQUEST_TOKENS = 3  # the smallest request: one input of one token, with [CLS] and [SEP]
RATE_WINDOW_S = 2.0  # the drain rate is measured over this much of the latest saturated time
ESTIMATE_SMOOTHING = 0.05  # weight of each tokenized request in tokens_per_estimated
STUCK_AFTER_S = 5.0  # refusing with an empty queue for this long means room is held that nothing uses


def estimate_tokens(texts: Sequence[str], max_len: int) -> int:
    """Tokens the texts will hold at least, guessed without tokenizing: each one's words plus
    [CLS] and [SEP] (WordPiece gives ordinary text at least a token per word), at most max_len."""
    return sum(min(max_len, len(text.split()) + 2) for text in texts)


class Ticket:
    """Room a request holds in its model's queue from the edge's decision until the engine
    takes it over (or the request ends before that). Releasing is idempotent, so every path
    that may end a request releases, and the room comes back exactly once."""

    __slots__ = ("capacity", "tokens")

    def __init__(self, capacity: Capacity | None, tokens: int):
        self.capacity = capacity
        self.tokens = tokens

    def held_for(self, capacity: Capacity) -> bool:
        return self.capacity is capacity

    def release(self) -> None:
        capacity, self.capacity = self.capacity, None
        if capacity is not None:
            capacity.reserved_tokens -= self.tokens
            capacity.tickets -= 1


UNHELD = Ticket(None, 0)  # let through without holding room: the engine's full path decides


class Capacity:
    def __init__(
        self,
        settings: Settings,
        max_len: int,
        queued_tokens: Callable[[], int],
        on_inflight: Callable[[int], None] = lambda n: None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.max_len = max_len
        self.queued_tokens = queued_tokens
        self.on_inflight = on_inflight
        self.clock = clock
        self.inflight = 0
        self.tokenizing = 0  # admitted requests not yet queued: company for a waiting batch
        self.tokenizing_tokens = 0  # their estimated tokens, counted against the queue's room
        self.reserved_tokens = 0  # held by tickets the engine has not taken over yet
        self.tickets = 0
        self.tokens_per_estimated = 1.0  # what tokenizing finds per estimated token, lately: expected()
        self.tokens_per_s: float | None = None  # the rate the queue drains at, once measured saturated
        self.refusing_empty_since: float | None = None  # see stuck()
        self._saturated: collections.deque[tuple[float, int]] = collections.deque()
        self.idle = asyncio.Event()
        self.idle.set()

    # the decision ----------------------------------------------------------------------

    def try_admit(self, estimate: int) -> Ticket | Overloaded:
        """A ticket for a request estimated at `estimate` tokens (a lower bound), or the refusal
        when even that cannot fit.

        Under a flood requests arrive faster than the full path (routing, validation) brings
        them to the engine; without tickets each would see the same room, all would be let
        through, and most would then be refused late, after waiting their turn on the loop."""
        if self.clearly_full(estimate):
            return self.refusal()
        self.refusing_empty_since = None
        tokens = self.expected(estimate)
        self.reserved_tokens += tokens
        self.tickets += 1
        return Ticket(self, tokens)

    def refusal(self) -> Overloaded:
        queued = self.queued_tokens()
        self._observe_refusal(queued)
        return Overloaded(
            f"the server is at capacity ({queued:,} tokens queued, room for {self.room():,} now); "
            "retry after the Retry-After interval",
            retry_after_s=1,
        )

    def estimate_tokens(self, texts: Sequence[str]) -> int:
        return estimate_tokens(texts, self.max_len)

    # the queue's room ------------------------------------------------------------------

    def room(self) -> int:
        """Tokens the queue takes now: max_queue_tokens, and no more than drains in max_queue_wait_s
        at the rate measured while saturated, so that under overload what is accepted is answered
        within seconds (and its connections are not held for long) while the rest is refused at once."""
        limit = self.settings.max_queue_tokens
        wait_s = self.settings.max_queue_wait_s
        if wait_s > 0 and self.tokens_per_s is not None:
            limit = min(limit, max(self.max_len, int(self.tokens_per_s * wait_s)))
        return limit

    def pending_tokens(self) -> int:
        return self.queued_tokens() + self.tokenizing_tokens + self.reserved_tokens

    def clearly_full(self, at_least: int = MIN_REQUEST_TOKENS) -> bool:
        """True when a request of at least this many tokens cannot fit: the queue, with what is
        being tokenized or held by tickets, has less room. Only while other work waits, and never
        for a request too big for any queue (that gets its exact 413 after tokenizing)."""
        pending = self.pending_tokens()
        if not pending or at_least > self.settings.max_queue_tokens:
            return False
        return pending + at_least > self.room()

    def record_batch(self, tokens: int, now: float) -> None:
        """A computed fast-path batch. While work stays queued the backend is saturated, and the
        tokens it finishes per second of wall time are the rate the queue drains at, whatever
        else (parsing, refusing, the tokenizer) shares the cores; an empty queue ends the window."""
        if not self.queued_tokens():
            self._saturated.clear()
            return
        window = self._saturated
        window.append((now, tokens))
        while now - window[0][0] > RATE_WINDOW_S:
            window.popleft()
        span = now - window[0][0]
        if span >= RATE_WINDOW_S / 4:
            self.tokens_per_s = sum(n for _, n in list(window)[1:]) / span

    def expected(self, estimate: int) -> int:
        """The tokens a request estimated at `estimate` (a lower bound) will likely hold.

        What others have on the way to the queue is counted at this size: counted at the lower
        bound, the edge would let through more than fits, and the excess would be refused late,
        after tokenizing. A request is itself refused only when its lower bound cannot fit."""
        return max(estimate, round(estimate * self.tokens_per_estimated))

    def observe_tokens(self, estimate: int, tokens: int) -> None:
        if estimate > 0:
            self.tokens_per_estimated += ESTIMATE_SMOOTHING * (tokens / estimate - self.tokens_per_estimated)

    def check_room(self, tokens: int) -> None:
        limit = self.settings.max_queue_tokens
        if tokens > limit:
            raise PayloadTooLarge(
                f"this request holds {tokens:,} tokens, more than the whole queue takes ({limit:,}): "
                "split it into smaller requests"
            )
        # the time bound (room) was applied when the request was let in, at its estimated size;
        # refused now, after it waited for the tokenizer, it would be a late refusal of work the
        # queue was counting on. Its exact size is held to the queue's memory cap.
        queued = self.queued_tokens()
        if queued and queued + tokens > limit:  # an empty queue takes anything up to the limit
            raise self.refusal()

    # a stuck queue ---------------------------------------------------------------------

    def stuck(self) -> bool:
        """Refusing, with nothing queued, for STUCK_AFTER_S: room is held that no request uses
        (tickets never released, say). Readiness turns false, so the replica leaves rotation."""
        if self.queued_tokens() or not self.clearly_full():
            self.refusing_empty_since = None
            return False
        if self.refusing_empty_since is None:
            self.refusing_empty_since = self.clock()
        return self.clock() - self.refusing_empty_since >= STUCK_AFTER_S

    def stuck_reason(self) -> str:
        return (
            f"refusing with an empty queue for {STUCK_AFTER_S:.0f} s or more: {self.reserved_tokens:,} tokens held "
            f"by {self.tickets:,} tickets, {self.tokenizing_tokens:,} being tokenized, room for {self.room():,}"
        )

    def _observe_refusal(self, queued: int) -> None:
        if queued:
            self.refusing_empty_since = None
        elif self.refusing_empty_since is None:
            self.refusing_empty_since = self.clock()

    # what is in flight -----------------------------------------------------------------

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        self.inflight += 1
        self.idle.clear()
        self.on_inflight(self.inflight)
        try:
            yield
        finally:
            self.inflight -= 1
            self.on_inflight(self.inflight)
            if self.inflight == 0:
                self.idle.set()

    @contextlib.contextmanager
    def being_tokenized(self, estimate: int) -> Iterator[None]:
        expected = self.expected(estimate)
        self.tokenizing += 1
        self.tokenizing_tokens += expected
        try:
            yield
        finally:
            self.tokenizing -= 1
            self.tokenizing_tokens -= expected
