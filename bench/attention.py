"""python -m bench.attention: bytes and latency of attention answers, all heads against the head
mean per layer against the rollout [CLS] row, for a 128- and a 256-token text, on REST and gRPC.

One server, one client, one request at a time: latency is the client's wall time per call
(median and p90 of --repeat calls after a warm-up), bytes are the answer's body (REST, base64
float32) or its serialised message (gRPC). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import grpc
import httpx

from bench.server import launch
from protos.mhaserve.v1 import encoder_pb2 as pb
from protos.mhaserve.v1 import encoder_pb2_grpc

WORDS = ["the", "model", "reads", "every", "word", "and", "looks", "at", "what", "each", "one", "takes", "from"]
ANSWERS = {  # name -> (REST return_attention, gRPC AttentionSelection)
    "all heads": ({}, pb.AttentionSelection()),
    "head mean per layer": ({"reduce_heads": "mean"}, pb.AttentionSelection(reduce_heads=pb.HEAD_REDUCTION_MEAN)),
    "rollout [CLS] row": ({"rollout": True, "rows": [0]}, pb.AttentionSelection(rollout=True, rows=[0])),
}


def text_of(tokens: int) -> str:
    """A text of exactly `tokens` tokens, [CLS] and [SEP] included (each word is one word piece)."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(tokens - 2))


def timed(call, repeat: int) -> tuple[int, list[float]]:
    size = call()  # warm-up, and the answer's size
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return size, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per row")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256], help="texts' tokens")
    args = parser.parse_args()

    server = launch("--max-attention-values", "6000000")  # every head of 256 tokens: 4.7 M values
    http = httpx.Client(base_url=server.url, timeout=120)
    channel = grpc.insecure_channel(server.grpc_target, options=[("grpc.max_receive_message_length", 64 << 20)])
    stub = encoder_pb2_grpc.EncoderStub(channel)
    try:
        print("| tokens | answer | shape | REST bytes | REST ms (p50 / p90) | gRPC bytes | gRPC ms (p50 / p90) |")
        print("|---:|---|---|---:|---:|---:|---:|")
        for tokens in args.lengths:
            text = text_of(tokens)
            for name, (rest_options, grpc_options) in ANSWERS.items():
                body = {"inputs": [text], "return_attention": rest_options, "encoding": "base64"}
                shape: list[int] = []
                message = pb.EmbedRequest(inputs=[text], attention=grpc_options)
                rest_bytes, rest_s = timed(functools.partial(rest_call, http, body, shape), args.repeat)
                grpc_bytes, grpc_s = timed(functools.partial(grpc_call, stub, message), args.repeat)
                assert shape[-1] == tokens, f"the text has {shape[-1]} tokens, not {tokens}"
                print(
                    f"| {tokens} | {name} | {shape} | {rest_bytes:,} | {ms(rest_s)} | {grpc_bytes:,} | {ms(grpc_s)} |"
                )
    finally:
        channel.close()
        http.close()
        server.stop()


def rest_call(http: httpx.Client, body: dict, shape: list[int]) -> int:
    """One REST call; its body's bytes (and the answer's shape, into `shape`)."""
    response = http.post("/v1/embed", json=body)
    response.raise_for_status()
    shape[:] = response.json()["attention"][0]["shape"]
    return len(response.content)


def grpc_call(stub: encoder_pb2_grpc.EncoderStub, message: pb.EmbedRequest) -> int:
    """One gRPC call; its answer's serialised bytes."""
    return stub.Embed(message, timeout=120).ByteSize()


def ms(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{statistics.median(ordered) * 1000:.1f} / {p90 * 1000:.1f}"


if __name__ == "__main__":
    main()
