"""One short sentence at a time, over REST and gRPC, against in-process onnxruntime on the same
sentence: what the server adds at idle (`python -m bench.idle`).

For profiling, attach a sampler to the server while it runs, e.g.
`py-spy record -p PID -f raw -o idle.txt` with PID from the line this prints first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc
from tokenizers import Tokenizer

from artifact.manifest import FAST, Artifact
from bench.__main__ import single_latency_ms
from bench.corpus import short_sentence
from bench.loadgen import RawHttp
from bench.server import ARTIFACT, launch
from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc


async def rest_latencies(port: int, count: int) -> list[float]:
    client = RawHttp("127.0.0.1", port)
    latencies = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            status, _, body = await client.post("/v1/embed", {"inputs": [short_sentence()]})
            latencies.append(time.perf_counter() - started)
            assert status == 200, body[:200]
    finally:
        await client.close()
    return latencies


def grpc_latencies(target: str, count: int) -> list[float]:
    latencies = []
    with grpc.insecure_channel(target) as channel:
        encoder = encoder_pb2_grpc.EncoderStub(channel)
        for _ in range(count):
            started = time.perf_counter()
            encoder.Embed(pb.EmbedRequest(inputs=[short_sentence()]), timeout=10)
            latencies.append(time.perf_counter() - started)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per transport")
    parser.add_argument("flags", nargs="*", help="server flags, after --")
    args = parser.parse_args()
    server = launch(*args.flags)
    try:
        print(f"server pid {server.process.pid}", flush=True)
        asyncio.run(rest_latencies(server.http_port, 50))  # warm: connections, allocator, caches
        rest = statistics.median(asyncio.run(rest_latencies(server.http_port, args.requests))) * 1000
        grpc_latencies(server.grpc_target, 50)
        grpc_ms = statistics.median(grpc_latencies(server.grpc_target, args.requests)) * 1000
    finally:
        server.stop()
    artifact = Artifact.load(ARTIFACT)
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    tokenizer.enable_truncation(max_length=artifact.manifest.max_len)
    in_process = single_latency_ms(artifact.graph_path(FAST), tokenizer, short_sentence())
    print(f"in-process {in_process:.2f} ms (p50 of 200)")
    print(f"REST p50 {rest:.2f} ms: in-process + {rest - in_process:.2f} ms")
    print(f"gRPC p50 {grpc_ms:.2f} ms: in-process + {grpc_ms - in_process:.2f} ms")


if __name__ == "__main__":
    main()
