"""The Engine: admit → tokenize → batch → run → post-process → typed result.

Every transport calls `Engine.embed` / `Engine.tokenize` / `Engine.model_info` with a typed
request and formats the typed result; limits, batching, errors and readiness are decided
here, once. The engine computes through a `Backend` and knows nothing of onnxruntime.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding

from artifact.manifest import ArtifactError
from artifact.pooling import l2_normalize
from service.backends.base import Backend
from service.config import Settings
from service.core.attention import AttentionPlan
from service.core.batcher import Batcher, BatchStats, Job, Sequence
from service.core.capacity import UNHELD, Capacity, Ticket
from service.core.health import Health, Status
from service.core.pairs import PairOptions, PairResult, activate, batch_pair_inputs, block_shape, spans, split_pairs
from service.core.postprocess import SequenceOptions, SequenceResult, batch_inputs, split_batch
from service.core.tokenization import TokenizerWorker, to_tokens
from service.core.validation import Validation
from service.errors import DeadlineExceeded, InvalidRequest, MhaserveError, NotReady, Overloaded
from service.metrics import Metrics
from service.threads import lower_thread_priority
from service.types import (
    EmbedRequest,
    EmbedResult,
    LabelScore,
    ModelInfo,
    PredictRequest,
    PredictResult,
    RerankRequest,
    RerankResult,
    Span,
    Timings,
    TokenizeRequest,
    TokenizeResult,
)

log = logging.getLogger(__name__)

PROBE_TEXT = "mhaserve readiness probe"  # what the recovery probe embeds
FAST, ATTENTION = "fast", "attention"  # the two paths, named as the metrics name them


def attention_fields(plan: AttentionPlan | None) -> dict:
    """What an EmbedResult says of how its attention was computed."""
    if plan is None:
        return {}
    return dict(
        attention_layers=plan.layers,
        attention_heads=plan.heads,
        attention_reduce_heads=plan.reduce_heads,
        attention_rollout=plan.rollout,
        attention_rows=plan.rows,
    )


def truncate(embeddings: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """The first `dimensions` of each vector (a Matryoshka truncation), renormalised if asked."""
    if dimensions is None or dimensions == embeddings.shape[1]:
        return embeddings
    kept = np.ascontiguousarray(embeddings[:, :dimensions])
    return l2_normalize(kept) if normalize else kept


@dataclass(frozen=True)
class Scored:
    """A cross-encoder's sequences, computed: what rerank and predict make their answers from."""

    encodings: list[Encoding]
    results: list[PairResult]
    spans: list[tuple[Span, Span]]
    lengths: tuple[int, ...]
    attention: list[np.ndarray] | None
    timings: Timings


def pair_texts(inputs: list) -> list[str]:
    """Each sequence as one text, for the token estimate: a pair's two sides joined."""
    return [item if isinstance(item, str) else " ".join(item) for item in inputs]


