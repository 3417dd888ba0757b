"""Sentence-pair data in the STS Benchmark's tab-separated format, with file:line errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from model.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parent.parent


def sts_dir() -> Path:
    """Where the STS Benchmark lies: $STSB_DIR, else the workspace's shared copy."""
    configured = os.environ.get("STSB_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "stsbenchmark"


@dataclass(frozen=True)
class ScoredPair:
    sentence1: str
    sentence2: str
    score: float  # gold similarity, 0..5


def read_sts(path: Path, min_score: float = 0.0, max_score: float = 5.0) -> list[ScoredPair]:
    """Rows of genre, file, year, id, score, sentence1, sentence2 (extra columns ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    pairs = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            columns = line.split("\t")
            if len(columns) < 7:
                raise ModelError(f"{path}:{line_no}: expected 7 tab-separated columns, found {len(columns)}")
            try:
                score = float(columns[4])
            except ValueError:
                raise ModelError(f"{path}:{line_no}: score {columns[4]!r} is not a number") from None
            if not min_score <= score <= max_score:
                raise ModelError(f"{path}:{line_no}: score {score} outside [{min_score}, {max_score}]")
            if not columns[5].strip() or not columns[6].strip():
                raise ModelError(f"{path}:{line_no}: empty sentence")
            pairs.append(ScoredPair(columns[5], columns[6], score))
    if not pairs:
        raise ModelError(f"{path}: no sentence pairs in the file")
    return pairs


def unique_sentences(pairs: list[ScoredPair]) -> list[str]:
    seen: dict[str, None] = {}
    for pair in pairs:
        seen.setdefault(pair.sentence1)
        seen.setdefault(pair.sentence2)
    return list(seen)
