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
server applies in numpy; an embedder's graphs always output the encoder's own token embeddings.

A cross-encoder (model/cross_encoder.py) is written as manifest format 3: the same four graphs
take input_ids, attention_mask and token_type_ids and output raw `logits` (batch, num_labels);
the attention graph also outputs the attention probabilities. The manifest says the task, the
labels and the activation CrossEncoder.predict applies; int8 has its own gate (scores, not
vectors).
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
    CLASSIFY,
    CROSS_ENCODER_FORMAT,
    FAST,
    FAST_FP16,
    FAST_INT8,
    HIDDEN_STATES,
    INPUT_IDS,
    LOGITS,
    MANIFEST_FILE,
    RERANK,
    TOKEN_TYPE_IDS,
    TOKENIZER_FILE,
    DenseSpec,
    GraphSpec,
    Manifest,
    sha256_of,
)
from model.config import EncoderConfig
from model.cross_encoder import CrossEncoder
from model.data import read_sts, sts_dir, unique_sentences
from model.encoder import Encoder
from model.errors import ModelError
from model.quantize import choose_int8, quantize_int8
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


class _PairGraphModule(torch.nn.Module):
    """A cross-encoder with the three-input signature of a pair graph."""

    def __init__(self, model: CrossEncoder, with_attention: bool):
        super().__init__()
        self.model = model
        self.with_attention = with_attention

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        return self.model(input_ids, attention_mask, token_type_ids, return_attention=self.with_attention)


