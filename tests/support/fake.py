"""The truth for servers on `--backend fake`: the fake's hidden states as service/backends/fake.py
documents them, pooled here in numpy (nothing from the server's pipeline), so a protocol test on
the fake still tells one request's answer from another's and a wrong answer from a right one.

The fake computes in float32 and this in float64: compare with `assert_matches` (rtol 1e-6), not
the real model's atol 1e-5, which the fake's small, id-dominated vectors would pass too easily."""

from __future__ import annotations

import numpy as np

from service.backends.fake import FAKE_SPEC, fake_tokenizer

MODEL = FAKE_SPEC.name
RTOL = 1e-6


class FakeReference:
    """The same questions as tests.support.reference.Reference, answered for the fake model."""

    spec = FAKE_SPEC

    def __init__(self) -> None:
        self.tokenizer = fake_tokenizer(FAKE_SPEC.max_len)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def hidden(self, text: str) -> np.ndarray:
        """(n, d_model): token t's state is (its id, its position, n, 1, 0, ...)."""
        ids = self.ids(text)
        n = len(ids)
        hidden = np.zeros((n, FAKE_SPEC.d_model))
        hidden[:, 0] = ids
        hidden[:, 1] = np.arange(n)
        hidden[:, 2] = n
        hidden[:, 3] = 1.0
        return hidden

    def embedding(self, text: str, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        hidden = self.hidden(text)
        if pooling == "mean":
            vector = hidden.mean(axis=0)
        elif pooling == "cls":
            vector = hidden[0]
        else:
            raise ValueError(f"the fake reference pools by mean or cls, not {pooling!r}")
        return vector / np.linalg.norm(vector) if normalize else vector

    def embeddings(self, texts: list[str]) -> np.ndarray:
        """(len(texts), d_model): the default (mean-pooled, normalised) vector of each text."""
        return np.stack([self.embedding(text) for text in texts]) if texts else np.zeros((0, FAKE_SPEC.d_model))

    @staticmethod
    def close(actual: np.ndarray, expected: np.ndarray) -> bool:
        """An answer equals this reference's to float32 rounding."""
        return bool(np.allclose(actual, expected, rtol=RTOL, atol=0))

    def attention(self, text: str) -> np.ndarray:
        """(layers, heads, n, n): every query attends uniformly to the sequence's own tokens."""
        n = len(self.ids(text))
        return np.full((FAKE_SPEC.n_layers, FAKE_SPEC.n_heads, n, n), 1.0 / n)


def assert_matches(actual: object, expected: np.ndarray) -> None:
    """The fake's answer equals the expected one to float32 rounding."""
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=RTOL, atol=0)
