"""/v1/embeddings through the official OpenAI Python client, unchanged, against the default model."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from tests.support.decode import decode_float32
from tests.support.reference import SENTENCES


def test_official_openai_client_works_unchanged(server, reference):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    for encoding in ("float", "base64", openai.NOT_GIVEN):
        answer = client.embeddings.create(model="all-minilm-l6-v2", input=SENTENCES[:3], encoding_format=encoding)
        assert [d.index for d in answer.data] == [0, 1, 2]
        for text, item in zip(SENTENCES[:3], answer.data, strict=True):
            # asked for base64 explicitly, the client hands the string through; by default it decodes
            vector = decode_float32(item.embedding, [384]) if encoding == "base64" else item.embedding
            np.testing.assert_allclose(vector, reference.embedding(text), atol=1e-5)
        assert answer.usage.prompt_tokens == sum(len(reference.ids(t)) for t in SENTENCES[:3])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions"):
        client.embeddings.create(model="all-minilm-l6-v2", input="x", dimensions=64)
