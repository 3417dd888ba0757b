"""int8 for the CPU: measure where quantization loses accuracy, keep those nodes in fp32, quantize the rest.

onnxruntime's dynamic quantizer turns each MatMul with a constant weight into an integer
MatMul: the weight int8 per output channel, the activation uint8 with one scale for the whole
tensor, computed at run time. One scale per tensor is what breaks on a model whose activations
carry a few outlier channels hundreds of times larger than the rest: every other channel is
left with a handful of levels. `matmul_errors` measures that for each node, on real
sentences, by quantizing its fp32 input and weight as the quantizer would; `layer_drift`
compares the fp32 and int8 graphs' hidden states layer by layer. `choose_int8` quantizes
every weight MatMul, and when the embeddings drift from fp32 beyond the gate's bounds on
the calibration sentences, keeps the worst nodes in fp32 until they hold. The quality gate
(model/evaluate.py int8_gate) then decides, unchanged, whether the graph is shipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer

from artifact.manifest import ATTENTION_MASK, INPUT_IDS
from artifact.pooling import Dense, pad_batch, pool

log = logging.getLogger(__name__)

QUANTIZED_OPS = ["MatMul", "Attention"]
# the gate's bounds on cosine to fp32 (model/evaluate.py int8_gate), aimed at on calibration text
COSINE_MEAN, COSINE_P01 = 0.99, 0.98
MAX_EXCLUDED_SHARE = 0.5  # past half the MatMuls in fp32, int8 buys too little to be worth shipping


@dataclass(frozen=True)
class MatMulError:
    """One weight MatMul's output error when only it is quantized, relative to its fp32 output."""

    node: str
    error: float  # ||Y_int8 - Y|| / ||Y||, activation and weight both quantized
    activation_error: float  # the activation alone quantized (uint8, one scale per tensor)
    weight_error: float  # the weight alone quantized (int8 per output channel)
    outlier_ratio: float  # the input's max |x| over its 99.9th percentile |x|
    channel_error: float = 0.0  # the mean over output channels of each channel's relative error


@dataclass(frozen=True)
class Int8Choice:
    """What choose_int8 quantized, and how close the result stayed to fp32 on calibration text."""

    excluded: tuple[str, ...]  # MatMul nodes kept in fp32, worst first
    quantized: int  # weight MatMuls (and fused Attention nodes) quantized
    cosine_mean: float
    cosine_p01: float

    @property
    def holds(self) -> bool:
        return self.cosine_mean >= COSINE_MEAN and self.cosine_p01 >= COSINE_P01

    def to_dict(self) -> dict:
        return {
            "method": "dynamic, weights int8 per channel (reduce_range), activations uint8 per tensor",
            "quantized_nodes": self.quantized,
            "fp32_nodes": list(self.excluded),
            "calibration_cosine_mean": round(self.cosine_mean, 5),
            "calibration_cosine_p01": round(self.cosine_p01, 5),
        }


