"""Two models in one server, measured: `python -m bench.models`.

Serves all-minilm-l6-v2 and all-mpnet-base-v2 (`make model` and `make model
MODEL=all-mpnet-base-v2` build them) from one process and reports, for each model:
sts-test Spearman x100 through the server's REST API; the served vectors' cosine to
sentence-transformers on the same checkpoint, for sts-dev sentences and for texts truncated
at the model's max_len; throughput over REST (client batches of 32, and single sentences)
against the in-process onnxruntime limit measured in the same run. Then the same two models
in two processes: resident memory and throughput of each, against the one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from artifact.manifest import FAST, Artifact
from bench.__main__ import batches_of, in_process, limit_configs
from bench.corpus import corpus
from bench.loadgen import closed_loop, rest_call
from bench.server import REPO, ServerProcess, launch
from model.data import read_sts, sts_dir
from model.evaluate import cosine_rows, long_inputs, spearman
from service.client import RestClient

MODELS = {"all-minilm-l6-v2": 82.03, "all-mpnet-base-v2": 83.42}  # published sts-test Spearman x100


@dataclass
class ModelFigures:
    model: str
    sts_test: float
    published: float
    min_cosine_to_sentence_transformers: float
    min_cosine_truncated: float
    limit_sentences_per_s: float
    batched_sentences_per_s: float
    single_sentences_per_s: float
    two_process_batched_sentences_per_s: float = 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def embed_all(client: RestClient, model: str, texts: list[str], batch: int = 64) -> np.ndarray:
    return np.concatenate(
        [client.embed(texts[i : i + batch], model=model).embeddings for i in range(0, len(texts), batch)]
    )


def sts_test(client: RestClient, model: str) -> float:
    pairs = read_sts(sts_dir() / "sts-test.csv")
    a = embed_all(client, model, [p.sentence1 for p in pairs])
    b = embed_all(client, model, [p.sentence2 for p in pairs])
    return 100 * spearman((a * b).sum(1), np.array([p.score for p in pairs]))


def against_sentence_transformers(
    client: RestClient, model: str, artifact: Artifact, texts: list[str]
) -> tuple[float, float]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(artifact.manifest.provenance["checkpoint"], device="cpu")
    served = embed_all(client, model, texts)
    reference = st.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    long_texts = long_inputs(texts * 4, tokenizer, artifact.manifest.max_len, count=8)
    truncated = cosine_rows(embed_all(client, model, long_texts, batch=4), st.encode(long_texts, batch_size=4))
    return float(cosine_rows(served, reference).min()), float(truncated.min())


def throughput(server: ServerProcess, model: str, texts: list[str]) -> tuple[float, float]:
    """Best of two runs each: REST client batches of 32 (concurrency 8), single sentences (64)."""
    make = rest_call("127.0.0.1", server.http_port, model)
    asyncio.run(closed_loop(make, batches_of(texts, 32), 8))  # warm every batch shape
    rates = {}
    for size, clients in ((32, 8), (1, 64)):
        outcomes = [asyncio.run(closed_loop(make, batches_of(texts, size), clients)) for _ in range(2)]
        failed = sum(o.errors for o in outcomes)
        assert not failed, f"{model}: {failed} requests of {size} failed; a rate with failures means nothing"
        rates[size] = max(len(texts) / o.seconds for o in outcomes)
    return rates[32], rates[1]


def limit(artifact: Artifact, texts: list[str]) -> float:
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    tokenizer.enable_truncation(max_length=artifact.manifest.max_len)
    # each shape's first run pays onnxruntime's allocations: the best of three runs per configuration
    runs = [in_process(artifact.graph_path(FAST), tokenizer, texts, c)[0] for c in limit_configs() for _ in range(3)]
    return len(texts) / min(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=320, help="throughput corpus size")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results" / "models.json")
    args = parser.parse_args()
    artifacts = {name: Artifact.load(REPO / "artifacts" / name) for name in MODELS}
    texts = corpus(args.sentences, 0)
    dev = sorted({p.sentence1 for p in read_sts(sts_dir() / "sts-dev.csv")})[:400]
    figures: dict[str, ModelFigures] = {}

    # a closed-loop throughput measurement, not an overload one: room for every client's batches
    roomy = ("--max-queue-wait-s", "10")
    both = launch("--model-dir", str(artifacts["all-mpnet-base-v2"].directory), *roomy)  # the default one first
    try:
        one_process_mb = rss_mb(both.process.pid)
        with RestClient(both.url, timeout_s=600) as client:
            for name, published in MODELS.items():
                score = sts_test(client, name)
                cosine, truncated = against_sentence_transformers(client, name, artifacts[name], dev)
                batched, single = throughput(both, name, texts)
                figures[name] = ModelFigures(name, score, published, cosine, truncated, 0.0, batched, single)
        one_process_mb = max(one_process_mb, rss_mb(both.process.pid))
    finally:
        both.stop()
    for name, artifact in artifacts.items():
        figures[name].limit_sentences_per_s = limit(artifact, texts)

    separate = {name: launch(*roomy, model_dir=artifact.directory) for name, artifact in artifacts.items()}
    try:
        for name, server in separate.items():
            figures[name].two_process_batched_sentences_per_s = throughput(server, name, texts)[0]
        two_processes_mb = sum(rss_mb(server.process.pid) for server in separate.values())
    finally:
        for server in separate.values():
            server.stop()

    print(f"{'model':20} {'sts-test':>9} {'cos ST':>8} {'cos trunc':>9} {'limit/s':>8} {'REST 32':>8} "
          f"{'ratio':>6} {'single':>7} {'ratio':>6} {'2 procs':>8}")  # fmt: skip
    for f in figures.values():
        print(
            f"{f.model:20} {f.sts_test:9.2f} {f.min_cosine_to_sentence_transformers:8.5f} "
            f"{f.min_cosine_truncated:9.5f} "
            f"{f.limit_sentences_per_s:8.1f} {f.batched_sentences_per_s:8.1f} "
            f"{f.batched_sentences_per_s / f.limit_sentences_per_s:6.2f} {f.single_sentences_per_s:7.1f} "
            f"{f.single_sentences_per_s / f.limit_sentences_per_s:6.2f} {f.two_process_batched_sentences_per_s:8.1f}"
        )
    print(
        f"resident memory: one process with both models {one_process_mb:.0f} MB, "
        f"two processes {two_processes_mb:.0f} MB"
    )
    result = {"models": [asdict(f) for f in figures.values()], "one_process_mb": one_process_mb,
              "two_processes_mb": two_processes_mb}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    ok = all(abs(f.sts_test - f.published) <= 0.05 and f.min_cosine_to_sentence_transformers >= 0.9999
             and f.min_cosine_truncated >= 0.9999 for f in figures.values())  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
