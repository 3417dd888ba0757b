"""Training data readers: every one names the file and line of what it refuses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from artifact.manifest import sha256_of
from model.data import ScoredPair, read_sts
from model.errors import ModelError


@dataclass(frozen=True)
class DataFile:
    """A file a run read, as its run.json and the artifact's provenance record it."""

    path: Path
    sha256: str
    rows: int

    def to_dict(self) -> dict:
        return {"path": str(self.path.resolve()), "sha256": self.sha256, "rows": self.rows}


def describe(path: Path, rows: int) -> DataFile:
    return DataFile(Path(path), sha256_of(path), rows)


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line, refusing what isn't UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: file not found")
    rows = []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise ModelError(f"{path}:{line_no}: not UTF-8 text ({exc.reason})") from None
            if line.strip():
                rows.append((line_no, line))
    return rows


def read_corpus(path: Path) -> list[str]:
    """Plain text, one sequence per line; blank lines skipped."""
    texts = [line.strip() for _, line in read_lines(path)]
    if not texts:
        raise ModelError(f"{path}: empty corpus (no non-blank lines)")
    return texts


def read_pairs(path: Path) -> list[ScoredPair]:
    """Unscored positive pairs: two tab-separated columns, anchor and positive."""
    pairs = []
    for line_no, line in read_lines(path):
        columns = line.split("\t")
        if len(columns) != 2:
            raise ModelError(
                f"{path}:{line_no}: expected 2 tab-separated columns (anchor, positive), found {len(columns)}"
            )
        if not columns[0].strip() or not columns[1].strip():
            raise ModelError(f"{path}:{line_no}: empty sentence")
        pairs.append(ScoredPair(columns[0], columns[1], math.nan))
    if not pairs:
        raise ModelError(f"{path}: no sentence pairs in the file")
    return pairs


def read_scored(path: Path, score_range: tuple[float, float]) -> list[ScoredPair]:
    """Scored pairs in STS Benchmark columns (model/data.py), refusing what isn't UTF-8."""
    try:
        return read_sts(path, *score_range)
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not UTF-8 text ({exc.reason})") from None