def quantize_int8(fast: Path, out: Path, exclude: tuple[str, ...] = ()) -> None:
    """Dynamic int8 for the CPU. Per-channel weights with reduce_range (safe without VNNI)."""
    quantize_dynamic(
        str(fast),
        str(out),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=QUANTIZED_OPS,
        nodes_to_exclude=list(exclude),
        # fused com.microsoft ops defeat ONNX shape inference; their tensors are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The MatMuls the quantizer turns into integer ones: those whose B is a constant weight."""
    constants = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def fused_attention_count(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type == "Attention")


def token_batches(tokenizer: Tokenizer, sentences: list[str], batch_size: int = 32) -> list[tuple]:
    """(input_ids, attention_mask) batches of length-sorted sentences, as the server batches them."""
    ids = sorted((e.ids for e in tokenizer.encode_batch(sentences)), key=len)
    return [pad_batch(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    """The model with intermediate tensors added as graph outputs, serialized for a session."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy.SerializeToString()


def session(model: bytes | Path, threads: int = 0) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, ["CPUExecutionProvider"])


def quantize_activation(x: np.ndarray) -> np.ndarray:
    """onnxruntime's DynamicQuantizeLinear and back: uint8, one scale and zero point per tensor, 0 exact."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero_point = np.clip(np.round(-low / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


def quantize_weight(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel (the columns of B) with reduce_range: [-64, 64], and back."""
    scale = np.abs(w).max(axis=0, keepdims=True) / 64.0
    scale[scale == 0] = 1.0
    return np.clip(np.round(w / scale), -64, 64) * scale


def relative_error(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / max(np.linalg.norm(exact), 1e-12))


def matmul_errors(graph: Path, batches: list[tuple]) -> list[MatMulError]:
    """Each weight MatMul's error when it alone is quantized, on its real fp32 inputs; worst first.

    Worst by the mean per-channel error: the next LayerNorm weighs every channel alike, so a node
    whose few large channels stay exact while the rest turn to noise is bad even though its
    overall relative error is small."""
    model = onnx.load(str(graph))
    nodes = weight_matmuls(model)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    inputs = [n.input[0] for n in nodes]
    run = session(with_outputs(model, inputs))
    names = [o.name for o in run.get_outputs()]
    sums = {n.name: np.zeros(4) for n in nodes}  # squared norms: diff both, diff act, diff weight, exact
    channels = {n.name: np.zeros((2, weights[n.input[1]].shape[1])) for n in nodes}  # per channel: diff, exact
    outliers = {n.name: 0.0 for n in nodes}
    for input_ids, attention_mask in batches:
        values = dict(zip(names, run.run(None, {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}), strict=True))
        for node in nodes:
            x = values[node.input[0]].reshape(-1, values[node.input[0]].shape[-1])
            w = weights[node.input[1]]
            exact, xq, wq = x @ w, quantize_activation(x), quantize_weight(w)
            sums[node.name] += [
                np.sum((xq @ wq - exact) ** 2),
                np.sum((xq @ w - exact) ** 2),
                np.sum((x @ wq - exact) ** 2),
                np.sum(exact**2),
            ]
            channels[node.name] += [np.sum((xq @ wq - exact) ** 2, axis=0), np.sum(exact**2, axis=0)]
            magnitude = np.abs(x)
            ratio = float(magnitude.max() / max(np.percentile(magnitude, 99.9), 1e-12))
            outliers[node.name] = max(outliers[node.name], ratio)
    errors = [
        MatMulError(
            name,
            *(float(np.sqrt(s[i] / s[3])) for i in range(3)),
            outlier_ratio=outliers[name],
            channel_error=float(np.mean(np.sqrt(channels[name][0] / np.maximum(channels[name][1], 1e-12)))),
        )
        for name, s in sums.items()
    ]
    return sorted(errors, key=lambda e: e.channel_error, reverse=True)


def layer_outputs(model: onnx.ModelProto) -> list[str]:
    """The tensors that carry the hidden states between sub-layers: each (Skip)LayerNormalization's output."""
    return [n.output[0] for n in model.graph.node if n.op_type in ("SkipLayerNormalization", "LayerNormalization")]


def layer_drift(fp32_graph: Path, int8_graph: Path, batches: list[tuple]) -> list[tuple[str, float, float]]:
    """(tensor, mean cosine, min cosine) of the int8 graph's hidden states to fp32's, per real token,
    for every normalisation output in graph order: where the error enters and how it grows."""
    fp32_model, int8_model = onnx.load(str(fp32_graph)), onnx.load(str(int8_graph))
    names = [n for n in layer_outputs(fp32_model) if n in set(layer_outputs(int8_model))]
    runs = [session(with_outputs(m, names)) for m in (fp32_model, int8_model)]
    cosines: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for input_ids, attention_mask in batches:
        feeds = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        outputs = []
        for run in runs:
            got = dict(zip([o.name for o in run.get_outputs()], run.run(None, feeds), strict=True))
            outputs.append(got)
        real = attention_mask.reshape(-1).astype(bool)
        for name in names:
            a = outputs[0][name].reshape(-1, outputs[0][name].shape[-1])[real]
            b = outputs[1][name].reshape(-1, outputs[1][name].shape[-1])[real]
            cos = np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
            cosines[name].append(cos)
    return [(n, float(np.concatenate(c).mean()), float(np.concatenate(c).min())) for n, c in cosines.items()]


def embeddings(run: ort.InferenceSession, batches: list[tuple], pooling: str, dense: tuple[Dense, ...]) -> np.ndarray:
    pooled = []
    for input_ids, attention_mask in batches:
        hidden = run.run(None, {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask})[0]
        pooled.append(pool(hidden, attention_mask.sum(1), pooling, True, dense))
    return np.concatenate(pooled)


def cosine_figures(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Mean and 1st percentile of the row-wise cosine (both sides are L2-normalised)."""
    cos = np.sum(reference * candidate, axis=1)
    return float(cos.mean()), float(np.percentile(cos, 1))


def choose_int8(
    fast: Path,
    out: Path,
    tokenizer: Tokenizer,
    calibration: list[str],
    pooling: str = "mean",
    dense: tuple[Dense, ...] = (),
    step: int = 2,
) -> Int8Choice:
    """Quantize every weight MatMul; while the embeddings of the calibration sentences drift past the
    gate's cosine bounds, keep the `step` worst nodes (by matmul_errors) more in fp32.

    Writes the last graph tried to `out` and says whether it held; the gate decides the rest.
    """
    batches = token_batches(tokenizer, calibration)
    model = onnx.load(str(fast), load_external_data=False)
    matmuls, attention = len(weight_matmuls(model)), fused_attention_count(model)
    reference = embeddings(session(fast), batches, pooling, dense)
    excluded: tuple[str, ...] = ()
    ranking: list[MatMulError] | None = None
    while True:
        quantize_int8(fast, out, excluded)
        mean, p01 = cosine_figures(reference, embeddings(session(out), batches, pooling, dense))
        choice = Int8Choice(excluded, matmuls - len(excluded) + attention, mean, p01)
        log.info("int8 with %d of %d MatMuls in fp32: calibration cosine mean %.5f, 1st percentile %.5f",
                 len(excluded), matmuls, mean, p01)  # fmt: skip
        if choice.holds or len(excluded) + step > MAX_EXCLUDED_SHARE * matmuls:
            return choice
        if ranking is None:
            ranking = matmul_errors(fast, batches[:: max(1, len(batches) // 8)])
            for e in ranking[:8]:
                log.info("  %s: channel error %.4f, error %.4f (activation %.4f, weight %.4f), max |x| / p99.9 %.1f",
                         e.node, e.channel_error, e.error, e.activation_error, e.weight_error,
                         e.outlier_ratio)  # fmt: skip
        excluded = tuple(e.node for e in ranking[: len(excluded) + step])
