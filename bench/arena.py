"""onnxruntime's CPU memory arena on and off, same batches, interleaved: `python -m bench.arena`.

The server runs its sessions without the arena (service/backends/onnx.py): this measures what
that costs in-process, on the fast graph, with the server's own session options otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.server import ARTIFACT
from service.backends.onnx import session_options, usable_cores

SHAPES = [(64, 16), (64, 24), (32, 40), (16, 64), (8, 128), (64, 20)]  # (sequences, tokens)


def session(graph: Path, arena: bool) -> ort.InferenceSession:
    options = session_options(usable_cores())
    options.enable_cpu_mem_arena = arena
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--graph", type=Path, default=ARTIFACT / "fast.onnx")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    feeds = [
        {"input_ids": rng.integers(1000, 2000, shape).astype(np.int64), "attention_mask": np.ones(shape, np.int64)}
        for shape in SHAPES
    ]
    sessions = {"arena": session(args.graph, True), "no arena": session(args.graph, False)}
    for s in sessions.values():  # warm: the arena grows to these shapes once
        for feed in feeds:
            s.run(None, feed)
    seconds: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            started = time.perf_counter()
            for feed in feeds:
                s.run(None, feed)
            seconds[name].append(time.perf_counter() - started)
    for name, times in seconds.items():
        print(f"{name:9} median {1000 * statistics.median(times):7.1f} ms per round of {len(SHAPES)} batches")
    ratio = statistics.median(seconds["no arena"]) / statistics.median(seconds["arena"])
    print(f"no arena / arena: {ratio:.3f}")


if __name__ == "__main__":
    main()
