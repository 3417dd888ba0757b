"""A Transformer encoder built on multi-head attention, as in "Attention Is All You Need".

Named as the paper names things. Shapes: B batch, T sequence length, C = d_model,
h heads, d_k = C / h.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import EncoderConfig


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (max_len, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table  # (max_len, C)


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype, causal: bool = False) -> torch.Tensor:
    """0 where a query may look, the dtype's most negative number where it may not.

    finfo.min rather than -inf: exp underflows to exactly 0 without producing NaN, and the
    (1 - mask) * min form is the pattern onnxruntime's attention fusion recognises.
    """
    B, T = attention_mask.shape
    keep = attention_mask[:, None, None, :].to(dtype)  # (B, 1, 1, T): key-padding mask
    mask = (1.0 - keep) * torch.finfo(dtype).min
    if causal:
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=attention_mask.device), diagonal=1)
        mask = mask.masked_fill(future, torch.finfo(dtype).min)  # (B, 1, T, T)
    return mask


class PositionalEncoding(nn.Module):
    """Adds position information: a fixed sinusoid table, or a learned one (BERT).

    With positions_after_pad (RoBERTa, MPNet) real tokens take positions pad_id + 1, + 2, ...
    and padding takes pad_id; otherwise positions are 0, 1, 2, ...
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.learned = config.positions == "learned"
        self.after_pad = config.positions_after_pad
        self.pad_id = config.pad_token_id
        if self.learned:
            self.weight = nn.Parameter(torch.zeros(config.max_len, config.d_model))
        else:
            self.register_buffer("weight", sinusoidal_table(config.max_len, config.d_model), persistent=False)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.after_pad:
            keep = attention_mask.to(torch.long)  # (B, T)
            position_ids = torch.cumsum(keep, dim=1) * keep + self.pad_id  # (B, T): pad_id+1.. for tokens
            return x + F.embedding(position_ids, self.weight)  # (B, T, C)
        T = x.size(1)
        return x + self.weight[:T].unsqueeze(0)  # (B, T, C)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """MPNet's (and T5's bidirectional) buckets of key - query distances.

    Half the buckets for keys before the query, half for keys after; in each half the first
    quarter of all buckets are exact distances, the rest grow logarithmically up to
    max_distance, beyond which everything shares the last bucket. The arithmetic is
    transformers' MPNetEncoder.relative_position_bucket, float rounding included.
    """
    n = -relative_position  # query - key
    half = num_buckets // 2
    bucket = (n < 0).to(torch.long) * half  # keys after the query use the upper half
    n = torch.abs(n)
    max_exact = half // 2
    is_small = n < max_exact
    scaled = torch.log(n.clamp(min=max_exact).float() / max_exact) / math.log(max_distance / max_exact)
    if_large = max_exact + (scaled * (half - max_exact)).to(torch.long)
    if_large = torch.clamp(if_large, max=half - 1)
    return bucket + torch.where(is_small, n, if_large)


class RelativePositionBias(nn.Module):
    """One learned bias per (bucketed relative distance, head), shared by every layer (MPNet).

    The buckets of every distance the position table allows are computed once here, so the
    exported graph only gathers from constants: no float log in the graph to round differently.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.max_tokens = config.max_tokens
        self.relative_attention_bias = nn.Embedding(config.relative_attention_buckets, config.n_heads)
        distances = torch.arange(-(self.max_tokens - 1), self.max_tokens)  # key - query
        buckets = relative_position_bucket(
            distances, config.relative_attention_buckets, config.relative_attention_max_distance
        )
        self.register_buffer("buckets", buckets, persistent=False)  # (2 * max_tokens - 1,)

    def forward(self, T: int | torch.Tensor, device: torch.device) -> torch.Tensor:
        positions = torch.arange(T, device=device)  # (T,)
        distance = positions[None, :] - positions[:, None] + (self.max_tokens - 1)  # (T, T): key - query, shifted
        bias = self.relative_attention_bias(self.buckets[distance])  # (T, T, h)
        return bias.permute(2, 0, 1).unsqueeze(0)  # (1, h, T, T)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W_O, head_i = softmax(Q_i K_iᵀ / √d_k) V_i."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.d_k = config.d_k
        self.d_model = config.d_model
        self.W_qkv = nn.Linear(config.d_model, 3 * config.d_model)  # W_Q, W_K, W_V stacked by rows
        self.W_O = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, self.d_k).transpose(1, 2)  # (B, h, T, d_k)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        B, h, T, d_k = x.shape
        return x.transpose(1, 2).reshape(B, T, h * d_k)  # (B, T, C)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, position_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # One fused parameter, applied as three GEMMs on its row blocks: the exported graph
        # then has the Q, K and V MatMuls that onnxruntime's optimizer packs back into one
        # fused Attention kernel. The arithmetic is identical to x @ W_qkvᵀ split in three.
        W_q, W_k, W_v = self.W_qkv.weight.chunk(3, dim=0)
        b_q, b_k, b_v = self.W_qkv.bias.chunk(3, dim=0)
        q = self.split_heads(F.linear(x, W_q, b_q))  # (B, h, T, d_k)
        k = self.split_heads(F.linear(x, W_k, b_k))  # (B, h, T, d_k)
        v = self.split_heads(F.linear(x, W_v, b_v))  # (B, h, T, d_k)

        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_k)  # (B, h, T, T)
        if position_bias is not None:
            scores = scores + position_bias  # (1, h, T, T): relative positions (MPNet)
        scores = scores + mask  # masked keys -> finfo.min
        attention_probs = F.softmax(scores, dim=-1)  # (B, h, T, T), rows sum to 1
        y = self.dropout(attention_probs) @ v  # (B, h, T, d_k)
        return self.W_O(self.merge_heads(y)), attention_probs  # (B, T, C), (B, h, T, T)