class Engine:
    def __init__(
        self, settings: Settings, load_backend: Callable[[], Backend], metrics: Metrics | None = None, name: str = ""
    ):
        """name: the model's, as its manifest says, known before it loads (the fake backend's: "fake")."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.name = name or "fake"
        self.m = self.metrics.for_model(self.name)
        self.health = Health(self._probe, settings.recovery_probe_s)
        self._load_backend = load_backend
        self.backend: Backend | None = None
        self.info: ModelInfo | None = None
        self.capacity: Capacity | None = None
        self.validation: Validation | None = None
        self._batchers: dict[str, Batcher] = {}
        self._tokenizer: TokenizerWorker | None = None

    # lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.status is Status.READY

    @property
    def status(self) -> Status:
        status = self.health.status
        if status is Status.READY and self.capacity is not None and self.capacity.stuck():
            return Status.STUCK
        return status

    @property
    def status_reason(self) -> str | None:
        """Why the status is not ready, where more can be said than its name."""
        if self.status is Status.STUCK:
            assert self.capacity is not None
            return self.capacity.stuck_reason()
        return None

    @property
    def draining(self) -> bool:
        return self.health.draining

    @property
    def inflight(self) -> int:
        return self.capacity.inflight if self.capacity else 0

    async def start(self) -> None:
        """Load the backend (verifying its artifact), warm up; only then is the engine ready."""
        loop = asyncio.get_running_loop()
        backend = self.backend = await loop.run_in_executor(None, self._load_backend)
        if backend.spec.name != self.name:
            raise ArtifactError(f"the model loaded as {backend.spec.name!r}, not {self.name!r} as its manifest said")
        warm_s = await loop.run_in_executor(None, backend.warm_up)
        log.info("warm-up took %.2f s", warm_s)
        spec, placement = backend.spec, backend.placement
        self.info = ModelInfo(
            name=spec.name,
            version=spec.version,
            d_model=spec.d_model,
            embedding_dim=spec.embedding_dim,
            n_layers=spec.n_layers,
            n_heads=spec.n_heads,
            max_len=spec.max_len,
            pooling=spec.pooling,
            normalize=spec.normalize,
            provider=placement.provider,
            precision=placement.precision,
            graph=placement.graph,
            task=spec.task,
            labels=spec.labels,
        )
        card = (spec.name, spec.version, placement.provider, placement.precision, spec.task)
        self.metrics.model_info.labels(*card).set(1)
        self.capacity = Capacity(self.settings, spec.max_len, self._queued_tokens, self.m.inflight.set)
        self.validation = Validation(self.settings, spec)
        capacity = self.capacity
        self.m.watch_reservations(lambda: capacity.reserved_tokens, lambda: capacity.tickets)
        self._tokenizer = TokenizerWorker(backend.tokenizer)
        s = self.settings

        def run_fast(batch: list[Sequence]) -> list[SequenceResult]:
            options = [sequence.payload for sequence in batch]
            input_ids, attention_mask = batch_inputs(options)
            hidden = backend.embed(input_ids, attention_mask)
            return split_batch(hidden, attention_mask, options, attention=None, dense=backend.spec.dense)

        def run_attention(batch: list[Sequence]) -> list[SequenceResult]:
            options = [sequence.payload for sequence in batch]
            input_ids, attention_mask = batch_inputs(options)
            hidden, probs = backend.attend(input_ids, attention_mask)
            return split_batch(hidden, attention_mask, options, attention=probs, dense=backend.spec.dense)

        def run_pairs(batch: list[Sequence]) -> list[PairResult]:
            options = [sequence.payload for sequence in batch]
            input_ids, attention_mask, token_type_ids = batch_pair_inputs(options)
            logits = backend.score(input_ids, attention_mask, token_type_ids)
            return split_pairs(logits, attention_mask, options, attention=None)

        def run_pairs_attention(batch: list[Sequence]) -> list[PairResult]:
            options = [sequence.payload for sequence in batch]
            input_ids, attention_mask, token_type_ids = batch_pair_inputs(options)
            logits, probs = backend.score_attend(input_ids, attention_mask, token_type_ids)
            return split_pairs(logits, attention_mask, options, attention=probs)

        # a cross-encoder's sequences are pairs (or texts) scored into logits; an embedder's, texts
        fast, attention = (run_pairs, run_pairs_attention) if spec.is_cross_encoder else (run_fast, run_attention)
        self._batchers = {
            FAST: self._batcher(FAST, fast, s.max_batch_tokens, backend.workers, backend.inline_max_tokens),
            ATTENTION: self._batcher(ATTENTION, attention, s.attention_max_batch_tokens, workers=1),
        }
        for batcher in self._batchers.values():
            batcher.start()
        self.health.mark_started()

    def _batcher(
        self,
        path: str,
        run: Callable[[list[Sequence]], list],
        max_batch_tokens: int,
        workers: int,
        inline_max_tokens: int = 0,
    ) -> Batcher:
        return Batcher(
            path,
            run,
            max_batch_size=self.settings.max_batch_size,
            max_batch_tokens=max_batch_tokens,
            max_wait_ms=self.settings.max_wait_ms,
            on_batch=lambda stats: self._observe_batch(path, stats),
            on_drop=self._observe_drop,
            on_depth=self._observe_depth,
            more_coming=self._more_coming if self.settings.batch_wait == "adaptive" else None,
            thread_initializer=functools.partial(lower_thread_priority, self.settings.inference_nice),
            workers=workers,
            inline_max_tokens=inline_max_tokens if self.settings.batch_wait == "adaptive" else 0,
            alone=self._alone,
        )

    def withdraw(self) -> None:
        """Readiness turns false; requests are still served (balancers are catching up)."""
        self.health.withdraw()

    def begin_drain(self) -> None:
        """Readiness turns false and new requests are refused; in-flight ones go on."""
        self.health.begin_drain()

    async def stop(self, grace_s: float) -> None:
        self.begin_drain()
        if self.capacity is not None:
            try:
                await asyncio.wait_for(self.capacity.idle.wait(), grace_s)
            except TimeoutError:
                log.warning("%d requests still in flight after the %.0f s grace period", self.inflight, grace_s)
        for batcher in self._batchers.values():
            await batcher.stop()
        if self._tokenizer:
            self._tokenizer.close()

    # requests --------------------------------------------------------------------------

    def model_info(self) -> ModelInfo:
        """The served model; NotReady while loading or draining, as for every data call."""
        self.health.admit()
        assert self.info is not None
        return self.info

    def try_admit(self, texts: list[str] | tuple[str, ...]) -> Ticket | Overloaded:
        """The edges' decision before a request is validated: a ticket that holds its expected
        tokens against the queue's room until `embed` takes it over, or the refusal. While loading
        or draining the ticket holds nothing: `embed` answers the 503."""
        if self.capacity is None or self.draining:
            return UNHELD
        return self.capacity.try_admit(self.capacity.estimate_tokens(texts))

    async def embed(
        self, request: EmbedRequest, is_disconnected: Callable[[], bool] | None = None, ticket: Ticket | None = None
    ) -> EmbedResult:
        """ticket: what the edge's try_admit gave; without one the engine decides here, the same way
        (the exact check after tokenizing is made either way)."""
        admitted = self._take_over(ticket)  # from here the request is counted as being tokenized
        capacity, validation = self._admit()
        validation.check_task("embed")
        validation.check_dimensions(request.dimensions)
        pooling = validation.check_pooling(request.pooling)
        validation.check_inputs(request.inputs)
        inputs = validation.with_prompt(request.inputs, request.prompt_name)
        plan = validation.resolve_attention(request.attention)
        deadline = time.monotonic() + (request.timeout_s or self.settings.request_timeout_s)
        estimate = capacity.estimate_tokens(inputs)
        if not admitted and capacity.clearly_full(estimate):
            raise capacity.refusal()
        with capacity.in_flight():
            started = time.monotonic()
            with capacity.being_tokenized(estimate):
                encodings = await self._encode(inputs, request.truncate)
            tokenize_s = time.monotonic() - started
            lengths = [len(e.ids) for e in encodings]
            capacity.observe_tokens(estimate, sum(lengths))
            if plan is not None:
                validation.check_attention_rows(plan, lengths)
                validation.check_attention_values(plan, [plan.shape(n) for n in lengths])
            job = Job(len(encodings), deadline, is_disconnected)
            options = dict(
                pooling=pooling, normalize=request.normalize, token_embeddings=request.return_token_embeddings
            )
            sequences = [
                Sequence(job, i, lengths[i], SequenceOptions(e.ids, attention=plan, **options))
                for i, e in enumerate(encodings)
            ]
            capacity.check_room(sum(lengths))
            self._batchers[ATTENTION if request.attention is not None else FAST].submit(sequences)
            results: list[SequenceResult] = await self._wait(job, deadline)
            self.m.tokens.inc(sum(lengths))
            return EmbedResult(
                model=self.name,
                embeddings=truncate(np.stack([r.embedding for r in results]), request.dimensions, request.normalize),
                tokens=[to_tokens(e) for e in encodings] if request.return_tokens else None,
                token_embeddings=[r.token_embeddings for r in results] if request.return_token_embeddings else None,
                attention=[r.attention for r in results] if request.attention is not None else None,
                **attention_fields(plan),
                token_counts=tuple(lengths),
                timings=Timings(
                    queue_ms=job.queue_s * 1000.0,
                    inference_ms=job.inference_s * 1000.0,
                    tokenize_ms=tokenize_s * 1000.0,
                ),
            )

    async def rerank(
        self, request: RerankRequest, is_disconnected: Callable[[], bool] | None = None, ticket: Ticket | None = None
    ) -> RerankResult:
        """Each document is one (query, document) sequence to the batcher; one score each, in
        document order (RerankResult.ranking gives the order best first)."""
        admitted = self._take_over(ticket)
        capacity, validation = self._admit()
        validation.check_task("rerank")
        validation.check_documents(request.query, request.documents, request.top_n)
        plan = validation.resolve_attention(request.attention, pairs=True)
        pairs = [(request.query, document) for document in request.documents]
        scored = await self._score(
            pairs, "documents", request.truncate, plan, request.timeout_s, admitted, is_disconnected, capacity
        )
        logits = np.stack([r.logits for r in scored.results])
        scores = logits if request.raw_scores else activate(logits, self._activation())
        return RerankResult(
            model=self.name,
            scores=np.ascontiguousarray(scores[:, 0]),
            tokens=[to_tokens(e) for e in scored.encodings] if request.return_tokens else None,
            query_spans=tuple(q for q, _ in scored.spans),
            document_spans=tuple(d for _, d in scored.spans),
            attention=scored.attention,
            **attention_fields(plan),
            attention_block=plan.block if plan is not None else "full",
            token_counts=scored.lengths,
            top_n=request.top_n,
            timings=scored.timings,
        )

    async def predict(
        self, request: PredictRequest, is_disconnected: Callable[[], bool] | None = None, ticket: Ticket | None = None
    ) -> PredictResult:
        """Each input, a text or a pair, is one sequence; every label's score per input, best first."""
        admitted = self._take_over(ticket)
        capacity, validation = self._admit()
        validation.check_task("rerank", "classify")
        validation.check_predict_inputs(request.inputs, request.top_k)
        inputs = [item[0] if len(item) == 1 else (item[0], item[1]) for item in request.inputs]
        scored = await self._score(
            inputs, "inputs", request.truncate, None, request.timeout_s, admitted, is_disconnected, capacity
        )
        logits = np.stack([r.logits for r in scored.results])
        scores = logits if request.raw_scores else activate(logits, self._activation())
        labels = self.info.labels if self.info is not None else ()
        predictions = []
        for row in scores.tolist():
            ranked = sorted(zip(labels, row, strict=True), key=lambda pair: -pair[1])
            predictions.append([LabelScore(label, score) for label, score in ranked[: request.top_k]])
        return PredictResult(
            model=self.name, predictions=predictions, token_counts=scored.lengths, timings=scored.timings
        )

    async def _score(
        self,
        inputs: list,
        what: str,
        truncate: bool,
        plan: AttentionPlan | None,
        timeout_s: float | None,
        admitted: bool,
        is_disconnected: Callable[[], bool] | None,
        capacity: Capacity,
    ) -> Scored:
        """A cross-encoder's sequences through tokenizer, batcher and backend, as embed's are."""
        validation = self.validation
        assert validation is not None
        deadline = time.monotonic() + (timeout_s or self.settings.request_timeout_s)
        estimate = capacity.estimate_tokens(pair_texts(inputs))
        if not admitted and capacity.clearly_full(estimate):
            raise capacity.refusal()
        with capacity.in_flight():
            started = time.monotonic()
            with capacity.being_tokenized(estimate):
                encodings = await self._encode(inputs, truncate, what)
            tokenize_s = time.monotonic() - started
            lengths = [len(e.ids) for e in encodings]
            capacity.observe_tokens(estimate, sum(lengths))
            sides = [spans(e) for e in encodings]
            if plan is not None:
                if plan.block == "full":
                    validation.check_attention_rows(plan, lengths)
                shapes = [block_shape(plan, n, q, d) for n, (q, d) in zip(lengths, sides, strict=True)]
                validation.check_attention_values(plan, shapes)
            job = Job(len(encodings), deadline, is_disconnected)
            sequences = [
                Sequence(job, i, lengths[i], PairOptions(e.ids, e.type_ids, q, d, attention=plan))
                for i, (e, (q, d)) in enumerate(zip(encodings, sides, strict=True))
            ]
            capacity.check_room(sum(lengths))
            self._batchers[ATTENTION if plan is not None else FAST].submit(sequences)
            results: list[PairResult] = await self._wait(job, deadline)
            self.m.tokens.inc(sum(lengths))
            return Scored(
                encodings=encodings,
                results=results,
                spans=sides,
                lengths=tuple(lengths),
                attention=[r.attention for r in results] if plan is not None else None,
                timings=Timings(
                    queue_ms=job.queue_s * 1000.0,
                    inference_ms=job.inference_s * 1000.0,
                    tokenize_ms=tokenize_s * 1000.0,
                ),
            )

    def _take_over(self, ticket: Ticket | None) -> bool:
        """Whether the edge's ticket held room in this model's queue; taken over (released) either way."""
        admitted = ticket is not None and self.capacity is not None and ticket.held_for(self.capacity)
        if ticket is not None:
            ticket.release()
        return admitted

    def _activation(self) -> str:
        assert self.backend is not None
        return self.backend.spec.score_activation

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResult:
        capacity, validation = self._admit()
        validation.check_inputs(request.inputs)
        with capacity.in_flight():
            encodings = await self._encode(request.inputs, request.truncate)
            return TokenizeResult(model=self.model_info().name, tokens=[to_tokens(e) for e in encodings])

    # helpers ---------------------------------------------------------------------------

    def _admit(self) -> tuple[Capacity, Validation]:
        self.health.admit()
        assert self.capacity is not None and self.validation is not None
        return self.capacity, self.validation

    def _more_coming(self) -> bool:
        return self.capacity is not None and self.capacity.tokenizing > 0

    def _alone(self) -> bool:
        """The request being submitted is the only one in this model: none other in flight, being
        tokenized, or admitted at an edge and not yet here."""
        c = self.capacity
        return c is not None and c.inflight <= 1 and c.tokenizing == 0 and c.tickets == 0

    async def _encode(self, inputs: tuple | list, truncate: bool, what: str = "inputs") -> list[Encoding]:
        """what: the request field the inputs came from, to name one that is too long."""
        assert self._tokenizer is not None and self.info is not None
        encodings = await self._tokenizer.encode(list(inputs))
        if not truncate:
            for i, encoding in enumerate(encodings):
                if encoding.overflowing:
                    pair = " with the query" if what == "documents" else ""
                    raise InvalidRequest(
                        f"{what}[{i}]{pair} is longer than the model's {self.info.max_len} tokens: "
                        "shorten it, or send truncate: true to cut it there"
                    )
        return encodings

    def _queued_tokens(self) -> int:
        return sum(b.queued_tokens for b in self._batchers.values())

    async def _wait(self, job: Job, deadline: float) -> list:
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            error = DeadlineExceeded("the request's deadline passed before it was computed; retry or allow more time")
            job.fail(error)  # the batcher drops its sequences if they are still queued
            raise error from None
        except asyncio.CancelledError:
            job.fail(NotReady("request cancelled"))
            raise

    async def _probe(self) -> None:
        if self.info is not None and self.info.task != "embed":
            await self.predict(PredictRequest(inputs=((PROBE_TEXT, PROBE_TEXT),)))
        else:
            await self.embed(EmbedRequest(inputs=(PROBE_TEXT,)))

    # metrics ---------------------------------------------------------------------------

    def _observe_batch(self, path: str, stats: BatchStats) -> None:
        self.health.batch_done(stats.ok)
        if not stats.ok:
            return
        if path == FAST and self.capacity is not None:
            self.capacity.record_batch(stats.real_tokens, time.monotonic())
        m = self.m
        m.inference_duration[path].observe(stats.inference_s)
        m.batch_size.observe(stats.size)
        m.batch_tokens.observe(stats.padded_tokens)
        m.padding_ratio.observe(1.0 - stats.real_tokens / stats.padded_tokens)
        for seconds in stats.queue_s:
            m.queue_duration.observe(seconds)

    def _observe_drop(self, error: MhaserveError) -> None:
        reason = "deadline" if isinstance(error, DeadlineExceeded) else "cancelled"
        self.m.dropped[reason].inc()

    def _observe_depth(self) -> None:
        self.m.queue_depth.set(self._queued_tokens())
