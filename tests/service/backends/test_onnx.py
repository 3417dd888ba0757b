"""The runtime's choices: workers and threads, and which session a batch runs on."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.backends.onnx import CPU, CUDA, GraphRunner, compute_threads
from service.config import load_settings


class FakeSession:
    """Records its runs; a run waits for `release` when `hold` is set."""

    def __init__(self, name: str, hold: bool = False):
        self.name, self.calls = name, 0
        self.started, self.release = threading.Event(), threading.Event()
        self.hold = hold

    def run(self, output_names, feeds):
        self.calls += 1
        self.started.set()
        if self.hold:
            self.release.wait(10)
        return [self.name]


def runner(session: FakeSession, solo: FakeSession) -> GraphRunner:
    return GraphRunner("fast", "fast.onnx", "fp32", CPU, session, ("last_hidden_state",), solo)


def test_a_batch_that_starts_alone_gets_every_core_and_one_beside_it_gets_its_share():
    worker_session, solo = FakeSession("worker share"), FakeSession("all cores", hold=True)
    graph = runner(worker_session, solo)
    ids = np.ones((1, 4), dtype=np.int64)
    first = threading.Thread(target=graph.run, args=(ids, ids))
    first.start()
    assert solo.started.wait(10)  # alone: on the session with every core
    assert graph.run(ids, ids) == ["worker share"]  # the first is still running
    solo.release.set()
    first.join(10)
    assert graph.run(ids, ids) == ["all cores"]  # alone again
    assert (solo.calls, worker_session.calls) == (2, 1)


@pytest.mark.parametrize(
    ("flags", "provider", "cores", "expected"),
    [
        ({}, CPU, 2, (2, 1)),  # auto on a small CPU: two single-threaded workers
        ({}, CPU, 8, (2, 4)),
        ({}, CPU, 1, (1, 1)),
        ({}, CUDA, 16, (1, 16)),  # a GPU runs one batch at a time
        ({"intra_op_threads": "1"}, CPU, 2, (1, 1)),  # explicit threads alone: one worker with all of them
        ({"inference_workers": "1"}, CPU, 4, (1, 4)),
        ({"inference_workers": "3", "intra_op_threads": "2"}, CPU, 8, (3, 2)),
    ],
)
def test_workers_and_threads_from_the_settings(flags, provider, cores, expected):
    assert compute_threads(load_settings(flags, {}), provider, cores) == expected


def test_more_compute_threads_than_cores_is_allowed_but_logged(caplog):
    assert compute_threads(load_settings({"inference_workers": "2", "intra_op_threads": "2"}, {}), CPU, 2) == (2, 2)
    assert "4 compute threads on 2 usable cores" in caplog.text
