"""One deterministic corpus: STS sentences plus longer generated paragraphs."""

from __future__ import annotations

import random

from model.data import read_sts, sts_dir, unique_sentences

SEED = 20261123


def corpus(sentences: int = 1200, paragraphs: int = 150) -> list[str]:
    """A realistic mix: mostly short sentences, some paragraphs of 60-250 word pieces."""
    pool = unique_sentences(read_sts(sts_dir() / "sts-test.csv")) + unique_sentences(
        read_sts(sts_dir() / "sts-dev.csv")
    )
    rng = random.Random(SEED)
    texts = rng.sample(pool, sentences)
    for _ in range(paragraphs):
        texts.append(" ".join(rng.sample(pool, rng.randint(4, 14))))
    rng.shuffle(texts)
    return texts


def short_sentence() -> str:
    return "A man is playing a guitar."
