"""make bench's rerank rows: a query and 32 documents per request, served, against in-process
onnxruntime on the same pairs (tokenized as the server does, ideal length-sorted batches, the
score activation applied), measured in the same run.

The reranker is artifacts/all-minilm-l6-v2-cross-stsb when `make finetune-cross-stsb` has built
it; otherwise all-MiniLM-L6-v2 with a fresh one-label head, saved by sentence-transformers'
CrossEncoder and exported (build/bench/minilm-rerank): the same graph size and cost, its scores
meaningless, which a speed figure does not mind.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from tokenizers import Encoding, Tokenizer

from artifact.manifest import FAST, INPUT_IDS, TOKEN_TYPE_IDS, Artifact
from artifact.pooling import pad_batch
from bench.loadgen import Call, RawHttp
from bench.server import REPO

TRAINED = REPO / "artifacts" / "all-minilm-l6-v2-cross-stsb"
FRESH = REPO / "build" / "bench" / "minilm-rerank"
DOCUMENTS_PER_REQUEST = 32
SEED = 20261202


def reranker() -> Path:
    """The trained reranker, or the fresh-head one, built once (about a minute)."""
    if (TRAINED / "manifest.json").exists():
        return TRAINED
    if not (FRESH / "manifest.json").exists():
        saved = FRESH.parent / "minilm-rerank-st"
        script = (
            "import torch; from sentence_transformers import CrossEncoder; "
            "from model.weights import default_checkpoint_dir; torch.manual_seed(0); "
            f"CrossEncoder(str(default_checkpoint_dir()), num_labels=1, device='cpu').save({str(saved)!r})"
        )
        subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
        export = ["-m", "model", "export", "--checkpoint", str(saved), "--out", str(FRESH), "--name", FRESH.name]
        subprocess.run([sys.executable, *export, "--no-int8"], check=True, cwd=REPO)
    return FRESH


def workload(texts: list[str], requests: int) -> list[tuple[str, list[str]]]:
    """`requests` rerank requests: a short text as the query, 32 texts of the corpus as documents."""
    rng = random.Random(SEED)
    queries = [t for t in texts if len(t.split()) <= 16]
    return [(rng.choice(queries), rng.sample(texts, DOCUMENTS_PER_REQUEST)) for _ in range(requests)]


def pair_tokenizer(artifact: Artifact) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    tokenizer.enable_truncation(max_length=artifact.manifest.max_len, strategy="longest_first")
    tokenizer.no_padding()
    return tokenizer


def ideal_pair_batches(encodings: list[Encoding], max_tokens: int, max_size: int = 64) -> list[list[Encoding]]:
    ordered = sorted(encodings, key=lambda e: len(e.ids))
    batches: list[list[Encoding]] = [[]]
    for encoding in ordered:
        batch = batches[-1]
        if batch and (len(batch) == max_size or len(encoding.ids) * (len(batch) + 1) > max_tokens):
            batches.append(batch := [])
        batch.append(encoding)
    return batches


def in_process_pairs(
    artifact: Artifact, requests: list[tuple[str, list[str]]], workers: int, threads: int, batch_tokens: int
) -> float:
    """The limit for the pairs: tokenize them, run ideal batches, apply the sigmoid. Returns seconds."""
    from service.backends.onnx import session_options

    session = ort.InferenceSession(
        str(artifact.graph_path(FAST)), session_options(threads), providers=["CPUExecutionProvider"]
    )
    takes_types = TOKEN_TYPE_IDS in {i.name for i in session.get_inputs()}
    tokenizer = pair_tokenizer(artifact)

    def run(batch: list[Encoding]) -> None:
        input_ids, mask = pad_batch([e.ids for e in batch])
        feeds = {INPUT_IDS: input_ids, "attention_mask": mask}
        if takes_types:
            types = np.zeros_like(input_ids)
            for row, e in enumerate(batch):
                types[row, : len(e.type_ids)] = e.type_ids
            feeds[TOKEN_TYPE_IDS] = types
        logits = session.run(None, feeds)[0]
        1.0 / (1.0 + np.exp(-logits))

    run(tokenizer.encode_batch([("warm", "up")] * 4))
    pairs = [(query, document) for query, documents in requests for document in documents]
    with ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        encodings = tokenizer.encode_batch(pairs)
        list(pool.map(run, ideal_pair_batches(encodings, batch_tokens)))
        return time.perf_counter() - started


def rest_rerank_call(host: str, port: int) -> Call:
    """POST /rerank with [query, *documents]; returns the number of documents scored (0 when refused)."""
    connection = RawHttp(host, port)

    async def call(texts: list[str]) -> int:
        status, _, body = await connection.post("/rerank", {"query": texts[0], "texts": texts[1:]})
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        return len(orjson.loads(body))

    return call
