"""A deterministic backend with no artifact and no onnxruntime: for the engine's own tests.

Its tokenizer splits on whitespace and punctuation into a word-level vocabulary of a few
English words and every number below 10 000 (anything else is [UNK]), with [CLS] and [SEP]
around every text, so texts that differ by a number ("request 17", "request 18") differ in
ids and vectors. Hidden state t of a sequence is (token id of t, position of t, length of
the sequence, 1, 0, ...), so pooling, slicing and padding mistakes change the numbers;
attention is uniform over each sequence's own tokens.
`delay_s` makes every batch take that long (a slow runtime), and `calls` records the last
CALLS_KEPT batches' shapes, so tests can see what was batched together (and a served fake
keeps a bounded record however long it runs).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from service.backends.base import ModelSpec, Placement

FAKE_SPEC = ModelSpec(
    name="fake", version="1", d_model=8, n_layers=2, n_heads=2, max_len=32, pooling="mean", normalize=True
)
CALLS_KEPT = 10_000
SPECIAL = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
WORDS = [
    "the",
    "a",
    "man",
    "is",
    "playing",
    "guitar",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "attention",
    "all",
    "you",
    "need",
    "short",
]
NUMBERS = 10_000


def fake_tokenizer(max_len: int) -> Tokenizer:
    words = [*WORDS, *map(str, range(NUMBERS))]
    vocab = {**SPECIAL, **{word: i + len(SPECIAL) for i, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", SPECIAL["[CLS]"]), ("[SEP]", SPECIAL["[SEP]"])]
    )
    tokenizer.enable_truncation(max_length=max_len)
    tokenizer.no_padding()
    return tokenizer


@dataclass
class FakeBackend:
    spec: ModelSpec = FAKE_SPEC
    workers: int = 1
    delay_s: float = 0.0
    placement: Placement = field(default_factory=lambda: Placement(provider="fake", precision="fp32", graph="none"))
    calls: collections.deque[tuple[str, tuple[int, int]]] = field(  # (path, (B, T)) per batch
        default_factory=lambda: collections.deque(maxlen=CALLS_KEPT)
    )
    tokenizer: Tokenizer = field(init=False)

    def __post_init__(self) -> None:
        self.tokenizer = fake_tokenizer(self.spec.max_len)
        self._lock = threading.Lock()

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self._record("fast", input_ids)
        return hidden_states(input_ids, attention_mask, self.spec.d_model)

    def attend(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._record("attention", input_ids)
        hidden = hidden_states(input_ids, attention_mask, self.spec.d_model)
        B, T = input_ids.shape
        mask = attention_mask.astype(np.float32)  # (B, T): keys each query may attend to
        uniform = mask[:, None, :] / mask.sum(1)[:, None, None]  # (B, T, T)
        probs = np.broadcast_to(uniform[:, None, None], (B, self.spec.n_layers, self.spec.n_heads, T, T))
        return hidden, np.ascontiguousarray(probs, dtype=np.float32)

    def warm_up(self) -> float:
        return 0.0

    def _record(self, path: str, input_ids: np.ndarray) -> None:
        with self._lock:
            self.calls.append((path, input_ids.shape))
        if self.delay_s:
            time.sleep(self.delay_s)


def hidden_states(input_ids: np.ndarray, attention_mask: np.ndarray, d_model: int) -> np.ndarray:
    B, T = input_ids.shape
    hidden = np.zeros((B, T, d_model), dtype=np.float32)
    hidden[:, :, 0] = input_ids
    hidden[:, :, 1] = np.arange(T)[None, :]
    hidden[:, :, 2] = attention_mask.sum(1)[:, None]
    hidden[:, :, 3] = 1.0
    return hidden * attention_mask[:, :, None]  # padded positions hold zeros, as a real graph's need not
