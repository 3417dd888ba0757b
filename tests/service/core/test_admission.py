"""Admission's reservations: what the REST edge lets through counts against the queue's room."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.backends.fake import FAKE_SPEC
from service.config import load_settings
from service.core.admission import Admission


def admission(queued: int = 0, room: int = 100) -> Admission:
    return Admission(load_settings({"max_queue_tokens": str(room)}, {}), FAKE_SPEC, lambda: queued)


def test_a_reservation_takes_room_until_it_is_released_once():
    queue = admission(queued=40)
    assert not queue.clearly_full(50)
    first = queue.reserve(30)
    assert queue.clearly_full(31) and not queue.clearly_full(30)  # 40 queued + 30 reserved + 31 > 100
    first.release()
    first.release()  # the engine took it over, then the request ended: counted back once
    assert queue.reserved_tokens == 0 and not queue.clearly_full(60)


def test_reservations_and_tokenizing_count_at_the_size_tokenizing_has_been_finding():
    queue = admission()
    for _ in range(200):
        queue.observe_tokens(10, 15)  # texts hold half again their word count
    assert queue.expected(10) == 15
    assert queue.reserve(10).tokens == 15
    with queue.being_tokenized(10):
        assert queue.tokenizing_tokens == 15
    assert queue.expected(10) >= 10  # never below the lower bound, whatever was seen
    for _ in range(200):
        queue.observe_tokens(10, 5)
    assert queue.expected(10) == 10


@given(st.lists(st.tuples(st.integers(1, 50), st.booleans()), max_size=30))
def test_what_stays_reserved_is_the_sum_of_the_unreleased(steps):
    queue = admission()
    held = []
    for tokens, release_one in steps:
        held.append(queue.reserve(tokens))
        if release_one:
            held.pop(0).release()
    assert queue.reserved_tokens == sum(r.tokens for r in held)
