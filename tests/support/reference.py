"""The truth the transports are compared with: in-process onnxruntime on the server's own graphs."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from artifact.manifest import ATTENTION, FAST, Artifact
from artifact.pooling import l2_normalize, mean_pool, pad_batch, pool

# a mix of lengths, scripts and punctuation, shared by the transport tests
SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need.",
    "Ein Satz auf Deutsch, mit Umlauten: äöü.",
    "short",
    "A considerably longer sentence that goes on and on, so that batches hold inputs of quite different lengths.",
]


class Reference:
    """In-process onnxruntime on the same graphs the server runs: the truth to compare with."""

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.fast = ort.InferenceSession(str(artifact.graph_path(FAST)), options, providers=["CPUExecutionProvider"])
        self.attention_session = ort.InferenceSession(
            str(artifact.graph_path(ATTENTION)), options, providers=["CPUExecutionProvider"]
        )

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def hidden(self, text: str) -> np.ndarray:
        input_ids, mask = pad_batch([self.ids(text)])
        return self.fast.run(None, {"input_ids": input_ids, "attention_mask": mask})[0][0]

    def embedding(self, text: str, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        hidden = self.hidden(text)[None]
        return pool(hidden, np.array([hidden.shape[1]]), pooling, normalize)[0]

    def embeddings(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """(len(texts), d_model): the default (mean-pooled, normalised) vector of each text, in batches."""
        out = []
        for start in range(0, len(texts), batch):
            input_ids, mask = pad_batch([self.ids(t) for t in texts[start : start + batch]])
            (hidden,) = self.fast.run(None, {"input_ids": input_ids, "attention_mask": mask})
            out.append(l2_normalize(mean_pool(hidden, mask.sum(1))))
        return np.concatenate(out) if out else np.zeros((0, self.artifact.manifest.embedding_dim), dtype=np.float32)

    @staticmethod
    def close(actual: np.ndarray, expected: np.ndarray) -> bool:
        """An answer equals this reference's to the graphs' float32 differences across batch shapes."""
        return bool(np.allclose(actual, expected, atol=1e-5))

    def attention(self, text: str) -> np.ndarray:
        input_ids, mask = pad_batch([self.ids(text)])
        return self.attention_session.run(None, {"input_ids": input_ids, "attention_mask": mask})[1][0]
