"""Measure one replica's capacity for the capacity plan: closed-loop load on POST /v1/embed.

    python deploy/capacity.py --url http://127.0.0.1:8000 --concurrency 32 --duration 30

Run it against a single replica (`make run`, or `kubectl port-forward pod/NAME 8000`), from a
machine that is not the replica's. CONCURRENCY clients each send a request, wait for its
answer and send the next; the first --warmup seconds are not counted. It prints requests/s,
tokens/s (the server's own `usage.tokens`), latency percentiles and refusals. Capacity is
the highest throughput whose p99 latency you can still accept: raise --concurrency until
requests/s stops growing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import httpx

# Lengths from a few word pieces to about sixty, like short queries and passages.
SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need.",
    "Stocks fell sharply on Tuesday as investors weighed the latest inflation figures.",
    "How do I reset my password?",
    "A woman is slicing an onion on a wooden cutting board in a small kitchen.",
    "The committee will publish its final report, with recommendations for each of the regional "
    "offices and a timetable for carrying them out, early next spring.",
    "short",
]


async def client(http: httpx.AsyncClient, args, texts: list[str], start: float, results: list) -> None:
    i = 0
    while (now := time.monotonic()) < start + args.warmup + args.duration:
        inputs = [texts[(i + k) % len(texts)] for k in range(args.inputs)]
        i += args.inputs
        response = await http.post("/v1/embed", json={"inputs": inputs})
        done = time.monotonic()
        if now >= start + args.warmup:  # counted only once warm
            tokens = response.json()["usage"]["tokens"] if response.status_code == 200 else 0
            results.append((done - now, response.status_code, tokens))


async def measure(args) -> dict:
    texts = Path(args.sentences).read_text().splitlines() if args.sentences else SENTENCES
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency)
    results: list[tuple[float, int, int]] = []
    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits, timeout=60) as http:
        start = time.monotonic()
        await asyncio.gather(*(client(http, args, texts, start, results) for _ in range(args.concurrency)))
    answered = sorted(latency for latency, status, _ in results if status == 200)
    if not answered:
        raise SystemExit(f"no request answered 200: status codes {sorted({s for _, s, _ in results})}")
    return {
        "concurrency": args.concurrency,
        "inputs_per_request": args.inputs,
        "seconds": args.duration,
        "requests_per_s": round(len(answered) / args.duration, 1),
        "tokens_per_s": round(sum(tokens for *_, tokens in results) / args.duration),
        "p50_ms": round(1000 * answered[len(answered) // 2], 1),
        "p99_ms": round(1000 * answered[min(len(answered) - 1, int(len(answered) * 0.99))], 1),
        "refused_or_failed": sum(1 for _, status, _ in results if status != 200),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="one replica's REST address")
    parser.add_argument("--concurrency", type=int, default=32, help="clients, each with one request in flight")
    parser.add_argument("--inputs", type=int, default=1, help="sentences per request")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--sentences", help="a file with one sentence per line (default: a built-in mix)")
    parser.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    print(json.dumps(asyncio.run(measure(parser.parse_args()))))


if __name__ == "__main__":
    main()
