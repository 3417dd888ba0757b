"""Head reductions, rollout and row selection: properties on random softmax attention, and the
engine's validation of the options (on the fake backend)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.backends.fake import FakeBackend
from service.config import load_settings
from service.core.attention import AttentionPlan, sequence_attention
from service.core.engine import Engine
from service.core.postprocess import SequenceOptions, split_batch
from service.errors import InvalidRequest, PayloadTooLarge
from service.types import AttentionSelection, EmbedRequest

L, H = 3, 4  # layers and heads of the random attention


def softmax_attention(rng: np.random.Generator, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded probabilities (B, L, H, T, T) as a graph gives them: each query's softmax over
    its sequence's own keys; padded rows and keys hold garbage that no answer may read."""
    B, T = len(lengths), max(lengths)
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]  # (B, T)
    scores = rng.normal(scale=3.0, size=(B, L, H, T, T))
    scores = np.where(mask[:, None, None, None, :], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for b, n in enumerate(lengths):
        probs[b, :, :, n:] = rng.uniform(size=(L, H, T - n, T))  # padded queries: anything
    return probs.astype(np.float32), mask.astype(np.int64)


def rollout_by_hand(attention: np.ndarray, layers: list[int], how: str) -> np.ndarray:
    """R = Â_lk ··· Â_l1 over one sequence's (L, H, n, n), written out without the server's code."""
    n = attention.shape[-1]
    result = np.eye(n)
    for layer in sorted(layers):
        heads = attention[layer].astype(np.float64)
        a = heads.max(0) if how == "max" else heads.mean(0)
        mixed = 0.5 * a + 0.5 * np.eye(n)
        mixed = mixed / mixed.sum(1, keepdims=True)
        result = mixed @ result
    return result


plans = st.builds(
    AttentionPlan,
    layers=st.lists(st.integers(0, L - 1), min_size=1, max_size=L, unique=True).map(tuple),
    heads=st.lists(st.integers(0, H - 1), min_size=1, max_size=H, unique=True).map(tuple),
    reduce_heads=st.sampled_from(["none", "mean", "max"]),
    rollout=st.booleans(),
)
lengths_st = st.lists(st.integers(2, 9), min_size=1, max_size=4)


def answers(probs, mask, plan_for) -> list[np.ndarray]:
    n_seq = len(mask)
    options = [
        SequenceOptions([1] * int(mask[i].sum()), "mean", True, False, attention=plan_for(i)) for i in range(n_seq)
    ]
    hidden = np.zeros((*mask.shape, 2), dtype=np.float32)
    return [r.attention for r in split_batch(hidden, mask, options, probs)]


@settings(max_examples=60, deadline=None)
@given(plan=plans, lengths=lengths_st, seed=st.integers(0, 2**32 - 1))
def test_answers_are_non_negative_4d_and_rows_sum_to_one_unless_a_max(plan, lengths, seed):
    probs, mask = softmax_attention(np.random.default_rng(seed), lengths)
    for n, answer in zip(lengths, answers(probs, mask, lambda i: plan), strict=True):
        assert answer.shape == plan.shape(n) and answer.dtype == np.float32
        assert (answer >= 0).all()
        if plan.rollout or plan.reduce_heads != "max":
            np.testing.assert_allclose(answer.sum(-1), 1.0, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(plan=plans, lengths=lengths_st, seed=st.integers(0, 2**32 - 1))
def test_reductions_and_rollout_equal_a_computation_by_hand(plan, lengths, seed):
    probs, mask = softmax_attention(np.random.default_rng(seed), lengths)
    for b, (n, answer) in enumerate(zip(lengths, answers(probs, mask, lambda i: plan), strict=True)):
        own = probs[b, :, :, :n, :n]
        selected = own[list(plan.layers)][:, list(plan.heads)]
        if plan.rollout:
            expected = rollout_by_hand(own[:, list(plan.heads)], list(plan.layers), plan.reduce_heads)[None, None]
        elif plan.reduce_heads == "mean":
            expected = selected.mean(1, keepdims=True)
        elif plan.reduce_heads == "max":
            expected = selected.max(1, keepdims=True)
        else:
            expected = selected
        np.testing.assert_allclose(answer, expected, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(plan=plans, lengths=lengths_st, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_rows_equal_slicing_the_answer_with_every_row(plan, lengths, seed, data):
    probs, mask = softmax_attention(np.random.default_rng(seed), lengths)
    shortest = min(lengths)
    rows = tuple(data.draw(st.lists(st.integers(0, shortest - 1), min_size=1, max_size=shortest, unique=True)))
    every = answers(probs, mask, lambda i: plan)
    some = answers(probs, mask, lambda i: AttentionPlan(plan.layers, plan.heads, plan.reduce_heads, plan.rollout, rows))
    for full, sliced in zip(every, some, strict=True):
        np.testing.assert_allclose(sliced, full[:, :, list(rows)], atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(layers=plans, lengths=lengths_st, seed=st.integers(0, 2**32 - 1))
def test_the_head_mean_is_the_mean_of_the_per_head_answer(layers, lengths, seed):
    probs, mask = softmax_attention(np.random.default_rng(seed), lengths)
    per_head = answers(probs, mask, lambda i: AttentionPlan(layers.layers, layers.heads))
    mean = answers(probs, mask, lambda i: AttentionPlan(layers.layers, layers.heads, "mean"))
    for heads, reduced in zip(per_head, mean, strict=True):
        np.testing.assert_allclose(reduced, heads.mean(1, keepdims=True), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(plan=plans, lengths=lengths_st, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_answers_do_not_depend_on_batch_order_or_padding(plan, lengths, seed, data):
    rng = np.random.default_rng(seed)
    probs, mask = softmax_attention(rng, lengths)
    together = answers(probs, mask, lambda i: plan)
    order = data.draw(st.permutations(range(len(lengths))))
    extra = data.draw(st.integers(0, 5))  # more padding: a longer neighbour's batch
    T = max(lengths) + extra
    padded = rng.uniform(size=(len(lengths), L, H, T, T)).astype(np.float32)
    padded_mask = np.zeros((len(lengths), T), dtype=np.int64)
    for new, old in enumerate(order):
        n = lengths[old]
        padded[new, :, :, :n, :n] = probs[old, :, :, :n, :n]
        padded_mask[new, :n] = 1
    shuffled = answers(padded, padded_mask, lambda i: plan)
    for new, old in enumerate(order):
        np.testing.assert_array_equal(shuffled[new], together[old])


def test_rollout_of_one_layer_mixes_its_mean_with_the_identity():
    probs, mask = softmax_attention(np.random.default_rng(0), [5])
    answer = sequence_attention(probs[0], 5, AttentionPlan((1,), (0, 1, 2, 3), "mean", rollout=True))
    np.testing.assert_allclose(answer[0, 0], 0.5 * probs[0, 1].mean(0) + 0.5 * np.eye(5), atol=1e-6)


def test_rollout_chains_layers_in_increasing_order_whatever_order_they_are_listed_in():
    probs, _ = softmax_attention(np.random.default_rng(1), [6])
    listed = sequence_attention(probs[0], 6, AttentionPlan((2, 0), (0, 1), "mean", rollout=True))
    ordered = sequence_attention(probs[0], 6, AttentionPlan((0, 2), (0, 1), "mean", rollout=True))
    np.testing.assert_array_equal(listed, ordered)
    np.testing.assert_allclose(listed[0, 0], rollout_by_hand(probs[0][:, [0, 1]], [0, 2], "mean"), atol=1e-6)


# the engine: options, validation and limits ---------------------------------------------------


def run_engine(request: EmbedRequest, **flags):
    backend = FakeBackend()

    async def main():
        engine = Engine(load_settings({k: str(v) for k, v in flags.items()}, {}), lambda: backend)
        await engine.start()
        try:
            return await engine.embed(request)
        finally:
            await engine.stop(1.0)

    return asyncio.run(main())


def attend(*texts: str, **selection) -> EmbedRequest:
    return EmbedRequest(inputs=texts, attention=AttentionSelection(**selection))


def test_the_engine_answers_a_rollout_row_and_says_how_it_was_computed():
    result = run_engine(attend("the man is playing", "a dog", rollout=True, rows=(0,)))
    assert [a.shape for a in result.attention] == [(1, 1, 1, 6), (1, 1, 1, 4)]
    # uniform A over 4 tokens: Â = A/2 + I/2 has row 0 (5, 1, 1, 1)/8; through two layers, (28, 12, 12, 12)/64
    np.testing.assert_allclose(result.attention[1][0, 0, 0], np.array([28, 12, 12, 12]) / 64, atol=1e-6)
    assert (result.attention_layers, result.attention_heads) == ((0, 1), (0, 1))
    assert result.attention_rollout and result.attention_reduce_heads == "none" and result.attention_rows == (0,)


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (dict(rows=(5,)), r"attention row 5 is outside input 1 \(0-based\), which is 4 tokens long .*rows 0\.\.3"),
        (dict(rows=()), r"the attention row selection is empty"),
        (dict(rows=(-1,)), r"attention row -1 is not a token position"),
        (dict(rows=(0, 0)), r"lists a row twice"),
        (dict(layers=()), r"the attention layer selection is empty"),
        (dict(heads=()), r"the attention head selection is empty"),
        (dict(reduce_heads="median"), r"head reduction 'median' is not supported: use 'none', 'mean' or 'max'"),
        (dict(rollout="yes"), r"rollout must be true or false"),
    ],
)
def test_bad_attention_options_are_invalid_requests_that_say_what_to_send(selection, message):
    with pytest.raises(InvalidRequest, match=message):
        run_engine(attend("the man is playing", "a dog", **selection))


def test_the_attention_limit_counts_the_answer_after_reduction():
    # 2 layers x 2 heads x 6 x 6 = 144 values per-head; the rollout [CLS] row is 6
    with pytest.raises(PayloadTooLarge, match="144 values"):
        run_engine(attend("the man is playing"), max_attention_values=100)
    assert run_engine(attend("the man is playing", rollout=True, rows=(0,)), max_attention_values=6).attention
    assert run_engine(attend("the man is playing", reduce_heads="mean"), max_attention_values=72).attention
    with pytest.raises(PayloadTooLarge, match="12 values"):
        run_engine(attend("the man is playing", rows=(0,), layers=(0,)), max_attention_values=11)


def test_requests_with_different_options_share_one_attention_graph_run_and_each_gets_its_own():
    backend = FakeBackend(delay_s=0.05)
    selections = [
        AttentionSelection(),
        AttentionSelection(reduce_heads="mean"),
        AttentionSelection(rollout=True, rows=(0,)),
        AttentionSelection(layers=(1,), heads=(0,), rows=(2, 1)),
    ]

    async def main():
        engine = Engine(load_settings({"max_wait_ms": "50", "batch_wait": "always"}, {}), lambda: backend)
        await engine.start()
        try:
            return await asyncio.gather(
                *(engine.embed(EmbedRequest(inputs=("the man is playing",), attention=s)) for s in selections)
            )
        finally:
            await engine.stop(1.0)

    results = asyncio.run(main())
    assert [path for path, _ in backend.calls] == ["attention"]  # one run for the four requests
    assert [r.attention[0].shape for r in results] == [(2, 2, 6, 6), (2, 1, 6, 6), (1, 1, 1, 6), (1, 1, 2, 6)]
