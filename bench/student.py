"""A distilled student against its teacher, both served from one process: `python -m bench.student`.

For teacher and student, fp32 and (when the artifact has it) int8: sts-test Spearman x100 of the
vectors the server returns over REST; their cosine to the same model's served fp32 vectors;
sentences/s in-process (onnxruntime, ideal sorted batches, best of interleaved runs) and served
(REST, client batches of 32, concurrency 8). Then the targets `make distill` is held to: the
student keeps >= 99 % of its teacher's sts-test Spearman at >= 2x its in-process fp32 throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from artifact.manifest import FAST, FAST_INT8, Artifact
from bench.__main__ import LimitConfig, batches_of, in_process
from bench.corpus import corpus
from bench.loadgen import closed_loop, rest_call
from bench.models import embed_all
from bench.server import REPO, launch
from model.data import read_sts, sts_dir
from model.evaluate import spearman
from service.backends.onnx import usable_cores
from service.client import RestClient

KEEP_SCORE, SPEEDUP = 0.99, 2.0  # the student's targets against its teacher
ROUNDS = 3


@dataclass
class ModelRow:
    model: str
    precision: str
    layers: int
    sts_test: float
    cosine_to_fp32: float  # mean over sts-test sentences, served vectors
    in_process_sentences_per_s: float
    served_sentences_per_s: float


def served_figures(server, model: str, pairs, texts: list[str]) -> tuple[np.ndarray, float, float]:
    """The served vectors of every sts-test sentence, their Spearman x100, and REST throughput."""
    sentences = sorted({s for p in pairs for s in (p.sentence1, p.sentence2)})
    with RestClient(server.url, timeout_s=600) as client:
        vectors = embed_all(client, model, sentences)
    index = {s: i for i, s in enumerate(sentences)}
    cosines = [float(vectors[index[p.sentence1]] @ vectors[index[p.sentence2]]) for p in pairs]
    score = 100 * spearman(np.array(cosines), np.array([p.score for p in pairs]))
    make = rest_call("127.0.0.1", server.http_port, model)
    asyncio.run(closed_loop(make, batches_of(texts, 32), 8))  # every batch shape once
    outcomes = [asyncio.run(closed_loop(make, batches_of(texts, 32), 8)) for _ in range(2)]
    failed = sum(o.errors for o in outcomes)
    assert not failed, f"{model}: {failed} requests failed; a rate with failures means nothing"
    return vectors, score, max(len(texts) / o.seconds for o in outcomes)


def in_process_rates(artifacts: dict[str, Artifact], roles: list[str], texts: list[str]) -> dict:
    """(model, role) -> best sentences/s over ROUNDS interleaved runs on the same batches."""
    config = LimitConfig(1, usable_cores(), 2048)
    best: dict[tuple[str, str], float] = {}
    for _ in range(ROUNDS):
        for name, artifact in artifacts.items():
            tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
            tokenizer.enable_truncation(max_length=artifact.manifest.max_len)
            for role in roles:
                if role in artifact.manifest.graphs:
                    seconds, _ = in_process(artifact.graph_path(role), tokenizer, texts, config)
                    best[name, role] = max(best.get((name, role), 0.0), len(texts) / seconds)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.student", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="all-minilm-l6-v2", help="the teacher's artifact under artifacts/")
    parser.add_argument("--student", help="the student's artifact (default: TEACHER-student)")
    parser.add_argument("--sentences", type=int, default=600, help="throughput corpus size")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "student.json")
    args = parser.parse_args()
    names = [args.teacher, args.student or f"{args.teacher}-student"]
    artifacts = {name: Artifact.load(REPO / "artifacts" / name) for name in names}
    pairs = read_sts(sts_dir() / "sts-test.csv")
    texts = corpus(args.sentences, args.sentences // 8)
    started = time.time()

    precisions = ["fp32"] + (["int8"] if all(FAST_INT8 in a.manifest.graphs for a in artifacts.values()) else [])
    served: dict[tuple[str, str], tuple[np.ndarray, float, float]] = {}
    for precision in precisions:
        # both in one process: the student serves beside its teacher
        # a closed-loop throughput measurement, not an overload one: no request is refused for waiting
        server = launch("--model-dir", str(artifacts[names[0]].directory), "--precision", precision,
                        "--max-queue-wait-s", "0", "--request-timeout-s", "600",
                        model_dir=artifacts[names[1]].directory)  # fmt: skip
        try:
            for name in names:
                served[name, precision] = served_figures(server, name, pairs, texts)
        finally:
            server.stop()
    rates = in_process_rates(artifacts, [FAST, FAST_INT8][: len(precisions)], texts)

    rows = []
    for name in names:
        for precision, role in zip(precisions, (FAST, FAST_INT8), strict=False):
            vectors, score, rate = served[name, precision]
            cosine = float(np.mean(np.sum(vectors * served[name, "fp32"][0], axis=1)))
            layers = artifacts[name].manifest.n_layers
            rows.append(ModelRow(name, precision, layers, score, cosine, rates[name, role], rate))

    print(f"\n2 models served from one process; {usable_cores()} cores; took {time.time() - started:.0f} s\n")
    print("| model | precision | layers | sts-test | cosine to fp32 | sent/s in-process | sent/s served |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.model} | {r.precision} | {r.layers} | {r.sts_test:.2f} | {r.cosine_to_fp32:.4f} | "
              f"{r.in_process_sentences_per_s:.1f} | {r.served_sentences_per_s:.1f} |")  # fmt: skip
    teacher, student = (next(r for r in rows if r.model == n and r.precision == "fp32") for n in names)
    keep = student.sts_test / teacher.sts_test
    speedup = student.in_process_sentences_per_s / teacher.in_process_sentences_per_s
    verdicts = [
        (f"student sts-test >= {KEEP_SCORE:.0%} of the teacher's", keep >= KEEP_SCORE, keep),
        (f"student in-process fp32 >= {SPEEDUP:g}x the teacher's", speedup >= SPEEDUP, speedup),
    ]
    print("\ntargets:")
    for text, ok, value in verdicts:
        print(f"  {'ok  ' if ok else 'MISS'}  {text}  ({value:.3f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "cores": usable_cores(), "command": "python -m bench.student",
              "rows": [asdict(r) for r in rows], "keep": keep, "speedup": speedup}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(ok for _, ok, _ in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
