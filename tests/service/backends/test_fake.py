"""The fake backend: deterministic numbers, and a bounded record of its batches."""

from __future__ import annotations

import numpy as np

from service.backends.fake import CALLS_KEPT, FakeBackend


def test_a_served_fake_keeps_only_its_latest_batches():
    backend = FakeBackend()
    ids = np.array([[2, 4, 3]], dtype=np.int64)
    for _ in range(CALLS_KEPT + 5):
        backend.embed(ids, np.ones_like(ids))
    backend.embed(np.array([[2, 4, 5, 3]], dtype=np.int64), np.ones((1, 4), dtype=np.int64))
    assert len(backend.calls) == CALLS_KEPT and backend.calls[-1] == ("fast", (1, 4))


def test_hidden_states_say_token_position_and_length_and_are_zero_where_padded():
    backend = FakeBackend()
    ids = np.array([[2, 7, 3], [2, 3, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    hidden = backend.embed(ids, mask)
    np.testing.assert_array_equal(hidden[0, :, :4], [[2, 0, 3, 1], [7, 1, 3, 1], [3, 2, 3, 1]])
    np.testing.assert_array_equal(hidden[1, 2], np.zeros(backend.spec.d_model))
