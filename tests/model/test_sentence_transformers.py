"""A sentence-transformers directory read as sentence-transformers reads it, and its head (pooling,
Dense, Normalize) computed in numpy as sentence-transformers' own modules compute it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers.base.modules.dense import Dense as STDense
from sentence_transformers.sentence_transformer.modules.pooling import Pooling

from artifact.manifest import Artifact, ArtifactError, Manifest
from artifact.pooling import POOLING_MODES, Dense, pool, pool_mode
from model.errors import ModelError
from model.sentence_transformers import read_sentence_transformer
from tests.support.sentence_transformers import MODULES, WORDS, write_st, write_tiny_mpnet_st


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_each_pooling_mode_equals_sentence_transformers(mode):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 7, 6, generator=generator)
    lengths = np.array([7, 3, 1, 5])
    mask = torch.from_numpy((np.arange(7)[None, :] < lengths[:, None]).astype(np.int64))
    expected = Pooling(6, pooling_mode=mode)({"token_embeddings": hidden, "attention_mask": mask})
    ours = pool_mode(hidden.numpy(), lengths, mode)
    np.testing.assert_allclose(ours, expected["sentence_embedding"].numpy(), atol=1e-6, rtol=0)


def test_pooling_ignores_what_padding_holds():
    hidden = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
    lengths = np.array([5, 2])
    changed = hidden.copy()
    changed[1, 2:] = 1e6  # padded positions
    for mode in POOLING_MODES:
        np.testing.assert_array_equal(pool_mode(hidden, lengths, mode)[1], pool_mode(changed, lengths, mode)[1])


@pytest.mark.parametrize(
    ("activation", "ours"), [("Tanh", "tanh"), ("Identity", "identity"), ("ReLU", "relu"), ("Sigmoid", "sigmoid")]
)
def test_dense_equals_sentence_transformers(tmp_path, activation, ours):
    torch.manual_seed(0)
    st = STDense(6, 3, activation_function=getattr(torch.nn, activation)())
    (tmp_path / "2_Dense").mkdir()
    st.save(str(tmp_path / "2_Dense"))
    directory = write_st(tmp_path, pooling={"pooling_mode": "max"}, modules=MODULES[:3])
    config = read_sentence_transformer(directory)
    assert config.pooling == "max" and not config.normalize and config.modules == ("Transformer", "Pooling", "Dense")
    (layer,) = config.dense
    assert layer.dense.activation == ours and layer.name == "2_Dense"
    x = torch.randn(5, 6)
    with torch.no_grad():
        expected = st({"sentence_embedding": x})["sentence_embedding"].numpy()
    np.testing.assert_allclose(layer.dense(x.numpy()), expected, atol=1e-6, rtol=0)


def test_the_mpnet_layout_reads_with_its_missing_normalize_folder(tmp_path):
    directory = write_st(
        tmp_path,
        **{
            "sentence_bert_config.json": {"max_seq_length": 384, "do_lower_case": True},
            "config_sentence_transformers.json": {
                "prompts": {"query": "query: ", "passage": "passage: "},
                "default_prompt_name": "query",
                "similarity_fn_name": "cosine",
            },
        },
    )
    assert not (directory / "3_Normalize").exists()
    config = read_sentence_transformer(directory)
    assert (config.pooling, config.normalize, config.dense) == ("mean", True, ())
    assert (config.max_seq_length, config.do_lower_case) == (384, True)
    assert config.prompts == {"query": "query: ", "passage": "passage: "} and config.default_prompt_name == "query"
    assert config.summary()["modules"] == ["Transformer", "Pooling", "Normalize"]


def test_legacy_pooling_keys_read_as_sentence_transformers_reads_them(tmp_path):
    for key, mode in [("pooling_mode_cls_token", "cls"), ("pooling_mode_lasttoken", "lasttoken")]:
        write_st(tmp_path, pooling={"word_embedding_dimension": 6, key: True, "pooling_mode_mean_tokens": False})
        assert read_sentence_transformer(tmp_path).pooling == mode
    write_st(tmp_path, pooling={"word_embedding_dimension": 6, "pooling_mode_mean_tokens": False})
    assert read_sentence_transformer(tmp_path).pooling == "mean"  # sentence-transformers' default, not CLS


@pytest.mark.parametrize(
    ("pooling", "modules", "says"),
    [
        ({"pooling_mode": "median"}, None, "pooling mode 'median' is not supported"),
        ({"pooling_mode_median_tokens": True}, None, "pooling key 'pooling_mode_median_tokens'"),
        ({"pooling_mode": ["cls", "mean"]}, None, r"several pooling modes at once \(cls, mean\)"),
        ({"pooling_mode": "mean", "include_prompt": False}, None, "include_prompt false"),
        (
            None,
            [*MODULES[:2], {"idx": 2, "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}],
            "module type 'sentence_transformers.models.LayerNorm' is not supported",
        ),
        (None, [MODULES[0]], "exactly one Pooling module"),
        (None, [MODULES[0], {"idx": 1, "type": MODULES[1]["type"]}], r"the Pooling module \(idx 1\) names no folder"),
        (None, [{**MODULES[1], "idx": 0}, {**MODULES[0], "idx": 1}], "first module must be a Transformer"),
    ],
)
def test_what_cannot_be_reproduced_is_refused_by_name(tmp_path, pooling, modules, says):
    write_st(tmp_path, pooling=pooling, modules=modules)
    with pytest.raises(ModelError, match=says):
        read_sentence_transformer(tmp_path)


def test_an_unknown_dense_activation_is_refused(tmp_path):
    (tmp_path / "2_Dense").mkdir()
    STDense(6, 3, activation_function=torch.nn.GELU()).save(str(tmp_path / "2_Dense"))
    write_st(tmp_path, modules=MODULES[:3])
    with pytest.raises(ModelError, match="activation_function 'torch.nn.modules.activation.GELU' is not supported"):
        read_sentence_transformer(tmp_path)


def test_no_modules_json_is_not_a_sentence_transformer(tmp_path):
    assert read_sentence_transformer(tmp_path) is None


def test_pool_applies_dense_then_normalises():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(3, 4, 6)).astype(np.float32)
    lengths = np.array([4, 2, 3])
    layer = Dense(rng.normal(size=(2, 6)).astype(np.float32), rng.normal(size=2).astype(np.float32), "tanh")
    out = pool(hidden, lengths, "weightedmean", True, (layer,))
    expected = np.tanh(pool_mode(hidden, lengths, "weightedmean") @ layer.weight.T + layer.bias)
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)


V1_MANIFEST = {
    "format_version": 1,
    "name": "m",
    "version": "1",
    "d_model": 4,
    "n_layers": 1,
    "n_heads": 2,
    "max_len": 8,
    "vocab_size": 10,
    "pooling": "mean",
    "normalize": True,
    "opset": 17,
    "graphs": {
        "fast": {"file": "fast.onnx", "precision": "fp32", "inputs": ["input_ids"], "outputs": ["h"]},
        "attention": {"file": "attention.onnx", "precision": "fp32", "inputs": ["input_ids"], "outputs": ["h"]},
    },
    "files": {"fast.onnx": "0", "attention.onnx": "0", "tokenizer.json": "0"},
}


def test_format_1_manifests_still_read_with_their_meaning():
    manifest = Manifest.from_dict(V1_MANIFEST, Path("manifest.json"))
    assert (manifest.format_version, manifest.embedding_dim, manifest.dense, manifest.prompts) == (1, 4, (), {})
    with pytest.raises(ArtifactError, match="pooling 'max' must be one of mean, cls"):
        Manifest.from_dict({**V1_MANIFEST, "pooling": "max"}, Path("manifest.json"))


def test_format_2_round_trips_with_dense_layers_checked(tmp_path):
    weight = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "2_Dense.weight.npy", weight)
    dense = {"weight": "2_Dense.weight.npy", "bias": None, "activation": "identity"}
    dense.update(in_features=4, out_features=2)
    raw = {
        **V1_MANIFEST,
        "format_version": 2,
        "pooling": "lasttoken",
        "files": {**V1_MANIFEST["files"], "2_Dense.weight.npy": "0"},
        "embedding_dim": 2,
        "dense": [dense],
        "prompts": {"query": "query: "},
        "default_prompt_name": None,
        "matryoshka_dims": [1, 2],
        "sentence_transformers": {"modules": ["Transformer", "Pooling", "Dense"]},
    }
    manifest = Manifest.from_dict(raw, Path("manifest.json"))
    assert Manifest.from_dict(manifest.to_dict(), Path("manifest.json")) == manifest
    assert manifest.embedding_dim == 2 and manifest.matryoshka_dims == (1, 2)
    (layer,) = Artifact(tmp_path, manifest).dense_layers()
    np.testing.assert_array_equal(layer.weight, weight)
    for change, says in [
        ({"embedding_dim": 4}, "embedding_dim 4 does not follow"),
        ({"dense": [{**dense, "in_features": 3}]}, r"dense\[0\] takes 3 features, gets 4"),
        ({"matryoshka_dims": [3]}, "matryoshka dimension 3 is outside 1..2"),
        ({"default_prompt_name": "passage"}, "default_prompt_name 'passage'"),
        ({"format_version": 4}, "format_version 4 is not supported"),
    ]:
        with pytest.raises(ArtifactError, match=says):
            Manifest.from_dict({**raw, **change}, Path("manifest.json"))


def cross_encoder_manifest(**change) -> dict:
    pair_graph = {"inputs": ["input_ids", "attention_mask", "token_type_ids"], "outputs": ["logits"]}
    return {
        **V1_MANIFEST,
        "format_version": 3,
        "pooling": "cls",
        "normalize": False,
        "graphs": {
            "fast": {"file": "fast.onnx", "precision": "fp32", **pair_graph},
            "attention": {"file": "attention.onnx", "precision": "fp32", **pair_graph},
        },
        "encoder_config": {"type_vocab_size": 2},
        "embedding_dim": 4,
        "dense": [],
        "prompts": {},
        "default_prompt_name": None,
        "matryoshka_dims": [],
        "sentence_transformers": {"model_type": "CrossEncoder"},
        "task": "rerank",
        "labels": ["LABEL_0"],
        "score_activation": "sigmoid",
        **change,
    }


def test_format_3_is_a_cross_encoder_with_its_task_labels_and_activation():
    manifest = Manifest.from_dict(cross_encoder_manifest(), Path("manifest.json"))
    assert (manifest.task, manifest.labels, manifest.score_activation, manifest.is_cross_encoder) == (
        "rerank",
        ("LABEL_0",),
        "sigmoid",
        True,
    )
    assert Manifest.from_dict(manifest.to_dict(), Path("manifest.json")) == manifest
    assert not Manifest.from_dict(V1_MANIFEST, Path("manifest.json")).is_cross_encoder
    for change, says in [
        ({"task": "embed"}, "task 'embed' needs format_version 2, not 3"),
        ({"task": "score"}, "task 'score' must be one of embed, rerank, classify"),
        ({"labels": ["a", "b"]}, "task 'rerank' has 2 labels; it needs exactly one"),
        ({"task": "classify"}, "task 'classify' has 1 labels; it needs two or more"),
        ({"score_activation": "tanh"}, "score_activation 'tanh' must be one of"),
        (
            {"graphs": {"fast": {**V1_MANIFEST["graphs"]["fast"]}, "attention": V1_MANIFEST["graphs"]["attention"]}},
            "graph 'fast' of a rerank model must output 'logits'",
        ),
    ]:
        with pytest.raises(ArtifactError, match=says):
            Manifest.from_dict(cross_encoder_manifest(**change), Path("manifest.json"))


@pytest.mark.parametrize("pooling", ["weightedmean", "lasttoken"])
def test_an_exported_sentence_transformer_serves_its_own_vectors(tmp_path, pooling):
    """Exported through the CLI, read back as the server reads it: sentence-transformers' vectors,
    with its pooling, Dense layer, Normalize and truncation at max_seq_length."""
    from sentence_transformers import SentenceTransformer

    from model.__main__ import main
    from model.evaluate import OrtEmbedder

    (tmp_path / "st").mkdir()
    directory = write_tiny_mpnet_st(tmp_path / "st", pooling)
    assert (
        main(["export", "--checkpoint", str(directory), "--out", str(tmp_path / "art"), "--name", "t", "--no-int8"])
        == 0
    )
    artifact = Artifact.load(tmp_path / "art")
    m = artifact.manifest
    assert (m.pooling, m.normalize, m.embedding_dim, m.max_len, m.prompts) == (
        pooling,
        True,
        8,
        12,
        {"query": "query: "},
    )
    assert [d.activation for d in m.dense] == ["tanh"] and m.graphs["fast"].fusions["Attention"] == 0
    texts = [
        "a man plays guitar",
        "the dog runs",
        "A Woman Is Playing Piano In The Park",
        " ".join(WORDS * 2),  # truncated at 12 tokens
    ]
    ours = OrtEmbedder.for_artifact(artifact).embed(texts, normalize=m.normalize)
    expected = SentenceTransformer(str(directory), device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
