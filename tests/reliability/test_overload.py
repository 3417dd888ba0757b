"""Promises 1 and 2: nothing accepted is lost or wrong, and overload degrades gracefully.

Open-loop load (requests at a fixed rate, whatever the answers do) at 3x the capacity measured
just before, the same way, in the same run; every answer is checked against in-process
onnxruntime. The server runs at its default settings: its queue takes no more work than it
drains in a few seconds (--max-queue-wait-s), so what is accepted finishes in seconds and the
rest is refused at once, at the protocol edge (docs/reliability.md). The load generator
shares the machine's cores with the server; each row reports both processes' CPU. The 60 s
bursts send through minimal clients (RawHttp, RawGrpc), so that the client's CPU stays small.
The 4-second burst runs in `make test`; the 60-second bursts over REST and over gRPC and a
SIGTERM during a third burst, and the 10-minute soak, are `slow` (`make test-reliability`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from service.config import Settings
from tests.reliability.drain import GRACE_S, check_drain, health_until_stopped
from tests.reliability.load import (
    RssSampler,
    Senders,
    Summary,
    closed_loop,
    cpu_seconds,
    measure_capacity,
    open_loop,
    rss_mb,
    summarise,
)
from tests.support.http import scrape
from tests.support.prometheus import metric_value
from tests.support.server import ServerProcess, launch

# measures time or capacity against a bound: make test runs it after the rest, alone
pytestmark = pytest.mark.exclusive

DEADLINE_S = Settings().request_timeout_s


def overloaded_server(*flags: str) -> ServerProcess:
    return launch("--shutdown-grace-s", str(GRACE_S), *flags)


def wait_for_empty_queue(server: ServerProcess, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape(server)
        if (
            metric_value(metrics, "mhaserve_queue_depth") == 0
            and metric_value(metrics, "mhaserve_inflight_requests") == 0
        ):
            return metrics
        assert time.monotonic() < deadline, "the queue did not empty after the burst"
        time.sleep(0.2)


def check_promise_1(summary: Summary, refusals: tuple[str, ...] = ("429",)) -> None:
    assert summary.lost == 0, summary.examples
    assert summary.wrong == 0, summary.examples
    assert summary.server_errors == 0, summary.examples
    assert summary.other == {}, (summary.other, summary.examples)
    assert set(summary.refused) <= set(refusals), summary.refused  # ready and not draining: no 503


def test_a_short_3x_burst_is_answered_correctly_or_refused_at_once(reference):
    server = overloaded_server()
    try:

        async def scenario():
            senders = Senders(server, patience_s=DEADLINE_S + 20, grpc_timeout_s=DEADLINE_S)
            try:
                capacity = await measure_capacity(senders, 3, clients=64)
                return capacity, await open_loop(senders, 3 * capacity, 4)
            finally:
                await senders.close()

        capacity, outcomes = asyncio.run(scenario())
        wait_for_empty_queue(server)
        max_rss = rss_mb(server.process.pid)
    finally:
        server.stop()
    summary = summarise("3x capacity, 4 s burst", outcomes, reference)
    check_promise_1(summary, refusals=("429", "504"))
    assert summary.refused.get("504", 0) <= 0.01 * summary.correct, summary.refused
    assert summary.refused.get("429", 0) > 0 and summary.correct > 0
    assert all("retry-after=" in o.detail for o in outcomes if o.status == "429" and o.transport != "grpc")
    # refused without waiting behind the queue; the strict 50 ms p99 is the 60 s run's to prove
    assert summary.refusal_p50_ms < 50 and summary.refusal_p99_ms < 1000, (
        summary.refusal_p50_ms,
        summary.refusal_p99_ms,
    )
    summary.max_rss_mb, summary.notes = max_rss, f"capacity {capacity:.0f} req/s"
    summary.record()


# The share of the measured capacity a 60 s 3x burst must still answer. gRPC's floor is lower because
# refusing costs it more: grpc-python's server spends 430-510 us of CPU per refused call, REST 81 us
# (`python -m bench.refusals`), and on 2 cores that CPU comes out of inference; at 3x more than two
# requests are refused for each one answered (docs/reliability.md, promise 2 and Measured).
GOODPUT_FLOOR = {"rest": 0.9, "grpc": 0.8}


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_60_second_3x_burst_keeps_goodput_fast_refusals_and_bounded_memory(reference, transport):
    server = overloaded_server()
    pid = server.process.pid
    try:

        async def burst():
            senders = Senders(server, patience_s=DEADLINE_S + 20, grpc_timeout_s=DEADLINE_S, raw_grpc=True)
            try:
                await closed_loop(senders, 32, 3, transports=(transport,))  # warm: allocator, caches, connections
                capacity = await measure_capacity(senders, 10, transports=(transport,))
                await asyncio.sleep(2)
                rss_before = rss_mb(pid)
                cpu_before = cpu_seconds(pid), cpu_seconds(os.getpid())
                with RssSampler(pid, 1.0) as rss:
                    outcomes = await open_loop(senders, 3 * capacity, 60, distinct=2000, transports=(transport,))
                cpu = cpu_seconds(pid) - cpu_before[0], cpu_seconds(os.getpid()) - cpu_before[1]
                return capacity, rss_before, rss, outcomes, cpu
            finally:
                await senders.close()

        capacity, rss_before, rss, outcomes, (server_cpu, client_cpu) = asyncio.run(burst())
        wait_for_empty_queue(server)
        time.sleep(3)
        rss_after = rss_mb(pid)
    finally:
        server.stop()

    summary = summarise(f"3x capacity, 60 s burst, {transport}, default settings", outcomes, reference)
    summary.max_rss_mb = rss.peak_mb
    summary.notes = (
        f"measured capacity {capacity:.0f} req/s, answered {summary.correct / 60:.0f} req/s; accepted p99 "
        f"{summary.answered_p99_s:.1f} s (deadline {DEADLINE_S:.0f} s); CPU over the burst: server "
        f"{server_cpu / 60:.2f} cores, load generator {client_cpu / 60:.2f} cores; RSS {rss_before:.0f} MB before, "
        f"{rss_after:.0f} MB after"
    )
    summary.record()
    check_promise_1(summary, refusals=("429", "504"))
    assert summary.refused.get("504", 0) <= 0.01 * summary.correct, summary.refused  # p99 within the deadline
    floor = GOODPUT_FLOOR[transport]
    assert summary.correct / 60 >= floor * capacity, (
        f"{transport} answered below its floor of {floor:.2f} x capacity (gRPC's is lower: its server spends "
        f"430-510 us of CPU per refused call against REST's 81 us, python -m bench.refusals): {summary.notes}"
    )
    assert summary.answered_p99_s < DEADLINE_S
    assert rss.peak_mb < 1.5 * rss_before, (rss_before, rss.peak_mb)  # bounded
    assert abs(rss_after - rss_before) <= 0.10 * rss_before, (rss_before, rss_after)
    assert summary.refusal_p99_ms < 50, summary.refusal_p99_ms


@pytest.mark.slow
def test_sigterm_in_the_middle_of_a_3x_burst_drains_and_exits_0(reference):
    """A rolling deploy's SIGTERM during overload, over every transport at once."""
    server = overloaded_server()
    try:

        async def sigterm_mid_burst():
            senders = Senders(server, patience_s=GRACE_S + 30, grpc_timeout_s=GRACE_S + 20)
            try:
                capacity = await measure_capacity(senders, 5)
                load = asyncio.create_task(open_loop(senders, 3 * capacity, 12, first_index=10**6, distinct=2000))
                await asyncio.sleep(5)
                server.signal(signal.SIGTERM)
                sigterm = time.monotonic()
                health = asyncio.create_task(health_until_stopped(server, sigterm))
                outcomes = await load
                exit_code = await asyncio.get_running_loop().run_in_executor(None, server.wait, GRACE_S + 10)
                seen, exit_s = await health
                return sigterm, outcomes, seen, exit_code, exit_s
            finally:
                await senders.close()

        sigterm, drained, health, exit_code, exit_s = asyncio.run(sigterm_mid_burst())
    finally:
        server.stop()
    drain = summarise("SIGTERM 5 s into a 3x burst", drained, reference)
    drain.notes = f"exit {exit_code} after {exit_s:.1f} s (grace {GRACE_S:.0f} s)"
    drain.record()
    check_drain(drained, sigterm, health, exit_code, exit_s)
    assert drain.lost == 0 and drain.wrong == 0 and drain.server_errors == 0, drain.examples


