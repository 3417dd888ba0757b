"""service/threads.py in a real server: the inference threads run at --inference-nice, the event
loop does not; and a server still loading says so instead of answering."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.http import post


def inference_nice_values(pid: int) -> dict[int, int]:
    """Each thread's nice value (field 19 of /proc/<pid>/task/<tid>/stat)."""
    values = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
        values[int(tid)] = int(fields[16])
    return values


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are a Linux feature")
def test_a_loading_server_says_so_and_its_inference_threads_run_at_the_inference_nice_value(start_server):
    base = os.nice(0)  # the server inherits the tests' own nice value (`nice -n 10 pytest` gives 10)
    if base >= 19:
        pytest.skip("the tests run at nice 19: there is no lower priority to give the inference threads")
    inference_nice = min(base + 7, 19)
    lowered = start_server("--inference-nice", str(inference_nice), wait_ready=False)  # asked at once, while it loads
    ready = httpx.get(lowered.url + "/health/ready")
    embed = post(lowered, "/v1/embed", {"inputs": "x"})
    if ready.status_code == 503:  # the model was still loading when we asked
        assert ready.json()["status"] == "loading"
        assert embed.status_code in (503, 200)
    lowered.wait_ready()
    assert post(lowered, "/v1/embed", {"inputs": ["runs a batch"]}).status_code == 200
    nice = inference_nice_values(lowered.process.pid)
    assert nice[lowered.process.pid] == base  # the main thread runs the event loop
    # the batcher threads and onnxruntime's pool threads, at least one of each
    assert list(nice.values()).count(inference_nice) >= 2, nice
