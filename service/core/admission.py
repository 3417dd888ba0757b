"""Admission and limits: what a request may ask for, and whether the queue has room for it.

Checks run cheapest first: a request's shape and options before it is tokenized, a guess
at its tokens against the queue's room before tokenizing (a refusal under overload then
costs no tokenizer round trip), and the exact token count when it is queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Callable, Iterator

from artifact.pooling import POOLING_MODES
from service.backends.base import ModelSpec
from service.config import Settings
from service.core.attention import REDUCTIONS, AttentionPlan
from service.errors import InvalidRequest, Overloaded, PayloadTooLarge
from service.types import AttentionSelection

MIN_REQUEST_TOKENS = 3  # the smallest request: one input of one token, with [CLS] and [SEP]
RATE_WINDOW_S = 2.0  # the drain rate is measured over this much of the latest saturated time
ESTIMATE_SMOOTHING = 0.05  # weight of each tokenized request in tokens_per_estimated


def estimate_tokens(texts: list[str] | tuple[str, ...], max_len: int) -> int:
    """Tokens the texts will hold at least, guessed without tokenizing: each one's words plus
    [CLS] and [SEP] (WordPiece gives ordinary text at least a token per word), at most max_len."""
    return sum(min(max_len, len(text.split()) + 2) for text in texts)


class Admission:
    def __init__(
        self,
        settings: Settings,
        spec: ModelSpec,
        queued_tokens: Callable[[], int],
        on_inflight: Callable[[int], None] = lambda n: None,
    ):
        self.settings = settings
        self.spec = spec
        self.queued_tokens = queued_tokens
        self.on_inflight = on_inflight
        self.inflight = 0
        self.tokenizing = 0  # admitted requests not yet queued: company for a waiting batch
        self.tokenizing_tokens = 0  # their estimated tokens, counted against the queue's room
        self.reserved_tokens = 0  # let through by the REST edge, not yet seen by the engine: reserve()
        self.tokens_per_estimated = 1.0  # what tokenizing finds per estimated token, lately: expected()
        self.tokens_per_s: float | None = None  # the rate the queue drains at, once measured saturated
        self._saturated: collections.deque[tuple[float, int]] = collections.deque()
        self.idle = asyncio.Event()
        self.idle.set()

    # the request's shape ---------------------------------------------------------------

    def check_inputs(self, inputs: tuple[str, ...]) -> None:
        if not inputs:
            raise InvalidRequest("inputs is empty: send at least one string")
        limit = self.settings.max_inputs_per_request
        if len(inputs) > limit:
            raise InvalidRequest(f"{len(inputs)} inputs in one request, the limit is {limit}: split the request")
        for i, text in enumerate(inputs):
            if not isinstance(text, str):
                raise InvalidRequest(f"inputs[{i}] must be a string, got {type(text).__name__}")
            if not text:
                raise InvalidRequest(f"inputs[{i}] is an empty string: send some text")

    def with_prompt(self, inputs: tuple[str, ...], prompt_name: str | None) -> tuple[str, ...]:
        """The inputs as the model reads them: its prompt prepended, as sentence-transformers does."""
        name = prompt_name or self.spec.default_prompt_name
        if name is None:
            return inputs
        if name not in self.spec.prompts:
            known = ", ".join(repr(p) for p in self.spec.prompts) or "none"
            raise InvalidRequest(f"prompt_name {name!r} is not one of {self.spec.name}'s prompts ({known})")
        prompt = self.spec.prompts[name]
        return tuple(prompt + text for text in inputs)

    def check_pooling(self, pooling: str | None) -> str:
        pooling = pooling or self.spec.pooling
        if pooling not in POOLING_MODES:
            raise InvalidRequest(f"pooling {pooling!r} is not supported: use one of {', '.join(POOLING_MODES)}")
        return pooling

    def resolve_attention(self, selection: AttentionSelection | None) -> AttentionPlan | None:
        if selection is None:
            return None
        layers = indices(selection.layers, self.spec.n_layers, "layer")
        heads = indices(selection.heads, self.spec.n_heads, "head")
        if selection.reduce_heads not in REDUCTIONS:
            raise InvalidRequest(
                f"head reduction {selection.reduce_heads!r} is not supported: use 'none', 'mean' or 'max'"
            )
        if not isinstance(selection.rollout, bool):
            raise InvalidRequest(f"rollout must be true or false, got {selection.rollout!r}")
        return AttentionPlan(layers, heads, selection.reduce_heads, selection.rollout, positions(selection.rows))

    def check_attention_rows(self, plan: AttentionPlan, lengths: list[int]) -> None:
        """Rows are query positions: each must lie inside every input's tokens."""
        if plan.rows is None:
            return
        for i, n in enumerate(lengths):
            outside = [row for row in plan.rows if row >= n]
            if outside:
                raise InvalidRequest(
                    f"attention row {outside[0]} is outside input {i} (0-based), which is {n} tokens long "
                    f"(special tokens included): choose rows 0..{n - 1}"
                )

    def check_attention_values(self, plan: AttentionPlan, lengths: list[int]) -> None:
        """The limit applies to the answer as sent, after head reduction, rollout and row selection."""
        values = sum(math.prod(plan.shape(n)) for n in lengths)
        limit = self.settings.max_attention_values
        if values > limit:
            raise PayloadTooLarge(
                f"the attention answer would hold {values:,} values, over the limit of {limit:,}: ask for fewer "
                "layers, heads or rows, a head reduction or the rollout, shorter or fewer inputs, "
                "or raise --max-attention-values"
            )

    # the queue's room ------------------------------------------------------------------

    def estimate_tokens(self, inputs: tuple[str, ...]) -> int:
        return estimate_tokens(inputs, self.spec.max_len)

    def room(self) -> int:
        """Tokens the queue takes now: max_queue_tokens, and no more than drains in max_queue_wait_s
        at the rate measured while saturated, so that under overload what is accepted is answered
        within seconds (and its connections are not held for long) while the rest is refused at once."""
        limit = self.settings.max_queue_tokens
        wait_s = self.settings.max_queue_wait_s
        if wait_s > 0 and self.tokens_per_s is not None:
            limit = min(limit, max(self.spec.max_len, int(self.tokens_per_s * wait_s)))
        return limit

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

    def clearly_full(self, at_least: int = MIN_REQUEST_TOKENS) -> bool:
        """True when a request of at least this many tokens cannot fit: the queue, with what is
        being tokenized or reserved, has less room. Only while other work waits, and never for a request
        too big for any queue (that gets its exact 413 after tokenizing)."""
        pending = self.queued_tokens() + self.tokenizing_tokens + self.reserved_tokens
        if not pending or at_least > self.settings.max_queue_tokens:
            return False
        return pending + at_least > self.room()

    def expected(self, estimate: int) -> int:
        """The tokens a request estimated at `estimate` (a lower bound) will likely hold.

        What others have on the way to the queue is counted at this size: counted at the lower
        bound, the edge would let through more than fits, and the excess would be refused late,
        after tokenizing. A request is itself refused only when its lower bound cannot fit."""
        return max(estimate, round(estimate * self.tokens_per_estimated))

    def observe_tokens(self, estimate: int, tokens: int) -> None:
        if estimate > 0:
            self.tokens_per_estimated += ESTIMATE_SMOOTHING * (tokens / estimate - self.tokens_per_estimated)

    def reserve(self, estimate: int) -> Reservation:
        """Counts a request the edge let through against the room until the engine counts it.

        Under a flood requests arrive faster than the full path (routing, validation) brings
        them to the engine; without this each would see the same room, all would be let
        through, and most would then be refused late, after waiting their turn on the loop."""
        tokens = self.expected(estimate)
        self.reserved_tokens += tokens
        return Reservation(self, tokens)

    def refuse_when_full(self, estimate: int) -> None:
        """Refuses before tokenizing when the queue has no room for this request's least size;
        `check_room` holds what is let through to the queue's memory cap at its exact size."""
        if self.clearly_full(estimate):
            raise self.at_capacity(self.queued_tokens())

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
            raise self.at_capacity(queued)

    def at_capacity(self, queued: int) -> Overloaded:
        return Overloaded(
            f"the server is at capacity ({queued:,} tokens queued, room for {self.room():,} now); "
            "retry after the Retry-After interval",
            retry_after_s=1,
        )

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


