"""The CUDA path, on a machine with a usable NVIDIA GPU (skipped elsewhere, never required).

Run on a GPU machine: `python -m pytest tests/gpu -v`; results are recorded in
docs/gpu-results.md with device, date and command.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from artifact.hardware import cuda_usable
from artifact.pooling import l2_normalize, pad_batch
from service.backends.onnx import CUDA, OnnxBackend
from service.config import load_settings
from tests.support.server import ARTIFACT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_usable(), reason="no usable CUDA GPU on this machine"),
]

TEXTS = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need, and a GPU helps.",
    "A considerably longer sentence that goes on and on, so that batches hold inputs of different lengths.",
]


@pytest.fixture(scope="module")
def cuda_runtime() -> OnnxBackend:
    settings = load_settings({"model_dir": str(ARTIFACT), "device": "cuda"}, {})
    return OnnxBackend.load(ARTIFACT, settings)


def test_auto_placement_chooses_cuda_with_the_fp16_graph(cuda_runtime):
    assert cuda_runtime.fast.provider == CUDA
    assert cuda_runtime.fast.precision == "fp16"
    assert cuda_runtime.attention.provider == CUDA


def test_io_bound_fp16_run_matches_cpu_fp32(cuda_runtime, reference):
    ids, mask = pad_batch([reference.ids(t) for t in TEXTS])
    (gpu_hidden,) = cuda_runtime.fast.run(ids, mask)  # through IO binding
    cpu_hidden = reference.fast.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    lengths = mask.sum(1)
    for i, n in enumerate(lengths):
        a, b = gpu_hidden[i, :n].mean(0), cpu_hidden[i, :n].mean(0)
        assert float(l2_normalize(a) @ l2_normalize(b)) >= 0.999


def test_attention_graph_on_cuda_matches_cpu(cuda_runtime, reference):
    ids, mask = pad_batch([reference.ids(t) for t in TEXTS[:2]])
    _, gpu_probs = cuda_runtime.attention.run(ids, mask)
    cpu_probs = reference.attention_session.run(None, {"input_ids": ids, "attention_mask": mask})[1]
    np.testing.assert_allclose(gpu_probs, cpu_probs, atol=1e-4)
    assert np.all(gpu_probs[1][..., mask[1] == 0] == 0)


def test_server_on_gpu_answers_with_fp16_vectors_close_to_fp32(server, reference):
    card = httpx.get(server.url + "/v1/models").json()["data"][0]
    assert (card["provider"], card["precision"]) == (CUDA, "fp16")
    body = httpx.post(server.url + "/v1/embed", json={"inputs": TEXTS}, timeout=60).json()
    for text, vector in zip(TEXTS, body["embeddings"], strict=True):
        assert float(np.dot(vector, reference.embedding(text))) >= 0.999
    assert "CUDAExecutionProvider" in server.log() and "Traceback" not in server.log()