class FeedForward(nn.Module):
    """FFN(x) = GELU(x W_1 + b_1) W_2 + b_2, applied at every position."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.W_1 = nn.Linear(config.d_model, config.d_ff)
        self.W_2 = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.W_2(F.gelu(self.W_1(x)))  # exact (erf) GELU, as BERT


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward sublayers, each with a residual connection and LayerNorm."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.pre_norm = config.norm == "pre"
        self.attention = MultiHeadAttention(config)
        self.attention_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.output_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, position_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pre_norm:  # x + Sublayer(LayerNorm(x))
            attended, attention_probs = self.attention(self.attention_norm(x), mask, position_bias)
            x = x + self.dropout(attended)
            x = x + self.dropout(self.feed_forward(self.output_norm(x)))
        else:  # LayerNorm(x + Sublayer(x)), as in the paper and BERT
            attended, attention_probs = self.attention(x, mask, position_bias)
            x = self.attention_norm(x + self.dropout(attended))
            x = self.output_norm(x + self.dropout(self.feed_forward(x)))
        return x, attention_probs


class Encoder(nn.Module):
    """Token embedding + positions (+ segments), then n_layers EncoderLayers (+ a shared relative position bias)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model, padding_idx=None)
        self.positional_encoding = PositionalEncoding(config)
        self.segment_embedding = (
            nn.Embedding(config.type_vocab_size, config.d_model) if config.type_vocab_size else None
        )
        self.embedding_norm = (
            nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.embedding_norm else nn.Identity()
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.n_layers))
        self.relative_position_bias = RelativePositionBias(config) if config.relative_attention_buckets else None
        # pre-LN stacks end with a LayerNorm, since the residual stream itself is never normalised
        self.final_norm = (
            nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.norm == "pre" else nn.Identity()
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, PositionalEncoding) and module.learned:
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.token_embedding(input_ids)  # (B, T, C)
        if self.segment_embedding is not None:
            if token_type_ids is None:
                x = x + self.segment_embedding.weight[0]  # single-segment input: type id 0 everywhere
            else:
                x = x + self.segment_embedding(token_type_ids)  # a pair: 0 for the first text, 1 for the second
        x = self.positional_encoding(x, attention_mask)
        return self.dropout(self.embedding_norm(x))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_attention: bool = False,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask (and token_type_ids for a pair): (B, T), mask 1 for real
        tokens and 0 for right padding.

        Returns hidden states (B, T, C); with return_attention also the attention
        probabilities of every layer, stacked as (B, n_layers, h, T, T).
        """
        x = self.embed(input_ids, attention_mask, token_type_ids)
        mask = additive_mask(attention_mask, x.dtype, causal=self.config.causal)
        # computed once, added in every layer: (1, h, T, T), or None without relative positions
        bias = None if self.relative_position_bias is None else self.relative_position_bias(x.size(1), x.device)
        all_probs = []
        for layer in self.layers:
            x, attention_probs = layer(x, mask, bias)
            all_probs.append(attention_probs)
        x = self.final_norm(x)
        if return_attention:
            return x, torch.stack(all_probs, dim=1)
        return x


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real tokens' vectors (B, C); padding does not count."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
