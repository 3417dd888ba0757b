"""Memory freed after a burst goes back to the OS, not only to malloc's free lists.

A flood leaves the heap at its peak: thousands of connections, requests and batches were
alive at once, and glibc keeps the pages they freed. `malloc_trim(0)` hands them back. It
runs once a burst is over (a quiet second after answered requests), on a worker thread, so
a steady load never pays for it. Elsewhere than glibc there is nothing to call.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

from service.metrics import Metrics

log = logging.getLogger(__name__)

QUIET_S = 1.0


def glibc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): no malloc_trim
        return None


async def return_memory_after_bursts(metrics: Metrics, trim: Callable[[int], int] | None = None) -> None:
    trim = trim or glibc_malloc_trim()
    if trim is None:
        return
    loop = asyncio.get_running_loop()
    trimmed_at = previous = metrics.answered
    while True:
        await asyncio.sleep(QUIET_S)
        answered = metrics.answered
        if answered == previous and answered != trimmed_at:  # a quiet second after work
            await loop.run_in_executor(None, trim, 0)
            log.debug("returned freed heap pages to the OS after %d answers", answered - trimmed_at)
            trimmed_at = answered
        previous = answered
