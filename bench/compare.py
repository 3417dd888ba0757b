"""Two server configurations side by side, interleaved: which is faster, measured in one run.

    python -m bench.compare --a "--inference-workers 1" --b "" [--rounds 4]
    python -m bench.compare --a-checkout ../old [--rounds 4]     # another commit's worktree


Both servers run at once (one idle while the other is measured) and the rounds alternate
between them, so drift on a shared machine hits both alike. Per configuration: REST and gRPC
sentences/s with single sentences at concurrency 64 and client batches of 32 at concurrency 8
(560 texts of the bench corpus each), and the idle p50 of one short sentence; every round's
figure and the median are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import time
from pathlib import Path

from bench.__main__ import batches_of, grpc_call
from bench.corpus import corpus, short_sentence
from bench.loadgen import closed_loop, rest_call
from bench.server import REPO, launch

LOADS = (("single sentences, concurrency 64", 1, 64), ("client batches of 32, concurrency 8", 32, 8))


def describe(label: str, flags: str, checkout: Path) -> str:
    where = "" if checkout.resolve() == REPO.resolve() else f" @ {checkout.name}"
    return f"{label} [{flags or 'defaults'}{where}]"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("--a", default="", help="mhaserve serve flags of configuration A, as one string")
    parser.add_argument("--b", default="", help="mhaserve serve flags of configuration B, as one string")
    parser.add_argument("--a-checkout", type=Path, default=REPO, help="source tree of A (e.g. a git worktree)")
    parser.add_argument("--b-checkout", type=Path, default=REPO, help="source tree of B")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    texts = corpus(500, 60)
    configs = {
        describe("A", args.a, args.a_checkout): (args.a, args.a_checkout),
        describe("B", args.b, args.b_checkout): (args.b, args.b_checkout),
    }
    servers = {name: launch(*shlex.split(flags), checkout=tree) for name, (flags, tree) in configs.items()}
    figures: dict[tuple[str, str], list[float]] = {}
    try:
        for round_ in range(args.rounds):
            for name, server in servers.items():
                transports = {
                    "REST": rest_call("127.0.0.1", server.http_port),
                    "gRPC": grpc_call(server.grpc_target),
                }
                for load, size, concurrency in LOADS:
                    for transport, make in transports.items():
                        if round_ == 0:  # connections, caches, onnxruntime's allocations
                            asyncio.run(closed_loop(make, batches_of(texts[:100], size), concurrency))
                        outcome = asyncio.run(closed_loop(make, batches_of(texts, size), concurrency))
                        if outcome.errors:
                            raise RuntimeError(f"{name}: {outcome.errors} errors")
                        key = (f"{transport}, {load} (sentences/s)", name)
                        figures.setdefault(key, []).append(len(texts) / outcome.seconds)
                idle = asyncio.run(closed_loop(transports["REST"], [[short_sentence()]] * 200, 1))
                figures.setdefault(("REST, one short sentence at idle (p50 ms)", name), []).append(
                    idle.percentile(50) * 1000
                )
    finally:
        for server in servers.values():
            server.stop()
    print(f"\n{time.strftime('%Y-%m-%d')}, {args.rounds} interleaved rounds\n")
    for (row, name), values in sorted(figures.items()):
        runs = " ".join(f"{v:6.1f}" for v in values)
        print(f"{row:58} {name:32} {runs} | median {statistics.median(values):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
