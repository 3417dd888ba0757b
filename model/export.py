"""Export an Encoder to an artifact directory the server loads (its contract: artifact/manifest.py).

Graphs written:
- fast.onnx       fp32, hidden states only, onnxruntime's transformer optimizer applied so
                  attention, LayerNorm and GELU run as fused kernels;
- attention.onnx  fp32, hidden states and every layer's attention probabilities (attention
                  fusion disabled: fused kernels never expose the softmax);
- fast.fp16.onnx  the fast graph in fp16 with fp32 inputs/outputs, for CUDA;
- fast.int8.onnx  dynamically quantized for the CPU (model/quantize.py chooses which MatMuls stay
                  fp32, from sts-train sentences), written only if it passes its quality gate.

A sentence-transformers model's Dense layers (after pooling) are written as .npy files the
server applies in numpy; the graphs always output the encoder's own token embeddings.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnxruntime.transformers import optimizer
from onnxruntime.transformers.fusion_options import FusionOptions

from artifact.manifest import (
    ATTENTION,
    ATTENTION_MASK,
    ATTENTION_PROBS,
    FAST,
    FAST_FP16,
    FAST_INT8,
    HIDDEN_STATES,
    INPUT_IDS,
    MANIFEST_FILE,
    TOKENIZER_FILE,
    DenseSpec,
    GraphSpec,
    Manifest,
    sha256_of,
)
from model.data import read_sts, sts_dir, unique_sentences
from model.encoder import Encoder
from model.errors import ModelError
from model.quantize import choose_int8
from model.sentence_transformers import DenseLayer
from model.tokenizer import load_tokenizer, lower_case_first

log = logging.getLogger(__name__)

OPSET = 17  # the TorchScript exporter's well-trodden opset for BERT-style graphs
GRAPH_FILES = {FAST: "fast.onnx", ATTENTION: "attention.onnx", FAST_FP16: "fast.fp16.onnx", FAST_INT8: "fast.int8.onnx"}


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    name: str
    version: str = "1"
    pooling: str = "mean"
    normalize: bool = True
    max_len: int  # longest input in word pieces the server accepts
    int8: bool = True
    provenance: dict | None = None
    dense: tuple[DenseLayer, ...] = ()  # sentence-transformers Dense modules after pooling
    do_lower_case: bool = False  # sentence-transformers lower-cases the text before tokenizing
    prompts: dict[str, str] | None = None
    default_prompt_name: str | None = None
    matryoshka_dims: tuple[int, ...] = ()
    sentence_transformers: dict | None = None  # what the manifest records of modules.json and its configs


class _GraphModule(torch.nn.Module):
    """The encoder with a fixed, traceable signature for one graph."""

    def __init__(self, encoder: Encoder, with_attention: bool):
        super().__init__()
        self.encoder = encoder
        self.with_attention = with_attention

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.encoder(input_ids, attention_mask, return_attention=self.with_attention)


def trace_to_onnx(encoder: Encoder, path: Path, with_attention: bool) -> None:
    # batch 2 and sequence 8 with a padded row: dims of 0 or 1 would be specialised away
    input_ids = torch.randint(1, encoder.config.vocab_size, (2, 8))
    attention_mask = torch.ones(2, 8, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    outputs = [HIDDEN_STATES] + ([ATTENTION_PROBS] if with_attention else [])
    dynamic_axes = {
        INPUT_IDS: {0: "batch", 1: "sequence"},
        ATTENTION_MASK: {0: "batch", 1: "sequence"},
        HIDDEN_STATES: {0: "batch", 1: "sequence"},
    }
    if with_attention:
        dynamic_axes[ATTENTION_PROBS] = {0: "batch", 3: "sequence", 4: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            _GraphModule(encoder.eval(), with_attention),
            (input_ids, attention_mask),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_IDS, ATTENTION_MASK],
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    for graph_input in model.graph.input:
        dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        if dims != ["batch", "sequence"]:
            raise ModelError(f"{path}: input {graph_input.name} has shape {dims}, expected dynamic [batch, sequence]")


def optimize(raw: Path, out: Path, encoder: Encoder, fuse_attention: bool):
    """Apply onnxruntime's BERT optimizer; returns the optimized model and its fusion counts."""
    options = FusionOptions("bert")
    options.enable_attention = fuse_attention
    config = encoder.config
    model = optimizer.optimize_model(
        str(raw),
        model_type="bert",
        num_heads=config.n_heads,
        hidden_size=config.d_model,
        optimization_options=options,
        opt_level=0,  # graph rewrites only; the session applies hardware-specific ones at load
    )
    fusions = {op: int(n) for op, n in model.get_fused_operator_statistics().items() if n}
    fused = fusions.get("Attention", 0) + fusions.get("MultiHeadAttention", 0)
    # onnxruntime's BERT attention fusion has no pattern for a relative position bias added to
    # the scores (MPNet): those layers stay unfused, LayerNorm and GELU still fuse
    expected = (0,) if config.relative_attention_buckets else (config.n_layers,)
    if fuse_attention and fused not in expected:
        raise ModelError(
            f"attention fusion matched {fused} of {config.n_layers} layers (expected {expected[0]}); "
            "the exported graph no longer has the pattern onnxruntime's optimizer expects"
        )
    if fuse_attention and fused == 0:
        fusions["Attention"] = 0  # said in the manifest: this fast graph computes attention unfused
    model.save_model_to_file(str(out))
    return model, fusions


CALIBRATION_SENTENCES = 512  # sts-train sentences int8's choice is measured on (the gate reads dev and test)


