"""python -m model train {finetune,finetune-cross,distill,pretrain}: flags derived from the config fields, and back.

Each flag is declared once, as the `flag` metadata of a config field (model/train/config.py); here
`add_arguments` turns those fields into argparse arguments (type, choices, default and
help from the field) and `from_args` builds the config from the parsed namespace.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from model.train.config import (
    CrossFinetuneConfig,
    DistillConfig,
    FinetuneConfig,
    JobConfig,
    PretrainConfig,
    TrainConfig,
)


@dataclass(frozen=True)
class JobSpec:
    help: str
    config: type[FinetuneConfig] | type[CrossFinetuneConfig] | type[DistillConfig] | type[PretrainConfig]
    defaults: dict[str, Any]  # this job's defaults for TrainConfig's required flags


JOBS = {
    "finetune": JobSpec(
        "adapt a pretrained encoder to sentence pairs", FinetuneConfig, {"epochs": 4, "batch_size": 16, "lr": 2e-5}
    ),
    "finetune-cross": JobSpec(
        "train a cross-encoder (pair classifier) on scored pairs",
        CrossFinetuneConfig,
        {"epochs": 4, "batch_size": 16, "lr": 2e-5},
    ),
    "distill": JobSpec(
        "train a smaller student, made of the teacher's layers, to reproduce the teacher's vectors",
        DistillConfig,
        {"epochs": 2, "batch_size": 32, "lr": 1e-4},
    ),
    "pretrain": JobSpec(
        "train a WordPiece tokenizer and an encoder from scratch with MLM",
        PretrainConfig,
        {"epochs": 10, "batch_size": 32, "lr": 5e-4},
    ),
}


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="fine-tune, distill or pre-train a model, then export it as an artifact")
    jobs = train.add_subparsers(dest="job", required=True)
    for name, spec in JOBS.items():
        parser = jobs.add_parser(name, help=spec.help)
        for config in (spec.config, JobConfig, TrainConfig):
            add_arguments(parser, config, spec.defaults)
        parser.set_defaults(run=run_from_args)


def flag_fields(config: type) -> list[Field]:
    return [f for f in fields(config) if "help" in f.metadata]


def add_arguments(parser: argparse.ArgumentParser, config: type, defaults: dict[str, Any]) -> None:
    """One argument per field with `flag` metadata, stored under the field's name."""
    hints = get_type_hints(config)
    for f in flag_fields(config):
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        kind = without_none(hints[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text(f, default)}
        if kind is bool:
            # a True default is switched off by its flag (--no-int8), a False one switched on
            parser.add_argument(flag, action="store_false" if default else "store_true", **kwargs)
            continue
        if default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        if get_origin(kind) is Literal:
            kwargs["choices"] = list(get_args(kind))
        elif get_origin(kind) is tuple:
            items = get_args(kind)
            kwargs.update(nargs=len(items), type=items[0])
        else:
            kwargs["type"] = kind
        if "choices" not in kwargs:
            kwargs["metavar"] = f.metadata["metavar"] or flag.removeprefix("--").replace("-", "_").upper()
        parser.add_argument(flag, **kwargs)


def without_none(hint: Any) -> Any:
    """`X | None` -> X: None is a flag's absent value, not a type to parse."""
    if get_origin(hint) in (Union, types.UnionType):
        (hint,) = [a for a in get_args(hint) if a is not type(None)]
    return hint


def help_text(f: Field, default: Any) -> str:
    shown = f.metadata["default_help"]
    if shown is None and default not in (MISSING, None) and not isinstance(default, bool):
        values = default if isinstance(default, tuple) else (default,)
        shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
    return f"{f.metadata['help']} (default: {shown})" if shown is not None else f.metadata["help"]


def from_args(config: type, args: argparse.Namespace) -> Any:
    values = {f.name: getattr(args, f.name) for f in flag_fields(config)}
    hints = get_type_hints(config)
    for name, value in values.items():
        if get_origin(hints[name]) is tuple:
            values[name] = tuple(value)
    return config(**values)


def run_from_args(args: argparse.Namespace) -> int:
    import torch

    from model.train.jobs import distill, finetune, finetune_cross, pretrain

    config = from_args(TrainConfig, args)
    job = from_args(JobConfig, args)
    data = from_args(JOBS[args.job].config, args)
    started, threads = time.monotonic(), torch.get_num_threads()
    try:
        jobs = {"finetune": finetune, "finetune-cross": finetune_cross, "distill": distill, "pretrain": pretrain}
        run = jobs[args.job]
        provenance = run(config, data, job)
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
