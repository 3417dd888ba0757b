"""An independent truth for attention analytics: transformers' eager attention of the default
checkpoint, and head reductions and rollout written out in numpy (nothing from service/)."""

from __future__ import annotations

import os

import numpy as np


def transformers_attention(ids_list: list[list[int]]) -> list[np.ndarray]:
    """(layers, heads, n, n) float64 per sequence, each run alone (no padding), by transformers'
    BertModel with eager attention on the checkpoint the artifact was built from."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    from model.weights import default_checkpoint_dir

    model = AutoModel.from_pretrained(str(default_checkpoint_dir()), attn_implementation="eager").eval()
    answers = []
    with torch.no_grad():
        for ids in ids_list:
            input_ids = torch.tensor([ids])
            out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_attentions=True)
            answers.append(torch.stack(out.attentions)[:, 0].double().numpy())
    return answers


def expected_answer(
    attention: np.ndarray,
    layers: list[int],
    heads: list[int],
    reduce_heads: str = "none",
    rollout: bool = False,
    rows: list[int] | None = None,
) -> np.ndarray:
    """The 4-D answer [layers', heads', rows', n] the API promises, from one sequence's (L, H, n, n)."""
    n = attention.shape[-1]
    chosen = attention[layers][:, heads]  # (l, h, n, n)
    if rollout:
        result = np.eye(n)
        for layer in sorted(layers):
            per_head = attention[layer][heads]
            a = per_head.max(axis=0) if reduce_heads == "max" else per_head.mean(axis=0)
            mixed = 0.5 * a + 0.5 * np.eye(n)
            mixed = mixed / mixed.sum(axis=1, keepdims=True)
            result = mixed @ result  # the later layer on the left
        answer = result[None, None]
    elif reduce_heads == "mean":
        answer = chosen.mean(axis=1, keepdims=True)
    elif reduce_heads == "max":
        answer = chosen.max(axis=1, keepdims=True)
    else:
        answer = chosen
    return answer if rows is None else answer[:, :, rows]