def calibration_sentences() -> list[str]:
    return unique_sentences(read_sts(sts_dir() / "sts-train.csv"))[:CALIBRATION_SENTENCES]


def write_dense(layers: tuple[DenseLayer, ...], work: Path) -> tuple[DenseSpec, ...]:
    """Each Dense layer's weight and bias as float32 .npy files: NAME.weight.npy, NAME.bias.npy."""
    specs = []
    for layer in layers:
        weight = f"{layer.name}.weight.npy"
        np.save(work / weight, np.ascontiguousarray(layer.dense.weight, dtype=np.float32), allow_pickle=False)
        bias = None
        if layer.dense.bias is not None:
            bias = f"{layer.name}.bias.npy"
            np.save(work / bias, np.ascontiguousarray(layer.dense.bias, dtype=np.float32), allow_pickle=False)
        specs.append(DenseSpec(weight, bias, layer.dense.activation, layer.dense.in_features, layer.dense.out_features))
    return tuple(specs)


def export_artifact(encoder: Encoder, tokenizer_json: Path, out_dir: Path, options: ExportOptions) -> Manifest:
    """Write every graph into a scratch directory, gate int8, then move it into place whole."""
    from model.evaluate import int8_gate  # evaluation imports export's helpers too

    out_dir = Path(out_dir)
    started = time.monotonic()
    config = encoder.config
    if options.max_len > config.max_tokens:
        raise ModelError(f"max_len {options.max_len} exceeds the {config.max_tokens} tokens the positions cover")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        tokenizer = load_tokenizer(tokenizer_json, options.max_len)
        if options.do_lower_case:  # in tokenizer.json, so the server needs to know nothing of it
            tokenizer = lower_case_first(tokenizer)
        tokenizer.save(str(work / TOKENIZER_FILE))
        dense = write_dense(options.dense, work)
        raw = work / "raw"
        raw.mkdir()

        trace_to_onnx(encoder, raw / "fast.onnx", with_attention=False)
        fast_model, fast_fusions = optimize(raw / "fast.onnx", work / GRAPH_FILES[FAST], encoder, fuse_attention=True)
        log.info("fast graph fusions: %s", fast_fusions)

        trace_to_onnx(encoder, raw / "attention.onnx", with_attention=True)
        _, attention_fusions = optimize(
            raw / "attention.onnx", work / GRAPH_FILES[ATTENTION], encoder, fuse_attention=False
        )
        log.info("attention graph fusions: %s", attention_fusions)

        fast_model.convert_float_to_float16(keep_io_types=True)
        fast_model.save_model_to_file(str(work / GRAPH_FILES[FAST_FP16]))
        onnx.checker.check_model(str(work / GRAPH_FILES[FAST_FP16]), full_check=True)

        io = ((INPUT_IDS, ATTENTION_MASK), (HIDDEN_STATES,))
        graphs = {
            FAST: GraphSpec(GRAPH_FILES[FAST], "fp32", *io, fusions=fast_fusions),
            ATTENTION: GraphSpec(
                GRAPH_FILES[ATTENTION], "fp32", io[0], (HIDDEN_STATES, ATTENTION_PROBS), fusions=attention_fusions
            ),
            FAST_FP16: GraphSpec(GRAPH_FILES[FAST_FP16], "fp16", *io, fusions=fast_fusions),
        }
        quality: dict = {}
        needed = [sts_dir() / f"sts-{split}.csv" for split in ("train", "dev", "test")]
        if options.int8 and not all(path.is_file() for path in needed):
            log.warning("int8 graph left out: its quality gate needs the STS Benchmark (set STSB_DIR)")
            quality["int8_gate"] = {"passed": False, "skipped": f"no STS Benchmark at {sts_dir()}"}
        elif options.int8:
            head = (options.pooling, tuple(layer.dense for layer in options.dense))
            fast, int8 = work / GRAPH_FILES[FAST], work / GRAPH_FILES[FAST_INT8]
            choice = choose_int8(fast, int8, tokenizer, calibration_sentences(), *head)
            if choice.holds:
                gate = int8_gate(fast, int8, work / TOKENIZER_FILE, *head)
            else:  # the gate's own bounds already missed on calibration text: no point measuring dev and test
                gate = {"passed": False, "reason": "cosine to fp32 below the gate's bounds on calibration sentences"}
            gate["quantization"] = choice.to_dict()
            quality["int8_gate"] = gate
            if gate["passed"]:
                graphs[FAST_INT8] = GraphSpec(GRAPH_FILES[FAST_INT8], "int8", *io)
            else:
                log.warning("int8 graph left out: it failed its quality gate %s", gate)
                (work / GRAPH_FILES[FAST_INT8]).unlink()
        shutil.rmtree(raw)

        files = {p.name: sha256_of(p) for p in sorted(work.iterdir()) if p.name != MANIFEST_FILE}
        manifest = Manifest(
            name=options.name,
            version=options.version,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            max_len=options.max_len,
            vocab_size=config.vocab_size,
            pooling=options.pooling,
            normalize=options.normalize,
            opset=OPSET,
            graphs=graphs,
            files=files,
            provenance={
                **(options.provenance or {}),
                "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "export_seconds": round(time.monotonic() - started, 1),
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "python": platform.python_version(),
            },
            quality=quality,
            encoder_config=config.to_dict(),
            dense=dense,
            prompts=dict(options.prompts or {}),
            default_prompt_name=options.default_prompt_name,
            matryoshka_dims=tuple(options.matryoshka_dims),
            sentence_transformers=dict(options.sentence_transformers or {}),
        )
        manifest.check_consistency(work / MANIFEST_FILE)
        (work / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
        work.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
        return manifest
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
