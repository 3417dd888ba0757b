"""Server CPU seconds for a fixed workload: a measure of overhead that other load can't skew.

    python -m bench.server_cpu [mhaserve serve flags...]

Wall-clock throughput on a shared machine moves with whatever else runs; the CPU time the
server process spends on the same requests does not. Used to choose the batcher's padding
bound (MAX_PADDING_SHARE) and to compare batching on and off.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.__main__ import batches_of
from bench.corpus import corpus
from bench.loadgen import closed_loop, rest_call
from bench.server import launch


def batch_totals(metrics_text: str) -> tuple[float, float]:
    """(batches run, padded tokens computed) so far, from the server's histograms."""
    values = {s.name: s.value for f in text_string_to_metric_families(metrics_text) for s in f.samples}
    return values["mhaserve_batch_size_count"], values["mhaserve_batch_tokens_sum"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> int:
    texts = corpus(500, 60)
    server = launch(*sys.argv[1:])
    try:
        make = rest_call("127.0.0.1", server.http_port)
        asyncio.run(closed_loop(make, batches_of(texts[:100], 1), 64))  # warm up
        for size, concurrency in ((1, 64), (32, 8)):
            before = batch_totals(httpx.get(server.url + "/metrics").text)
            cpu, started = cpu_seconds(server.process.pid), time.perf_counter()
            outcome = asyncio.run(closed_loop(make, batches_of(texts, size), concurrency))
            after = batch_totals(httpx.get(server.url + "/metrics").text)
            batches, padded = after[0] - before[0], after[1] - before[1]
            print(
                f"{size} text(s) per request, concurrency {concurrency}: server CPU "
                f"{cpu_seconds(server.process.pid) - cpu:.1f} s, wall {time.perf_counter() - started:.1f} s, "
                f"{batches:.0f} batches, {padded:.0f} padded tokens, {outcome.errors} errors"
            )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
