"""A deterministic backend with no artifact and no onnxruntime: for tests and demos.

Its tokenizer splits on whitespace and punctuation into a word-level vocabulary of a few
English words (WORDS) and every number below 10 000 (anything else is [UNK]), so texts that
differ by a number ("request 17", "request 18") differ in ids and vectors. [CLS] and [SEP]
go around every text, and a pair is `[CLS] a [SEP] b [SEP]` with segment ids 0 then 1,
truncated longest_first. `delay_s` makes every batch take that long (a slow runtime), and
`calls` records the last CALLS_KEPT batches' shapes, so tests can see what was batched
together (and a served fake keeps a bounded record however long it runs).

The embedder ("fake"): hidden state t of a sequence is (token id of t, position of t, length
of the sequence, 1, 0, ...), so pooling, slicing and padding mistakes change the numbers;
attention is uniform over each sequence's own tokens.

The cross-encoders score a pair from its ids and segment ids alone, so segment, padding and
batching mistakes change the scores. With `shared` the number of the document's word tokens
(segment 1, [SEP] not counted) whose word, a known one, is also in the query (segment 0), and
`words` the number of the document's word tokens ([UNK] included):
- "fake-rerank" (task rerank, one label "score", sigmoid): logit = shared - 0.1 * words;
- "fake-classify" (task classify, labels contradiction, entailment, neutral; softmax):
  logits = (-shared, shared, 0.1 * words - 1).
Their attention is not uniform, so slicing mistakes show: in layer l, head h, query i gives key
j < n the weight 1 + (i + 2j + l + h) mod 5, normalised over the sequence's n tokens.
"""

from __future__ import annotations

import collections
import dataclasses
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
FAKE_RERANK_SPEC = dataclasses.replace(
    FAKE_SPEC, name="fake-rerank", task="rerank", labels=("score",), score_activation="sigmoid"
)
FAKE_CLASSIFY_SPEC = dataclasses.replace(
    FAKE_SPEC,
    name="fake-classify",
    task="classify",
    labels=("contradiction", "entailment", "neutral"),
    score_activation="softmax",
)
FAKE_SPECS = {"embed": FAKE_SPEC, "rerank": FAKE_RERANK_SPEC, "classify": FAKE_CLASSIFY_SPEC}
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
        single="[CLS] $A [SEP]",
        pair="[CLS] $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", SPECIAL["[CLS]"]), ("[SEP]", SPECIAL["[SEP]"])],
    )
    tokenizer.enable_truncation(max_length=max_len, strategy="longest_first")
    tokenizer.no_padding()
    return tokenizer


@dataclass
class FakeBackend:
    spec: ModelSpec = FAKE_SPEC
    workers: int = 1
    inline_max_tokens: int = 0  # its batch_ms stands for compute: never on the event loop
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

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        self._record("fast", input_ids)
        return pair_logits(input_ids, attention_mask, token_type_ids, self.spec.task)

    def score_attend(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        self._record("attention", input_ids)
        logits = pair_logits(input_ids, attention_mask, token_type_ids, self.spec.task)
        return logits, pair_attention(attention_mask, self.spec.n_layers, self.spec.n_heads)

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


def pair_logits(input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray, task: str) -> np.ndarray:
    """The cross-encoders' logits (the module's docstring gives the rule)."""
    rows = []
    for ids, mask, types in zip(input_ids.tolist(), attention_mask.tolist(), token_type_ids.tolist(), strict=True):
        query = {t for t, m, s in zip(ids, mask, types, strict=True) if m and s == 0 and t >= len(SPECIAL)}
        document = [t for t, m, s in zip(ids, mask, types, strict=True) if m and s == 1 and t != SPECIAL["[SEP]"]]
        shared = sum(1 for t in document if t in query)
        words = len(document)
        rows.append([shared - 0.1 * words] if task == "rerank" else [-shared, shared, 0.1 * words - 1])
    return np.array(rows, dtype=np.float32)


def pair_attention(attention_mask: np.ndarray, n_layers: int, n_heads: int) -> np.ndarray:
    """(B, L, h, T, T): weight 1 + (i + 2j + l + h) mod 5 on each real key j, rows normalised."""
    B, T = attention_mask.shape
    l, h, i, j = np.ogrid[:n_layers, :n_heads, :T, :T]
    weights = (1 + (i + 2 * j + l + h) % 5).astype(np.float32)  # (L, h, T, T)
    weights = weights[None] * attention_mask[:, None, None, None, :]  # padded keys weigh nothing
    return np.ascontiguousarray(weights / weights.sum(-1, keepdims=True), dtype=np.float32)
