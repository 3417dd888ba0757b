"""Strict checkpoint loading: every tensor accounted for, errors name the tensor and the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.config import EncoderConfig
from model.encoder import Encoder
from model.errors import ModelError
from model.weights import bert_key_map, load_bert_checkpoint, load_checkpoint, load_native, save_native

TINY_BERT = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "vocab_size": 20,
    "hidden_size": 8,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 16,
    "max_position_embeddings": 32,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


def bert_tensors(encoder: Encoder) -> dict[str, torch.Tensor]:
    """The BERT checkpoint this encoder corresponds to (our fused W_qkv split back in three)."""
    state = encoder.state_dict()
    tensors = {}
    for ours, sources in bert_key_map(encoder.config).items():
        for source, part in zip(sources, state[ours].chunk(len(sources), dim=0), strict=True):
            tensors[source] = part.clone().contiguous()
    tensors["pooler.dense.weight"] = torch.zeros(8, 8)  # present in BERT checkpoints, unused here
    return tensors


def write_bert(directory: Path, tensors: dict, config: dict = TINY_BERT) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


@pytest.fixture
def tiny() -> Encoder:
    torch.manual_seed(0)
    return Encoder(EncoderConfig.from_bert_config_dict(TINY_BERT)).eval()


def test_bert_checkpoint_round_trips_exactly(tmp_path, tiny):
    loaded = load_bert_checkpoint(write_bert(tmp_path, bert_tensors(tiny)))
    ids, mask = torch.randint(0, 20, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), tiny(ids, mask), atol=0, rtol=0)


def test_missing_tensor_is_named(tmp_path, tiny):
    tensors = bert_tensors(tiny)
    del tensors["encoder.layer.1.attention.self.key.weight"]
    with pytest.raises(
        ModelError, match=r"model.safetensors: missing tensor 'encoder.layer.1.attention.self.key.weight'"
    ):
        load_bert_checkpoint(write_bert(tmp_path, tensors))


def test_unexpected_tensor_is_named(tmp_path, tiny):
    tensors = {**bert_tensors(tiny), "encoder.layer.7.output.dense.weight": torch.zeros(8, 16)}
    with pytest.raises(ModelError, match="unexpected tensor 'encoder.layer.7.output.dense.weight'"):
        load_bert_checkpoint(write_bert(tmp_path, tensors))


def test_misshaped_tensor_is_named_with_both_shapes(tmp_path, tiny):
    tensors = bert_tensors(tiny)
    tensors["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(17, 8)
    with pytest.raises(ModelError, match=r"intermediate.dense.weight \(17, 8\) does not fit .*W_1.weight \(16, 8\)"):
        load_bert_checkpoint(write_bert(tmp_path, tensors))


def test_corrupt_weights_file_is_reported(tmp_path, tiny):
    directory = write_bert(tmp_path, bert_tensors(tiny))
    (directory / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="model.safetensors: not a readable safetensors file"):
        load_bert_checkpoint(directory)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_size": 9}, "divisible"),
    ],
)
def test_config_the_encoder_cannot_express_is_refused(tmp_path, tiny, change, says):
    directory = write_bert(tmp_path, bert_tensors(tiny), {**TINY_BERT, **change})
    with pytest.raises(ModelError, match=says):
        load_bert_checkpoint(directory)


def test_native_checkpoint_round_trips_and_is_strict(tmp_path, tiny):
    save_native(tiny, tmp_path / "native")
    torch.testing.assert_close(load_checkpoint(tmp_path / "native").state_dict(), tiny.state_dict())
    config = json.loads((tmp_path / "native" / "encoder.json").read_text())
    (tmp_path / "native" / "encoder.json").write_text(json.dumps({**config, "n_layers": 3}))
    with pytest.raises(ModelError, match="missing tensor 'layers.2"):
        load_native(tmp_path / "native")


def test_missing_checkpoint_directory_is_reported(tmp_path):
    with pytest.raises(ModelError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nope")
