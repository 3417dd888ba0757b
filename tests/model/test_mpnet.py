"""MPNet in the from-scratch encoder: a small MPNet with random weights, built here, loaded key by
key and checked against transformers' MPNetModel (eager attention): hidden states, attention
probabilities, the relative-position buckets and the RoBERTa-style position ids."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import MPNetConfig, MPNetModel
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

from model.config import EncoderConfig
from model.encoder import relative_position_bucket
from model.errors import ModelError
from model.weights import load_checkpoint

TINY_MPNET = {
    "vocab_size": 60,
    "hidden_size": 16,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 200,
    "relative_attention_num_buckets": 32,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[MPNetModel, object]:
    """transformers' MPNetModel with weights far from their init (so every term matters), saved."""
    torch.manual_seed(0)
    hf = MPNetModel(MPNetConfig(**TINY_MPNET, attn_implementation="eager"), add_pooling_layer=True).eval()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "LayerNorm" not in name:
                parameter.normal_(0.0, 0.3)
        hf.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)  # a bias that visibly moves attention
    directory = tmp_path_factory.mktemp("tiny-mpnet")
    hf.save_pretrained(directory, safe_serialization=True)
    return hf, directory


def batch(lengths: list[int], vocab: int = 60, pad_id: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (padding with MPNet's pad id, which transformers reads positions from)."""
    generator = torch.Generator().manual_seed(sum(lengths))
    T = max(lengths)
    ids = torch.full((len(lengths), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=generator)  # never the pad id
        mask[i, :n] = 1
    return ids, mask


def test_config_is_translated_as_mpnet(reference):
    _, directory = reference
    config = EncoderConfig.from_bert_config(directory / "config.json")
    assert config.relative_attention_buckets == 32 and config.relative_attention_max_distance == 128
    assert config.positions_after_pad and config.pad_token_id == 1 and config.type_vocab_size == 0
    assert config.layer_norm_eps == 1e-5 and config.max_tokens == 198


def test_buckets_equal_transformers_for_every_distance():
    distance = torch.arange(-700, 701)
    ours = relative_position_bucket(distance, 32, 128)
    theirs = MPNetEncoder.relative_position_bucket(distance, num_buckets=32, max_distance=128)
    assert torch.equal(ours, theirs)
    assert (ours[700], ours[699], ours[701]) == (0, 1, 17)  # keys after the query: the upper half
    assert set(ours.tolist()) == set(range(32)) - {16}  # the upper half has no distance 0


@pytest.mark.parametrize("lengths", [[5], [9, 3, 7], [150, 20], [197, 1]])
def test_hidden_states_and_attention_equal_transformers(reference, lengths):
    hf, directory = reference
    ours = load_checkpoint(directory)
    ids, mask = batch(lengths)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, output_attentions=True)
        hidden, probs = ours(ids, mask, return_attention=True)
    assert probs.shape == (len(lengths), 2, 4, max(lengths), max(lengths))
    for i, n in enumerate(lengths):  # padded query rows are nobody's answer
        torch.testing.assert_close(hidden[i, :n], expected.last_hidden_state[i, :n], atol=1e-4, rtol=0)
        for layer in range(2):
            torch.testing.assert_close(probs[i, layer, :, :n], expected.attentions[layer][i, :, :n], atol=1e-5, rtol=0)


def test_positions_come_from_the_mask_not_the_pad_id(reference):
    """The server pads with id 0 (MPNet's <s>); positions must still be read from the mask."""
    _, directory = reference
    ours = load_checkpoint(directory)
    ids, mask = batch([6, 4])
    zero_padded = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        torch.testing.assert_close(ours(zero_padded, mask)[1, :4], ours(ids, mask)[1, :4], atol=0, rtol=0)
        alone = ours(ids[1:, :4], mask[1:, :4])
        torch.testing.assert_close(ours(ids, mask)[1, :4], alone[0], atol=1e-6, rtol=0)


def test_relative_bias_changes_the_answer(reference):
    """Not a no-op: zeroing the shared bias table moves every layer's attention."""
    _, directory = reference
    ours = load_checkpoint(directory)
    ids, mask = batch([8])
    with torch.no_grad():
        _, before = ours(ids, mask, return_attention=True)
        ours.relative_position_bias.relative_attention_bias.weight.zero_()
        _, after = ours(ids, mask, return_attention=True)
    assert (before - after).abs().amax() > 1e-2


def test_loading_is_strict_key_by_key(reference, tmp_path):
    from safetensors.torch import load_file, save_file

    _, directory = reference
    tensors = load_file(str(directory / "model.safetensors"))
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())

    missing = {k: v for k, v in tensors.items() if k != "encoder.relative_attention_bias.weight"}
    save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match="missing tensor 'encoder.relative_attention_bias.weight'"):
        load_checkpoint(tmp_path)

    save_file({**tensors, "encoder.layer.0.attention.attn.extra": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match="unexpected tensor 'encoder.layer.0.attention.attn.extra'"):
        load_checkpoint(tmp_path)

    save_file({f"mpnet.{k}": v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    load_checkpoint(tmp_path)  # MPNetForMaskedLM's names: the "mpnet." prefix is dropped


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"relative_attention_num_buckets": 64}, "relative_attention_num_buckets 64"),
        ({"pad_token_id": 0}, "pad_token_id 0"),
        ({"hidden_act": "relu"}, "hidden_act 'relu'"),
    ],
)
def test_mpnet_configs_the_encoder_cannot_express_are_refused(tmp_path, change, says):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mpnet", **TINY_MPNET, **change}))
    with pytest.raises(ModelError, match=says):
        EncoderConfig.from_bert_config(tmp_path / "config.json")
