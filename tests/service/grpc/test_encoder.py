"""mhaserve.v1.Encoder's answers on the default model, through the generated stubs: vectors, tokens
and attention equal in-process onnxruntime, and the model card."""

from __future__ import annotations

import numpy as np
import pytest

from protos.mhaserve.v1 import encoder_pb2 as pb
from tests.support.decode import decode_float32
from tests.support.reference import SENTENCES

MODEL = "all-minilm-l6-v2"


def vector(embedding: pb.Embedding) -> np.ndarray:
    return np.array(embedding.values, dtype=np.float32)


def array(tensor: pb.Tensor) -> np.ndarray:
    assert tensor.dtype == pb.DTYPE_FLOAT32
    return decode_float32(tensor.data, tensor.shape)


@pytest.fixture(scope="module")
def served(server):
    """The default model: these tests compare numbers with in-process onnxruntime."""
    return server


# every RPC -------------------------------------------------------------------------------


def test_embed_vectors_equal_in_process_onnxruntime(stub, reference):
    response = stub.Embed(pb.EmbedRequest(id="first", inputs=SENTENCES), timeout=60)
    assert (response.id, response.model) == ("first", MODEL)
    assert len(response.embeddings) == len(SENTENCES)
    for text, embedding in zip(SENTENCES, response.embeddings, strict=True):
        np.testing.assert_allclose(vector(embedding), reference.embedding(text), atol=1e-5)
    assert response.usage.tokens == sum(len(reference.ids(t)) for t in SENTENCES)
    assert not response.tokens and not response.token_embeddings and not response.attention


def test_embed_cls_pooling_without_normalisation(stub, reference):
    message = pb.EmbedRequest(inputs=[SENTENCES[0]], pooling=pb.POOLING_CLS, normalize=False)
    response = stub.Embed(message, timeout=60)
    np.testing.assert_allclose(
        vector(response.embeddings[0]), reference.embedding(SENTENCES[0], "cls", False), atol=1e-5
    )


def test_tokens_token_embeddings_and_attention_each_at_their_own_length(stub, reference):
    texts = [SENTENCES[2], SENTENCES[5]]
    message = pb.EmbedRequest(
        inputs=texts,
        return_tokens=True,
        return_token_embeddings=True,
        attention=pb.AttentionSelection(layers=[0, 5], heads=[3, 11]),
    )
    response = stub.Embed(message, timeout=60)
    assert list(response.attention_layers) == [0, 5] and list(response.attention_heads) == [3, 11]
    for i, text in enumerate(texts):
        ids = reference.ids(text)
        assert [t.id for t in response.tokens[i].tokens] == ids
        assert response.tokens[i].tokens[0].text == "[CLS]"
        token_embeddings = array(response.token_embeddings[i])
        assert token_embeddings.shape == (len(ids), 384)
        np.testing.assert_allclose(token_embeddings, reference.hidden(text), atol=1e-4)
        attention = array(response.attention[i])
        assert attention.shape == (2, 2, len(ids), len(ids))
        np.testing.assert_allclose(attention, reference.attention(text)[[0, 5]][:, [3, 11]], atol=1e-5)


def test_an_empty_attention_selection_means_every_layer_and_head(stub):
    response = stub.Embed(pb.EmbedRequest(inputs=["hi"], attention=pb.AttentionSelection()), timeout=60)
    assert list(response.attention_layers) == list(range(6)) and list(response.attention_heads) == list(range(12))
    assert array(response.attention[0]).shape == (6, 12, 3, 3)


def test_tokenize_gives_word_pieces_with_offsets(stub, reference):
    text = "Tokenizers split unbelievable words."
    response = stub.Tokenize(pb.TokenizeRequest(inputs=[text]), timeout=30)
    assert response.model == MODEL
    tokens = response.tokens[0].tokens
    assert [t.id for t in tokens] == reference.ids(text)
    words = [t for t in tokens if t.end > t.start]
    assert words and all(text[t.start : t.end].lower() == t.text.removeprefix("##") for t in words)


def test_get_model_info_describes_the_served_model(stub, artifact):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    manifest = artifact.manifest
    assert (info.name, info.version, info.pooling, info.normalize) == (
        manifest.name,
        manifest.version,
        manifest.pooling,
        manifest.normalize,
    )
    assert (info.d_model, info.embedding_dim, info.n_layers, info.n_heads, info.max_len) == (384, 384, 6, 12, 256)
    assert info.provider.endswith("ExecutionProvider") and info.precision in ("fp32", "fp16", "int8")
    assert info.graph.endswith(".onnx")
