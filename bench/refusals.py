"""The server's CPU per refused request, REST and gRPC: `python -m bench.refusals`.

A server whose queue is full and stays full: one request waits for company for ten minutes
(`--batch-wait always`), and the queue holds exactly its tokens, so every later request is
refused and no inference runs. The server process's CPU time (every thread, user + system,
from /proc) over N refusals, divided by N, is what one refusal costs it; the load generator's
own CPU is reported beside it, since both share the machine's cores. gRPC is measured twice:
with grpcio's client, and with RawGrpc (the flood's load generator), which sends each call as
one write and no flow-control pings, so the server's cost per refusal differs between them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx

from bench.loadgen import RawHttp
from bench.rawgrpc import RawGrpc
from bench.server import ServerProcess, launch
from protos.mhaserve.v1 import encoder_pb2, encoder_pb2_grpc

BLOCKER = "a request that waits in the queue for company while everything after it is refused"
REFUSED = "the man is playing a guitar"
CONCURRENCY = 16


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def refusals(call: Callable[[], Awaitable[int | str]], n: int) -> list[int | str]:
    """n calls from CONCURRENCY callers, one after another each; what each call answered."""
    outcomes: list[int | str] = []

    async def caller(count: int) -> None:
        for _ in range(count):
            outcomes.append(await call())

    await asyncio.gather(*(caller(n // CONCURRENCY) for _ in range(CONCURRENCY)))
    return outcomes


async def refuse_rest(server: ServerProcess, n: int) -> list[int | str]:
    client = RawHttp("127.0.0.1", server.http_port)

    async def call() -> int:
        status, _, _ = await client.post("/v1/embed", {"inputs": [REFUSED]})
        return status

    try:
        return await refusals(call, n)
    finally:
        await client.close()


async def refuse_grpc(server: ServerProcess, n: int) -> list[int | str]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        request = encoder_pb2.EmbedRequest(inputs=[REFUSED])

        async def call() -> str:
            try:
                await stub.Embed(request, timeout=30)
                return "OK"
            except grpc.aio.AioRpcError as error:
                return error.code().name

        return await refusals(call, n)


async def refuse_raw_grpc(server: ServerProcess, n: int) -> list[int | str]:
    client = RawGrpc("127.0.0.1", server.grpc_port, timeout_s=30, patience_s=60)
    message = encoder_pb2.EmbedRequest(inputs=[REFUSED]).SerializeToString()

    async def call() -> str:
        return (await client.unary("/mhaserve.v1.Encoder/Embed", message)).status.name

    try:
        return await refusals(call, n)
    finally:
        await client.close()


CLIENTS = {"REST": refuse_rest, "gRPC": refuse_grpc, "gRPC raw": refuse_raw_grpc}


def measure(server: ServerProcess, transport: str, n: int) -> dict:
    run = CLIENTS[transport]
    asyncio.run(run(server, 200))  # warm: connections, code paths
    server_before, client_before, started = cpu_seconds(server.process.pid), own_cpu_seconds(), time.monotonic()
    outcomes = asyncio.run(run(server, n))
    wall = time.monotonic() - started
    server_cpu = cpu_seconds(server.process.pid) - server_before
    client_cpu = own_cpu_seconds() - client_before
    refused = sum(1 for o in outcomes if o in (429, "RESOURCE_EXHAUSTED"))
    return {
        "transport": transport,
        "requests": len(outcomes),
        "refused": refused,
        "server_cpu_us_per_refusal": 1e6 * server_cpu / len(outcomes),
        "client_cpu_us_per_refusal": 1e6 * client_cpu / len(outcomes),
        "refusals_per_s": len(outcomes) / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8000, help="refusals per transport")
    parser.add_argument("--out", type=Path, default=Path("bench-results/refusals.json"))
    args = parser.parse_args()
    blocker_tokens = len(BLOCKER.split()) + 2  # all plain words: one word piece each
    server = launch(
        "--batch-wait", "always", "--max-wait-ms", "600000", "--request-timeout-s", "900",
        "--max-queue-tokens", str(blocker_tokens),
    )  # fmt: skip
    try:
        blocker = httpx.AsyncClient(base_url=server.url, timeout=900)

        async def hold_and_measure() -> list[dict]:
            waiting = asyncio.create_task(blocker.post("/v1/embed", json={"inputs": [BLOCKER]}))
            await asyncio.sleep(1.0)
            loop = asyncio.get_running_loop()
            rows = [await loop.run_in_executor(None, measure, server, t, args.requests) for t in CLIENTS]
            waiting.cancel()
            return rows

        rows = asyncio.run(hold_and_measure())
    finally:
        server.stop()
    for row in rows:
        assert row["refused"] == row["requests"], row  # every request was refused: nothing else was measured
        print(
            f"{row['transport']:8}  server CPU {row['server_cpu_us_per_refusal']:6.1f} µs/refusal   "
            f"load generator {row['client_cpu_us_per_refusal']:6.1f} µs/refusal   "
            f"{row['refusals_per_s']:7.0f} refusals/s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
