"""The int8 choice on a small real model (two of all-MiniLM-L6-v2's layers): clean, it is quantized
whole and passes its gate; with an outlier channel planted in one FFN's hidden activations, the
per-node measurement finds that FFN's down-projection, keeps it in fp32 and the gate passes; with
outliers in more MatMuls than may stay fp32, the export leaves int8 out and says why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from artifact.manifest import FAST, FAST_INT8
from model.data import sts_dir
from model.encoder import Encoder
from model.evaluate import int8_gate
from model.export import ExportOptions, calibration_sentences, export_artifact, optimize, trace_to_onnx
from model.quantize import choose_int8, layer_drift, matmul_errors, quantize_int8, token_batches
from model.tokenizer import load_tokenizer
from model.train.student import student_of
from model.weights import default_checkpoint_dir, load_checkpoint

pytestmark = pytest.mark.skipif(
    not (sts_dir() / "sts-train.csv").is_file(), reason=f"the int8 gate needs the STS Benchmark at {sts_dir()}"
)
MAX_LEN = 128
OUTLIER = 60.0  # the planted channel's scale: far past what one uint8 scale per tensor can share


@pytest.fixture(scope="module")
def teacher() -> Encoder:
    return load_checkpoint(default_checkpoint_dir())


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(default_checkpoint_dir() / "tokenizer.json", MAX_LEN)


def small_model(teacher: Encoder, ffn_outliers=(), attention_outliers=()) -> Encoder:
    """Layers 0 and 5 of MiniLM; an outlier planted in a layer scales one hidden channel up by OUTLIER
    and the weights reading it down by as much, so the fp32 function barely changes."""
    model = student_of(teacher, [0, 5]).eval()
    C = model.config.d_model
    with torch.no_grad():
        for i in ffn_outliers:  # channel 0 of GELU(x W_1 + b_1), read by W_2
            ffn = model.layers[i].feed_forward
            ffn.W_1.weight[0] *= OUTLIER
            ffn.W_1.bias[0] = ffn.W_1.bias[0] * OUTLIER + OUTLIER
            ffn.W_2.weight[:, 0] /= OUTLIER
        for i in attention_outliers:  # channel 0 of the values, read by W_O
            attention = model.layers[i].attention
            attention.W_qkv.weight[2 * C] *= OUTLIER
            attention.W_qkv.bias[2 * C] *= OUTLIER
            attention.W_O.weight[:, 0] /= OUTLIER
    return model


def fast_graph(model: Encoder, directory: Path) -> Path:
    trace_to_onnx(model, directory / "raw.onnx", with_attention=False)
    optimize(directory / "raw.onnx", directory / "fast.onnx", model.config, fuse_attention=True)
    return directory / "fast.onnx"


def test_a_clean_small_model_is_quantized_whole_and_passes_its_gate(teacher, tokenizer, tmp_path):
    fast = fast_graph(small_model(teacher), tmp_path)
    choice = choose_int8(fast, tmp_path / "int8.onnx", tokenizer, calibration_sentences())
    assert choice.holds and choice.excluded == ()
    assert choice.quantized == 6 + 2  # W_O, W_1, W_2 of both layers, and both fused Attention nodes
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert int8_gate(fast, tmp_path / "int8.onnx", tmp_path / "tokenizer.json")["passed"]


def test_the_outlier_ffn_is_found_kept_in_fp32_and_the_gate_passes(teacher, tokenizer, tmp_path):
    fast = fast_graph(small_model(teacher, ffn_outliers=[1]), tmp_path)
    batches = token_batches(tokenizer, calibration_sentences()[:64])

    errors = matmul_errors(fast, batches)
    assert errors[0].node == "/encoder/layers.1/feed_forward/W_2/MatMul"
    assert errors[0].outlier_ratio > 20 and errors[0].channel_error > 2 * errors[1].channel_error
    assert errors[0].activation_error > errors[0].weight_error  # the input's one scale, not the weights

    quantize_int8(fast, tmp_path / "whole.onnx")
    drift = dict((name, mean) for name, mean, _ in layer_drift(fast, tmp_path / "whole.onnx", batches))
    assert drift["last_hidden_state"] < 0.98  # layer 1's FFN output, after its LayerNorm: the error enters here
    assert drift["/encoder/layers.1/attention_norm/LayerNormalization_output_0"] > 0.99  # and not before

    choice = choose_int8(fast, tmp_path / "int8.onnx", tokenizer, calibration_sentences())
    assert choice.holds and choice.excluded[0] == "/encoder/layers.1/feed_forward/W_2/MatMul"
    assert len(choice.excluded) <= 2
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    gate = int8_gate(fast, tmp_path / "int8.onnx", tmp_path / "tokenizer.json")
    assert gate["passed"], gate


def test_outliers_in_too_many_matmuls_leave_int8_out_of_the_artifact(teacher, tmp_path):
    model = small_model(teacher, ffn_outliers=[0, 1], attention_outliers=[0, 1])
    options = ExportOptions(name="outliers", max_len=MAX_LEN)
    manifest = export_artifact(model, default_checkpoint_dir() / "tokenizer.json", tmp_path / "artifact", options)
    assert FAST in manifest.graphs and FAST_INT8 not in manifest.graphs
    assert not (tmp_path / "artifact" / "fast.int8.onnx").exists()
    gate = manifest.quality["int8_gate"]
    assert gate["passed"] is False
    assert len(gate["quantization"]["fp32_nodes"]) == 2  # half the six MatMuls may stay fp32: two, then four
    assert gate["quantization"]["calibration_cosine_mean"] < 0.99


def test_the_simulated_quantizers_round_trip_exactly_representable_values():
    from model.quantize import quantize_activation, quantize_weight

    x = np.array([[0.0, 1.0, -1.0, 2.0]], dtype=np.float32)
    assert quantize_activation(x)[0, 0] == 0.0  # zero stays exact (padding, ReLU zeros)
    w = np.array([[64.0, -1.0], [-32.0, 1.0]], dtype=np.float32)  # column scales 1 and 1/64
    np.testing.assert_allclose(quantize_weight(w), w)
