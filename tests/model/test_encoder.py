"""The attention math against a naive reference, for random shapes (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.config import EncoderConfig
from model.encoder import Encoder, MultiHeadAttention, additive_mask, sinusoidal_table
from model.errors import ModelError


def naive_attention(mha: MultiHeadAttention, x: torch.Tensor, keep: torch.Tensor, causal: bool = False):
    """Loops over batch, head, query and key: the formula with nothing clever in it."""
    B, T, C = x.shape
    h, d_k = mha.n_heads, mha.d_k
    W, b = mha.W_qkv.weight, mha.W_qkv.bias
    q, k, v = (x @ W[i * C : (i + 1) * C].T + b[i * C : (i + 1) * C] for i in range(3))
    probs = torch.zeros(B, h, T, T, dtype=torch.float64)
    heads = torch.zeros(B, T, C, dtype=torch.float64)
    for n in range(B):
        for head in range(h):
            cols = slice(head * d_k, (head + 1) * d_k)
            for i in range(T):
                allowed = [j for j in range(T) if keep[n, j] and (not causal or j <= i)]
                scores = torch.tensor(
                    [float(q[n, i, cols] @ k[n, j, cols]) / math.sqrt(d_k) for j in allowed], dtype=torch.float64
                )
                weights = torch.softmax(scores, dim=0) if allowed else torch.zeros(0)
                for w, j in zip(weights, allowed, strict=True):
                    probs[n, head, i, j] = w
                    heads[n, i, cols] += w * v[n, j, cols]
    return mha.W_O(heads.to(x.dtype)), probs


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 7),
    heads=st.sampled_from([1, 2, 4]),
    d_k=st.sampled_from([2, 4, 8]),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_multi_head_attention_matches_the_naive_formula(batch, seq, heads, d_k, causal, seed, data):
    torch.manual_seed(seed)
    config = EncoderConfig(
        d_model=heads * d_k, n_heads=heads, n_layers=1, d_ff=8, vocab_size=10, max_len=16, dropout=0.0
    )
    mha = MultiHeadAttention(config).double().eval()
    x = torch.randn(batch, seq, config.d_model, dtype=torch.float64)
    lengths = data.draw(st.lists(st.integers(1, seq), min_size=batch, max_size=batch))
    keep = torch.tensor([[1] * n + [0] * (seq - n) for n in lengths])
    with torch.no_grad():
        out, probs = mha(x, additive_mask(keep, torch.float64, causal=causal))
        expected_out, expected_probs = naive_attention(mha, x, keep, causal)
    torch.testing.assert_close(probs, expected_probs, atol=1e-10, rtol=0)
    # padded query rows attend to real keys like any other; compare real positions only
    for n, length in enumerate(lengths):
        torch.testing.assert_close(out[n, :length], expected_out[n, :length], atol=1e-10, rtol=0)
        assert torch.all(probs[n, :, :, length:] == 0), "padded keys must get exactly 0"
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=1e-12, rtol=0)


@given(batch=st.integers(1, 4), seq=st.integers(1, 9), heads=st.sampled_from([1, 3, 6]), d_k=st.integers(1, 5))
def test_split_then_merge_heads_is_the_identity(batch, seq, heads, d_k):
    config = EncoderConfig(d_model=heads * d_k, n_heads=heads, n_layers=1, d_ff=4, vocab_size=5, max_len=16)
    mha = MultiHeadAttention(config)
    x = torch.randn(batch, seq, heads * d_k)
    split = mha.split_heads(x)
    assert split.shape == (batch, heads, seq, d_k)
    torch.testing.assert_close(split[:, 1 % heads, :, :], x[:, :, (1 % heads) * d_k : (1 % heads + 1) * d_k])
    torch.testing.assert_close(mha.merge_heads(split), x)


def test_scores_are_scaled_by_one_over_sqrt_d_k():
    config = EncoderConfig(d_model=16, n_heads=1, n_layers=1, d_ff=4, vocab_size=5, max_len=8, dropout=0.0)
    mha = MultiHeadAttention(config).eval()
    with torch.no_grad():  # Q = K = identity map on x, V irrelevant: probs = softmax(x xᵀ / 4)
        mha.W_qkv.weight.zero_()
        mha.W_qkv.bias.zero_()
        mha.W_qkv.weight[:16] = torch.eye(16)
        mha.W_qkv.weight[16:32] = torch.eye(16)
        x = torch.randn(1, 3, 16)
        _, probs = mha(x, additive_mask(torch.ones(1, 3, dtype=torch.long), x.dtype))
    expected = torch.softmax(x[0] @ x[0].T / 4.0, dim=-1)
    torch.testing.assert_close(probs[0, 0], expected)


def test_sinusoidal_table_follows_the_paper():
    table = sinusoidal_table(50, 8)
    pos, i = 7, 2
    assert table[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)))
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)))


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_encoder_returns_every_layers_attention_and_ignores_padding(norm, positions):
    torch.manual_seed(0)
    config = EncoderConfig(
        d_model=12,
        n_heads=3,
        n_layers=2,
        d_ff=24,
        vocab_size=30,
        max_len=16,
        norm=norm,
        positions=positions,
        dropout=0.0,
    )
    encoder = Encoder(config).eval()
    ids = torch.randint(1, 30, (1, 5))
    padded_ids = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        alone, probs = encoder(ids, torch.ones(1, 5, dtype=torch.long), return_attention=True)
        padded = encoder(padded_ids, torch.tensor([[1] * 5 + [0] * 3]))
    assert probs.shape == (1, 2, 3, 5, 5)
    torch.testing.assert_close(padded[:, :5], alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"d_model": 10, "n_heads": 3}, "divisible"),
        ({"positions": "rotary"}, "positions"),
        ({"norm": "sandwich"}, "norm"),
        ({"n_layers": 0}, "n_layers must be positive"),
    ],
)
def test_configs_the_encoder_cannot_express_are_refused(values, says):
    with pytest.raises(ModelError, match=says):
        EncoderConfig(**values)
