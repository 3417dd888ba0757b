"""The training configs. Each field that is also a command-line flag says so with `flag` metadata,
which carries its help text; model/train/cli.py derives the flags from these fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from model.errors import ModelError
from model.tokenizer import SPECIAL_TOKENS

RUNS_DIR = Path("artifacts") / "runs"


def flag(
    help: str, *, name: str | None = None, default_help: str | None = None, metavar: tuple[str, ...] | None = None
) -> dict:
    """Field metadata that makes the field a flag: --NAME-WITH-DASHES unless `name` gives it, required
    when the field has no default; `default_help` describes a default that is not a plain value."""
    return {"help": help, "flag": name, "default_help": default_help, "metavar": metavar}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters and run mechanics both jobs share."""

    epochs: int = field(metadata=flag("passes over the training data"))
    batch_size: int = field(metadata=flag("examples per optimizer step"))
    lr: float = field(metadata=flag("peak learning rate"))
    weight_decay: float = field(default=0.01, metadata=flag("AdamW weight decay"))
    # the learning rate ramps up from 0 over this share of all steps, then decays to 0
    warmup: float = field(default=0.1, metadata=flag("share of steps warming up"))
    max_grad_norm: float = 1.0
    max_len: int = field(default=128, metadata=flag("truncation while training"))  # in word pieces
    seed: int = field(default=42, metadata=flag("seeds every random draw of the run"))
    # epoch ends are always saved as well
    save_every: int = field(default=200, metadata=flag("steps between checkpoints"))
    log_every: int = field(default=50, metadata=flag("steps between progress lines"))
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata=flag("where to train"))
    threads: int | None = field(default=None, metadata=flag("CPU threads for torch", default_help="torch's choice"))

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

    out: Path = field(metadata=flag("artifact directory to write"))
    name: str | None = field(
        default=None, metadata=flag("model name served and listed", default_help="the --out directory's name")
    )
    version: str = field(default="1", metadata=flag("model version"))
    run_dir: Path | None = field(
        default=None, metadata=flag("checkpoints, metrics and the best encoder", default_help=f"{RUNS_DIR}/NAME")
    )
    resume: bool = field(default=False, metadata=flag("continue from the run directory's checkpoint"))
    int8: bool = field(default=True, metadata=flag("skip the int8 graph and its quality gate", name="--no-int8"))

    @property
    def model_name(self) -> str:
        return self.name or Path(self.out).name

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else RUNS_DIR / self.model_name


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    train_file: Path = field(metadata=flag("training pairs (see --format)", name="--train"))
    data_format: Literal["sts", "pairs"] = field(
        default="sts",
        metadata=flag(
            "sts: scored pairs, STS Benchmark columns (score in 5, sentences in 6 and 7); "
            "pairs: unscored positive pairs, two tab-separated columns",
            name="--format",
        ),
    )
    loss: Literal["cosent", "cosine", "in-batch"] | None = field(
        default=None, metadata=flag("the training objective", default_help="cosent for sts, in-batch for pairs")
    )
    dev_file: Path | None = field(
        default=None,
        metadata=flag("scored pairs (sts format) evaluated each epoch; the best epoch is kept", name="--dev"),
    )
    # scored once, after selection; never used to choose anything
    test_file: Path | None = field(
        default=None,
        metadata=flag("scored pairs (sts format) reported once for the kept epoch, never selected on", name="--test"),
    )
    checkpoint: Path | None = field(
        default=None, metadata=flag("BERT-family or mhaserve checkpoint dir", default_help="all-MiniLM-L6-v2")
    )
    artifact: Path | None = field(default=None, metadata=flag("start from an artifact's source checkpoint instead"))
    score_range: tuple[float, float] = field(
        default=(0.0, 5.0),
        metadata=flag("the gold scores' range; a row outside it is refused", metavar=("MIN", "MAX")),
    )

    @property
    def loss_name(self) -> str:
        return self.loss or ("cosent" if self.data_format == "sts" else "in-batch")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    teacher: Path = field(
        metadata=flag("the teacher's artifact: its served vectors are the targets, its layers the student's start")
    )
    train_file: Path = field(
        metadata=flag(
            "scored pairs (sts format): their sentences are distilled on, their scores feed CoSENT", name="--train"
        )
    )
    dev_file: Path | None = field(
        default=None,
        metadata=flag("scored pairs (sts format) evaluated each epoch; the best epoch is kept", name="--dev"),
    )
    test_file: Path | None = field(
        default=None,
        metadata=flag("scored pairs (sts format) reported once for the kept epoch, never selected on", name="--test"),
    )
    n_layers: int = field(default=3, metadata=flag("student layers, spread evenly over the teacher's", name="--layers"))
    cosent_weight: float = field(
        default=1.0, metadata=flag("weight of CoSENT on the train scores beside the distance to the teacher (0: none)")
    )
    score_range: tuple[float, float] = field(
        default=(0.0, 5.0),
        metadata=flag("the gold scores' range; a row outside it is refused", metavar=("MIN", "MAX")),
    )

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ModelError(f"--layers must be positive, got {self.n_layers}")
        if self.cosent_weight < 0:
            raise ModelError(f"--cosent-weight must not be negative, got {self.cosent_weight}")


@dataclass(frozen=True, kw_only=True)
class CrossFinetuneConfig:
    """A cross-encoder (model/cross_encoder.py) trained on scored pairs read together."""

    train_file: Path = field(metadata=flag("scored pairs, STS Benchmark columns", name="--train"))
    dev_file: Path | None = field(
        default=None,
        metadata=flag("scored pairs (sts format) evaluated each epoch; the best epoch is kept", name="--dev"),
    )
    test_file: Path | None = field(
        default=None,
        metadata=flag("scored pairs (sts format) reported once for the kept epoch, never selected on", name="--test"),
    )
    checkpoint: Path | None = field(
        default=None,
        metadata=flag(
            "BERT/MPNet encoder or cross-encoder checkpoint dir; an encoder gets its pooler (if any) and a new "
            "classifier",
            default_help="all-MiniLM-L6-v2",
        ),
    )
    score_range: tuple[float, float] = field(
        default=(0.0, 5.0),
        metadata=flag("the gold scores' range, scaled to the [0, 1] target", metavar=("MIN", "MAX")),
    )
    both_orders: bool = field(default=False, metadata=flag("also train every pair as (b, a)"))


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    corpus: Path = field(metadata=flag("UTF-8 text, one sequence per line, blank lines skipped"))
    dev_file: Path | None = field(
        default=None,
        metadata=flag("held-out text in the same format; the epoch with the lowest MLM loss is kept", name="--dev"),
    )
    vocab_size: int = field(default=8000, metadata=flag("WordPiece vocabulary"))
    d_model: int = field(default=256, metadata=flag("width of the hidden states"))
    n_heads: int = field(default=4, metadata=flag("attention heads per layer", name="--heads"))
    n_layers: int = field(default=4, metadata=flag("encoder layers", name="--layers"))
    d_ff: int = field(default=1024, metadata=flag("width of the feed-forward layers"))
    positions: Literal["sinusoidal", "learned"] = field(default="sinusoidal", metadata=flag("position embeddings"))
    dropout: float = field(default=0.1, metadata=flag("dropout probability"))
    mask_prob: float = field(default=0.15, metadata=flag("share of tokens predicted"))

    def __post_init__(self) -> None:
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ModelError(
                f"--vocab-size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {self.vocab_size}"
            )
        if not 0.0 < self.mask_prob < 1.0:
            raise ModelError(f"--mask-prob must be in (0, 1), got {self.mask_prob}")
