"""Capacity's tickets: what an edge lets through counts against the queue's room, exactly once,
and a queue that refuses while empty shows as stuck."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.backends.fake import FAKE_SPEC
from service.config import load_settings
from service.core.capacity import STUCK_AFTER_S, Capacity, Ticket
from service.errors import Overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def capacity(queued: int = 0, room: int = 100, clock: Clock | None = None) -> Capacity:
    settings = load_settings({"max_queue_tokens": str(room)}, {})
    return Capacity(settings, FAKE_SPEC.max_len, lambda: queued, clock=clock or Clock())


def ticket(queue: Capacity, estimate: int) -> Ticket:
    decision = queue.try_admit(estimate)
    assert isinstance(decision, Ticket), decision
    return decision


def test_a_ticket_takes_room_until_it_is_released_once():
    queue = capacity(queued=40)
    assert not queue.clearly_full(50)
    first = ticket(queue, 30)
    assert queue.clearly_full(31) and not queue.clearly_full(30)  # 40 queued + 30 held + 31 > 100
    assert isinstance(queue.try_admit(31), Overloaded)
    first.release()
    first.release()  # the engine took it over, then the request ended: counted back once
    assert queue.reserved_tokens == 0 and queue.tickets == 0 and not queue.clearly_full(60)


def test_tickets_and_tokenizing_count_at_the_size_tokenizing_has_been_finding():
    queue = capacity()
    for _ in range(200):
        queue.observe_tokens(10, 15)  # texts hold half again their word count
    assert queue.expected(10) == 15
    assert ticket(queue, 10).tokens == 15
    with queue.being_tokenized(10):
        assert queue.tokenizing_tokens == 15
    assert queue.expected(10) >= 10  # never below the lower bound, whatever was seen
    for _ in range(200):
        queue.observe_tokens(10, 5)
    assert queue.expected(10) == 10


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 3)), max_size=40))
def test_what_stays_reserved_is_the_sum_of_the_unreleased_however_often_each_is_released(steps):
    queue = capacity(room=10_000)
    held = []
    for tokens, releases in steps:
        held.append(ticket(queue, tokens))
        if releases:
            released = held.pop(0)
            for _ in range(releases):  # the engine, the app and the connection may each release it
                released.release()
    assert queue.reserved_tokens == sum(t.tokens for t in held)
    assert queue.tickets == len(held)


def test_refusing_with_an_empty_queue_for_a_few_seconds_is_stuck_and_says_what_holds_the_room():
    clock = Clock()
    queue = capacity(room=100, clock=clock)
    leaked = ticket(queue, 99)  # a ticket nobody releases: the queue is empty, yet full
    assert isinstance(queue.try_admit(3), Overloaded)
    assert not queue.stuck()
    clock.now += STUCK_AFTER_S - 0.1
    assert not queue.stuck()
    clock.now += 0.2
    assert queue.stuck()
    assert "99 tokens held by 1 tickets" in queue.stuck_reason()
    leaked.release()
    assert not queue.stuck()


def test_refusing_while_work_is_queued_is_overload_not_stuck():
    clock = Clock()
    queue = capacity(queued=98, room=100, clock=clock)
    for _ in range(10):
        assert isinstance(queue.try_admit(3), Overloaded)
        clock.now += 1.0
    assert not queue.stuck()


def test_a_ticket_let_through_ends_a_stuck_spell():
    clock = Clock()
    queue = capacity(room=100, clock=clock)
    held = ticket(queue, 99)
    queue.try_admit(3)
    clock.now += STUCK_AFTER_S / 2
    held.release()
    ticket(queue, 3)  # room again: the spell is over, and a new one starts from zero
    clock.now += STUCK_AFTER_S / 2 + 0.1
    assert not queue.stuck()
