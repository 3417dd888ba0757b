"""One short sentence at a time, over REST and gRPC, against in-process onnxruntime on the same
sentence: what the server adds at idle (`python -m bench.idle`).

For profiling, attach a sampler to the server while it runs, e.g.
`py-spy record -p PID -f raw -o idle.txt` with PID from the line this prints first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from tokenizers import Tokenizer

from artifact.manifest import FAST, Artifact
from bench.__main__ import grpc_call, single_latency_ms
from bench.corpus import short_sentence
from bench.loadgen import RawHttp, closed_loop, rest_call
from bench.server import ARTIFACT, launch


def p50_ms(make_call, count: int) -> float:
    """Median latency of `count` sequential one-sentence requests, after 50 to warm up."""

    async def measure() -> float:
        await closed_loop(make_call, [[short_sentence()]] * 50, 1)
        outcome = await closed_loop(make_call, [[short_sentence()]] * count, 1)
        assert outcome.errors == 0, f"{outcome.errors} requests failed"
        return outcome.percentile(50) * 1000

    return asyncio.run(measure())


TIMING_HEADERS = ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")


def rest_timings(port: int, count: int) -> dict[str, float]:
    """Medians of the REST answers' own timing headers (ms) over `count` sequential one-sentence
    requests: where the server's part of the latency goes."""

    async def measure() -> dict[str, float]:
        connection = RawHttp("127.0.0.1", port)
        seen: dict[str, list[float]] = {name: [] for name in TIMING_HEADERS}
        for _ in range(count):
            status, headers, body = await connection.post("/v1/embed", {"inputs": [short_sentence()]})
            assert status == 200, body[:200]
            for name in TIMING_HEADERS:
                seen[name].append(float(headers[name]))
        await connection.close()
        return {name: statistics.median(values) for name, values in seen.items()}

    return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per transport")
    parser.add_argument("flags", nargs="*", help="server flags, after --")
    args = parser.parse_args()
    server = launch(*args.flags)
    try:
        print(f"server pid {server.process.pid}", flush=True)
        transports = {"REST": rest_call("127.0.0.1", server.http_port), "gRPC": grpc_call(server.grpc_target)}
        p50 = {name: p50_ms(make_call, args.requests) for name, make_call in transports.items()}
        timings = rest_timings(server.http_port, args.requests)
    finally:
        server.stop()
    artifact = Artifact.load(ARTIFACT)
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    tokenizer.enable_truncation(max_length=artifact.manifest.max_len)
    in_process = single_latency_ms(artifact.graph_path(FAST), tokenizer, short_sentence())
    sleeping = single_latency_ms(artifact.graph_path(FAST), tokenizer, short_sentence(), spinning=False)
    print(f"in-process {in_process:.2f} ms (p50 of 200; with intra-op threads that sleep: {sleeping:.2f} ms)")
    for name, ms in p50.items():
        print(f"{name} p50 {ms:.2f} ms: in-process + {ms - in_process:.2f} ms")
    total, tokenize, queue, inference = (timings[name] for name in TIMING_HEADERS)
    print(
        f"REST answers' own timing (medians): total {total:.2f} ms = tokenization {tokenize:.2f} + queue {queue:.2f}"
        f" + inference {inference:.2f} + the rest {total - tokenize - queue - inference:.2f}; the rest of the"
        " p50 is HTTP, the socket and the client"
    )


if __name__ == "__main__":
    main()