def trace_to_onnx(model: Encoder | CrossEncoder, path: Path, with_attention: bool) -> None:
    pair = isinstance(model, CrossEncoder)
    # batch 2 and sequence 8 with a padded row: dims of 0 or 1 would be specialised away
    input_ids = torch.randint(1, model.config.vocab_size, (2, 8))
    attention_mask = torch.ones(2, 8, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    names = [INPUT_IDS, ATTENTION_MASK]
    args: tuple = (input_ids, attention_mask)
    inputs = list(names)  # what the graph takes
    if pair:
        token_type_ids = torch.zeros(2, 8, dtype=torch.int64)
        token_type_ids[0, 4:], token_type_ids[1, 3:5] = 1, 1
        args += (token_type_ids,)
        names.append(TOKEN_TYPE_IDS)
        if model.config.type_vocab_size:  # MPNet has no segments: the exporter drops the unused input
            inputs.append(TOKEN_TYPE_IDS)
        module: torch.nn.Module = _PairGraphModule(model.eval(), with_attention)
        first = LOGITS
        dynamic_axes = {LOGITS: {0: "batch"}}
    else:
        module = _GraphModule(model.eval(), with_attention)
        first = HIDDEN_STATES
        dynamic_axes = {HIDDEN_STATES: {0: "batch", 1: "sequence"}}
    outputs = [first] + ([ATTENTION_PROBS] if with_attention else [])
    dynamic_axes.update({name: {0: "batch", 1: "sequence"} for name in inputs})
    if with_attention:
        dynamic_axes[ATTENTION_PROBS] = {0: "batch", 3: "sequence", 4: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=outputs,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    onnx_model = onnx.load(str(path))
    names = [i.name for i in onnx_model.graph.input]
    if names != inputs:
        raise ModelError(f"{path}: inputs {names}, expected {inputs}")
    for graph_input in onnx_model.graph.input:
        dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        if dims != ["batch", "sequence"]:
            raise ModelError(f"{path}: input {graph_input.name} has shape {dims}, expected dynamic [batch, sequence]")


def optimize(raw: Path, out: Path, config: EncoderConfig, fuse_attention: bool):
    """Apply onnxruntime's BERT optimizer; returns the optimized model and its fusion counts."""
    options = FusionOptions("bert")
    options.enable_attention = fuse_attention
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


def write_graphs(
    model: Encoder | CrossEncoder, config: EncoderConfig, work: Path, inputs: tuple[str, ...], output: str
) -> dict[str, GraphSpec]:
    """The fast graph (attention fused), the attention graph (its probabilities as an output) and
    the fast graph in fp16, written to `work`; `output` is what the model answers (hidden states
    or logits)."""
    raw = work / "raw"
    raw.mkdir()
    trace_to_onnx(model, raw / "fast.onnx", with_attention=False)
    fast_model, fast_fusions = optimize(raw / "fast.onnx", work / GRAPH_FILES[FAST], config, fuse_attention=True)
    log.info("fast graph fusions: %s", fast_fusions)
    trace_to_onnx(model, raw / "attention.onnx", with_attention=True)
    _, attention_fusions = optimize(raw / "attention.onnx", work / GRAPH_FILES[ATTENTION], config, fuse_attention=False)
    log.info("attention graph fusions: %s", attention_fusions)
    fast_model.convert_float_to_float16(keep_io_types=True)
    fast_model.save_model_to_file(str(work / GRAPH_FILES[FAST_FP16]))
    onnx.checker.check_model(str(work / GRAPH_FILES[FAST_FP16]), full_check=True)
    shutil.rmtree(raw)
    return {
        FAST: GraphSpec(GRAPH_FILES[FAST], "fp32", inputs, (output,), fusions=fast_fusions),
        ATTENTION: GraphSpec(
            GRAPH_FILES[ATTENTION], "fp32", inputs, (output, ATTENTION_PROBS), fusions=attention_fusions
        ),
        FAST_FP16: GraphSpec(GRAPH_FILES[FAST_FP16], "fp16", inputs, (output,), fusions=fast_fusions),
    }


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
        graphs = write_graphs(encoder, config, work, (INPUT_IDS, ATTENTION_MASK), HIDDEN_STATES)
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
                graphs[FAST_INT8] = GraphSpec(GRAPH_FILES[FAST_INT8], "int8", graphs[FAST].inputs, graphs[FAST].outputs)
            else:
                log.warning("int8 graph left out: it failed its quality gate %s", gate)
                (work / GRAPH_FILES[FAST_INT8]).unlink()

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
            provenance=export_provenance(options, started),
            quality=quality,
            encoder_config=config.to_dict(),
            dense=dense,
            prompts=dict(options.prompts or {}),
            default_prompt_name=options.default_prompt_name,
            matryoshka_dims=tuple(options.matryoshka_dims),
            sentence_transformers=dict(options.sentence_transformers or {}),
        )
        return move_into_place(work, out_dir, manifest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def export_provenance(options: ExportOptions, started: float) -> dict:
    return {
        **(options.provenance or {}),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "export_seconds": round(time.monotonic() - started, 1),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def move_into_place(work: Path, out_dir: Path, manifest: Manifest) -> Manifest:
    manifest.check_consistency(work / MANIFEST_FILE)
    (work / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    work.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work.rename(out_dir)
    return manifest


def check_pair_tokenizer(tokenizer, config: EncoderConfig, source: Path) -> None:
    """The tokenizer's post-processor must build pairs: two segments, type ids 0 then 1 where the
    model has segment embeddings (transformers' `[CLS] a [SEP] b [SEP]`)."""
    single = tokenizer.encode("a", add_special_tokens=True)
    pair = tokenizer.encode("a", "b", add_special_tokens=True)
    plain = tokenizer.encode("a", add_special_tokens=False), tokenizer.encode("b", add_special_tokens=False)
    if tokenizer.post_processor is None or len(pair.ids) <= len(plain[0].ids) + len(plain[1].ids):
        raise ModelError(f"{source}: the tokenizer adds no special tokens around a pair; it has no pair post-processor")
    if len(pair.ids) <= len(single.ids):
        raise ModelError(f"{source}: the tokenizer does not put the second text of a pair in the sequence")
    if config.type_vocab_size > 1 and set(pair.type_ids) != {0, 1}:
        raise ModelError(f"{source}: the tokenizer gives pairs type ids {sorted(set(pair.type_ids))}, expected 0 and 1")
    if config.type_vocab_size and any(t >= config.type_vocab_size for t in pair.type_ids):
        raise ModelError(f"{source}: the tokenizer's type ids exceed the model's {config.type_vocab_size} segments")


def export_cross_encoder(model: CrossEncoder, tokenizer_json: Path, out_dir: Path, options: ExportOptions) -> Manifest:
    """A cross-encoder as a format-3 artifact: pair graphs with logits, its task, labels and activation."""
    from model.evaluate import cross_int8_gate  # evaluation imports export's helpers too

    out_dir = Path(out_dir)
    started = time.monotonic()
    config = model.config
    if options.max_len > config.max_tokens:
        raise ModelError(f"max_len {options.max_len} exceeds the {config.max_tokens} tokens the positions cover")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        tokenizer = load_tokenizer(tokenizer_json, options.max_len)
        if options.do_lower_case:
            tokenizer = lower_case_first(tokenizer)
        check_pair_tokenizer(tokenizer, config, tokenizer_json)
        tokenizer.save(str(work / TOKENIZER_FILE))
        # a model without segment embeddings (MPNet) has no use for token_type_ids: its graphs don't take them
        inputs = (INPUT_IDS, ATTENTION_MASK) + ((TOKEN_TYPE_IDS,) if config.type_vocab_size else ())
        graphs = write_graphs(model, config, work, inputs, LOGITS)
        quality: dict = {}
        labels, activation = model.info.labels, model.info.score_activation
        if options.int8 and not (sts_dir() / "sts-dev.csv").is_file():
            log.warning("int8 graph left out: its quality gate needs the STS Benchmark (set STSB_DIR)")
            quality["int8_gate"] = {"passed": False, "skipped": f"no STS Benchmark at {sts_dir()}"}
        elif options.int8:
            quantize_int8(work / GRAPH_FILES[FAST], work / GRAPH_FILES[FAST_INT8])
            gate = cross_int8_gate(
                work / GRAPH_FILES[FAST], work / GRAPH_FILES[FAST_INT8], work / TOKENIZER_FILE, len(labels), activation
            )
            quality["int8_gate"] = gate
            if gate["passed"]:
                graphs[FAST_INT8] = GraphSpec(GRAPH_FILES[FAST_INT8], "int8", graphs[FAST].inputs, graphs[FAST].outputs)
            else:
                log.warning("int8 graph left out: it failed its quality gate %s", gate)
                (work / GRAPH_FILES[FAST_INT8]).unlink()

        files = {p.name: sha256_of(p) for p in sorted(work.iterdir()) if p.name != MANIFEST_FILE}
        manifest = Manifest(
            name=options.name,
            version=options.version,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            max_len=options.max_len,
            vocab_size=config.vocab_size,
            pooling="cls",
            normalize=False,
            opset=OPSET,
            graphs=graphs,
            files=files,
            provenance=export_provenance(options, started),
            quality=quality,
            encoder_config=config.to_dict(),
            format_version=CROSS_ENCODER_FORMAT,
            sentence_transformers=dict(options.sentence_transformers or model.info.sentence_transformers or {}),
            task=RERANK if len(labels) == 1 else CLASSIFY,
            labels=tuple(labels),
            score_activation=activation,
        )
        return move_into_place(work, out_dir, manifest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