def indices(chosen: tuple[int, ...] | None, count: int, what: str) -> tuple[int, ...]:
    """None means all; an empty selection, an unknown index or a repeated one is refused."""
    if chosen is None:
        return tuple(range(count))
    if not chosen:
        raise InvalidRequest(f"the attention {what} selection is empty: list at least one {what}, or ask for all")
    for value in chosen:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            raise InvalidRequest(f"{what} {value!r} does not exist: the model has {what}s 0..{count - 1}")
    if len(set(chosen)) != len(chosen):
        raise InvalidRequest(f"the attention {what} selection lists a {what} twice: {list(chosen)}")
    return tuple(chosen)


def positions(rows: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """Query positions: None means every row; an empty list, a negative or a repeated one is refused.
    Whether each lies inside the text is known only after tokenizing (check_attention_rows)."""
    if rows is None:
        return None
    if not rows:
        raise InvalidRequest("the attention row selection is empty: list at least one row, or ask for all")
    for value in rows:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(f"attention row {value!r} is not a token position: rows are 0-based, 0 is [CLS]")
    if len(set(rows)) != len(rows):
        raise InvalidRequest(f"the attention row selection lists a row twice: {list(rows)}")
    return tuple(rows)


class Reservation:
    """A request's expected tokens, held against the room from the edge to the engine."""

    def __init__(self, admission: Admission, tokens: int):
        self.admission: Admission | None = admission
        self.tokens = tokens

    def release(self) -> None:
        """Idempotent: the engine takes the request over, or it ends before reaching it."""
        if self.admission is not None:
            self.admission.reserved_tokens -= self.tokens
            self.admission = None
