"""Validation: what a request may ask of its model (inputs, prompts, pooling, attention,
dimensions), checked before any work is queued; the attention limits once the lengths are known."""

from __future__ import annotations

import math

from artifact.pooling import POOLING_MODES
from service.backends.base import ModelSpec
from service.config import Settings
from service.core.attention import REDUCTIONS, AttentionPlan
from service.core.pairs import BLOCKS, FULL
from service.errors import InvalidRequest, PayloadTooLarge, WrongTask
from service.types import AttentionSelection


class Validation:
    def __init__(self, settings: Settings, spec: ModelSpec):
        self.settings = settings
        self.spec = spec

    def check_inputs(self, inputs: tuple[str, ...]) -> None:
        if not inputs:
            raise InvalidRequest("inputs is empty: send at least one string")
        limit = self.settings.max_inputs_per_request
        if len(inputs) > limit:
            raise InvalidRequest(f"{len(inputs)} inputs in one request, the limit is {limit}: split the request")
        for i, text in enumerate(inputs):
            if not isinstance(text, str):
                raise InvalidRequest(f"inputs[{i}] must be a string, got {type(text).__name__}")
            if not text:
                raise InvalidRequest(f"inputs[{i}] is an empty string: send some text")

    def with_prompt(self, inputs: tuple[str, ...], prompt_name: str | None) -> tuple[str, ...]:
        """The inputs as the model reads them: its prompt prepended, as sentence-transformers does."""
        name = prompt_name or self.spec.default_prompt_name
        if name is None:
            return inputs
        if name not in self.spec.prompts:
            known = ", ".join(repr(p) for p in self.spec.prompts) or "none"
            raise InvalidRequest(f"prompt_name {name!r} is not one of {self.spec.name}'s prompts ({known})")
        prompt = self.spec.prompts[name]
        return tuple(prompt + text for text in inputs)

    def check_pooling(self, pooling: str | None) -> str:
        pooling = pooling or self.spec.pooling
        if pooling not in POOLING_MODES:
            raise InvalidRequest(f"pooling {pooling!r} is not supported: use one of {', '.join(POOLING_MODES)}")
        return pooling

    def check_dimensions(self, dimensions: int | None) -> None:
        spec = self.spec
        if dimensions is None or dimensions == spec.embedding_dim:
            return
        if not spec.matryoshka_dims:
            raise InvalidRequest(
                f"dimensions={dimensions} is not supported: {spec.name} gives {spec.embedding_dim} dimensions and "
                "declares no Matryoshka truncations; omit the field"
            )
        if dimensions not in spec.matryoshka_dims:
            raise InvalidRequest(
                f"dimensions={dimensions} is not one of {spec.name}'s Matryoshka dimensions "
                f"{list(spec.matryoshka_dims)} (or its full {spec.embedding_dim})"
            )

    def check_task(self, *tasks: str) -> None:
        """A request for what the model does not do names the model's task and what it does instead."""
        spec = self.spec
        if spec.task in tasks:
            return
        wanted = " or ".join(repr(task) for task in tasks)
        if spec.task == "embed":
            does = "an embedding model: it answers vectors (embed), not scores of pairs"
        elif spec.task == "rerank":
            does = (
                "a rerank model (a cross-encoder with one label): it scores (query, document) pairs (rerank, predict)"
            )
        else:
            labels = ", ".join(spec.labels)
            does = f"a classify model (a cross-encoder with labels {labels}): it classifies texts and pairs (predict)"
        raise WrongTask(
            f"model {spec.name!r} has task {spec.task!r}, {does}; this call needs a model whose task is {wanted}"
        )

    def check_documents(self, query: str, documents: tuple[str, ...], top_n: int | None = None) -> None:
        if not isinstance(query, str) or not query:
            raise InvalidRequest("query is empty: send the text to rank the documents against")
        if not documents:
            raise InvalidRequest("no documents to rank: send at least one")
        self._check_count(len(documents), "documents")
        for i, text in enumerate(documents):
            if not isinstance(text, str) or not text:
                raise InvalidRequest(f"documents[{i}] is empty or not a string: send some text")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise InvalidRequest(f"top_n must be 1 or more (or left out for every document), got {top_n!r}")

    def check_predict_inputs(self, inputs: tuple[tuple[str, ...], ...], top_k: int | None) -> None:
        if not inputs:
            raise InvalidRequest("inputs is empty: send a text, a pair [text, text], or a list of them")
        self._check_count(len(inputs), "inputs")
        for i, item in enumerate(inputs):
            if len(item) not in (1, 2) or not all(isinstance(t, str) and t for t in item):
                raise InvalidRequest(f"inputs[{i}] must be a non-empty text or a pair of two non-empty texts")
        if top_k is not None:
            if self.spec.task != "classify":
                raise InvalidRequest(
                    f"top_k chooses among a classify model's labels; {self.spec.name!r} is a {self.spec.task} "
                    f"model with the one label {self.spec.labels[0]!r}: leave top_k out"
                )
            if not 1 <= top_k <= len(self.spec.labels):
                raise InvalidRequest(f"top_k must be 1..{len(self.spec.labels)} (the model's labels), got {top_k}")

    def _check_count(self, count: int, what: str) -> None:
        limit = self.settings.max_inputs_per_request
        if count > limit:
            raise InvalidRequest(
                f"{count} {what} in one request, the limit is {limit} (--max-inputs-per-request): split the request"
            )

    def resolve_attention(self, selection: AttentionSelection | None, pairs: bool = False) -> AttentionPlan | None:
        if selection is None:
            return None
        if selection.block not in BLOCKS:
            raise InvalidRequest(f"attention block {selection.block!r} is not one of {', '.join(BLOCKS)}")
        if selection.block != FULL and not pairs:
            raise InvalidRequest(f"attention block {selection.block!r} is a block of a pair: leave it out on embed")
        if selection.block != FULL and selection.rows is not None:
            raise InvalidRequest(
                f"attention block {selection.block!r} chooses its rows itself: send rows or a block, not both"
            )
        layers = indices(selection.layers, self.spec.n_layers, "layer")
        heads = indices(selection.heads, self.spec.n_heads, "head")
        if selection.reduce_heads not in REDUCTIONS:
            raise InvalidRequest(
                f"head reduction {selection.reduce_heads!r} is not supported: use 'none', 'mean' or 'max'"
            )
        if not isinstance(selection.rollout, bool):
            raise InvalidRequest(f"rollout must be true or false, got {selection.rollout!r}")
        rows = positions(selection.rows)
        return AttentionPlan(layers, heads, selection.reduce_heads, selection.rollout, rows, selection.block)

    def check_attention_rows(self, plan: AttentionPlan, lengths: list[int]) -> None:
        """Rows are query positions: each must lie inside every input's tokens."""
        if plan.rows is None:
            return
        for i, n in enumerate(lengths):
            outside = [row for row in plan.rows if row >= n]
            if outside:
                raise InvalidRequest(
                    f"attention row {outside[0]} is outside input {i} (0-based), which is {n} tokens long "
                    f"(special tokens included): choose rows 0..{n - 1}"
                )

    def check_attention_values(self, plan: AttentionPlan, shapes: list[tuple[int, ...]]) -> None:
        """The limit applies to the answer as sent (each sequence's shape), after head reduction,
        rollout and the selection of rows or a block."""
        values = sum(math.prod(shape) for shape in shapes)
        limit = self.settings.max_attention_values
        if values > limit:
            raise PayloadTooLarge(
                f"the attention answer would hold {values:,} values, over the limit of {limit:,}: ask for fewer "
                "layers, heads or rows, a head reduction or the rollout, shorter or fewer inputs, "
                "or raise --max-attention-values"
            )


def indices(chosen: tuple[int, ...] | None, count: int, what: str) -> tuple[int, ...]:
    """None means all; an empty selection, an unknown index or a repeated one is refused."""
    if chosen is None:
        return tuple(range(count))
    if not chosen:
        raise InvalidRequest(f"the attention {what} selection is empty: list at least one {what}, or ask for all")
    for value in chosen:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            raise InvalidRequest(f"{what} {value!r} does not exist: the model has {what}s 0..{count - 1}")
    if len(set(chosen)) != len(chosen):
        raise InvalidRequest(f"the attention {what} selection lists a {what} twice: {list(chosen)}")
    return tuple(chosen)


def positions(rows: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """Query positions: None means every row; an empty list, a negative or a repeated one is refused.
    Whether each lies inside the text is known only after tokenizing (check_attention_rows)."""
    if rows is None:
        return None
    if not rows:
        raise InvalidRequest("the attention row selection is empty: list at least one row, or ask for all")
    for value in rows:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(f"attention row {value!r} is not a token position: rows are 0-based, 0 is [CLS]")
    if len(set(rows)) != len(rows):
        raise InvalidRequest(f"the attention row selection lists a row twice: {list(rows)}")
    return tuple(rows)
