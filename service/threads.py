"""Thread priority for inference: shared by the batcher's workers and the runtime's loader."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_thread_priority(nice: int) -> None:
    """Gives the calling thread (and the threads it creates later) a lower CPU priority.

    On Linux a nice value belongs to one thread and new threads inherit it, so onnxruntime's
    pool threads, created from a lowered thread, yield the cores to the event loop whenever
    it has work: parsing, refusing and answering never wait behind a batch. A no-op elsewhere,
    where setpriority would lower the whole process.
    """
    if nice <= 0 or sys.platform != "linux":
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
    except OSError as exc:
        log.warning("could not lower the inference threads' priority: %s", exc)
