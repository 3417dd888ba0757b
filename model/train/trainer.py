"""The Trainer: what makes a run trustworthy, for whichever task it trains.

A seeded data order, progress with loss and throughput, a checkpoint every N steps (written
atomically, so a kill never leaves half of one), `--resume` from it (model, optimizer,
scheduler, RNG state and the position inside the epoch) and the best encoder by dev score.

A run directory (default artifacts/runs/NAME) holds:
  run.json        the job, its hyper-parameters and its data's sha256; --resume refuses a mismatch
  tokenizer.json  the tokenizer the run trains with
  checkpoint.pt   the latest training state
  metrics.jsonl   one line per step (loss, lr) and one per dev evaluation
  best/           the best encoder so far (encoder.json, encoder.safetensors, tokenizer.json and
                  the length to serve); `python -m model export --checkpoint RUN/best` exports it again
"""

from __future__ import annotations

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
from typing import Protocol

import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from model.encoder import Encoder
from model.errors import ModelError
from model.train.config import JobConfig, TrainConfig

log = logging.getLogger(__name__)

SERVE_LENGTH_FILE = "sentence_bert_config.json"  # what model.tokenizer.checkpoint_max_len reads
LENGTH_WINDOW = 50  # batches sorted by length together, for a task that has lengths


@dataclass(frozen=True)
class Evaluation:
    metric: str
    value: float
    higher_is_better: bool

    def better_than(self, best: float | None) -> bool:
        if best is None:
            return True
        return self.value > best if self.higher_is_better else self.value < best


class Task(Protocol):
    """What the Trainer asks of a job: the modules it trains, a loss per batch and a dev score."""

    encoder: Encoder
    modules: dict[str, nn.Module]  # everything trained and checkpointed, by name

    def __len__(self) -> int: ...

    # optional: `lengths`, each example's length in tokens; batches are then grouped by length

    def loss(self, indices: list[int], step: int) -> tuple[torch.Tensor, int]:
        """The batch's loss and the real (unpadded) tokens it saw."""

    def evaluate(self) -> Evaluation | None:
        """The dev score, or None without a dev set."""

    def save(self, directory: Path) -> list[str]:
        """Write what the artifact is exported from; returns the file names written."""


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
        lengths = getattr(self.task, "lengths", None)
        if lengths is None:
            return [order[i : i + size] for i in range(0, len(order), size)]
        # group by length, as transformers' group_by_length: sort each window of LENGTH_WINDOW
        # batches by length, cut it into batches, then shuffle the batches. Padding is then a few
        # tokens per row instead of up to the random batch's longest, at the same randomness of
        # which examples meet; the order still follows from the seed and the epoch alone.
        window = size * LENGTH_WINDOW
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
            batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

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
        names = self.task.save(staging)
        shutil.copyfile(self.tokenizer_json, staging / "tokenizer.json")
        # where `python -m model export --checkpoint RUN/best` reads the length to serve (256 for MiniLM)
        (staging / SERVE_LENGTH_FILE).write_text(json.dumps({"max_seq_length": self.max_len}) + "\n")
        self.best_dir.mkdir(exist_ok=True)
        for name in ("tokenizer.json", SERVE_LENGTH_FILE, *names):
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