@pytest.mark.slow
def test_a_10_minute_soak_keeps_every_answer_right_and_memory_flat(reference):
    server = launch()
    pid = server.process.pid
    try:

        async def soak():
            senders = Senders(server, patience_s=DEADLINE_S + 20, grpc_timeout_s=DEADLINE_S)
            try:
                capacity = await measure_capacity(senders, 5)
                with RssSampler(pid, 10.0) as rss:
                    outcomes = await open_loop(senders, 0.5 * capacity, 600, distinct=3000)
                return capacity, rss, outcomes
            finally:
                await senders.close()

        capacity, rss, outcomes = asyncio.run(soak())
    finally:
        server.stop()
    summary = summarise("soak: 10 min at half capacity", outcomes, reference)
    samples = [mb for seconds, mb in rss.samples]
    warmed = max(samples[6:12])  # minute 1 to 2: after warm-up
    last = max(samples[-6:])  # the last minute
    summary.max_rss_mb = rss.peak_mb
    summary.notes = (
        f"{len(samples)} RSS samples, every 10 s: {warmed:.0f} MB after warm-up, {last:.0f} MB in the last minute "
        f"({100 * (last - warmed) / warmed:+.1f} %); capacity {capacity:.0f} req/s"
    )
    summary.record()
    assert summary.lost == 0 and summary.wrong == 0 and summary.server_errors == 0, summary.examples
    assert set(summary.refused) <= {"429"} and summary.refused.get("429", 0) < 0.01 * summary.sent
    assert last < 1.05 * warmed, summary.notes
