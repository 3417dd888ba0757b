"""The Engine: validate → tokenize → batch → run → pool/slice → typed result.

Every transport calls `Engine.embed` / `Engine.tokenize` with a typed request and formats
the typed result; limits, batching, errors and readiness are decided here, once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer

from artifact.manifest import Artifact, Manifest
from service.auth import ApiKeys
from service.batcher import Batcher, BatchStats, Job, Sequence
from service.config import Settings
from service.errors import (
    DeadlineExceeded,
    InvalidRequest,
    MhaserveError,
    NotReady,
    Overloaded,
    PayloadTooLarge,
)
from service.metrics import Metrics
from artifact.pooling import mean_pool, pad_batch
from service.runtime import GraphRunner, Runtime, lower_thread_priority
from service.types import (
    AttentionSelection,
    EmbedRequest,
    EmbedResult,
    ModelInfo,
    Timings,
    Token,
    TokenizeRequest,
    TokenizeResult,
)

log = logging.getLogger(__name__)

UNHEALTHY_AFTER_FAILED_BATCHES = 3  # consecutive failures that turn readiness false
PROBE_TEXT = "mhaserve readiness probe"  # what the recovery probe embeds


class TokenizerWorker:
    """Coalesces concurrent tokenization into one `encode_batch` call on a worker thread.

    Tokenizing each request on the event loop is a known p99 killer; one call for every
    request that arrived meanwhile is both off the loop and parallel inside tokenizers.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._pending: list[tuple[list[str], asyncio.Future]] = []
        self._draining = False
        self._drain_task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    async def encode(self, texts: list[str]) -> list[Encoding]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if not self._draining:
            self._draining = True
            self._drain_task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                group, self._pending = self._pending, []
                texts = [text for request_texts, _ in group for text in request_texts]
                try:
                    encodings = await loop.run_in_executor(self._executor, self.tokenizer.encode_batch, texts)
                except Exception:
                    # one request's text (e.g. a lone surrogate) must not fail the others: each on its own
                    await self._encode_each(loop, group)
                    continue
                start = 0
                for request_texts, future in group:
                    if not future.done():
                        future.set_result(encodings[start : start + len(request_texts)])
                    start += len(request_texts)
        finally:
            self._draining = False

    async def _encode_each(
        self, loop: asyncio.AbstractEventLoop, group: list[tuple[list[str], asyncio.Future]]
    ) -> None:
        for texts, future in group:
            try:
                encodings = await loop.run_in_executor(self._executor, self.tokenizer.encode_batch, texts)
            except Exception as exc:
                error = InvalidRequest(
                    f"could not tokenize the input: send valid Unicode text, no lone surrogates ({exc})"
                )
                if not future.done():
                    future.set_exception(error)
                continue
            if not future.done():
                future.set_result(encodings)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


@dataclass(frozen=True)
class SequenceOptions:
    """What one queued sequence needs from its batch (carried as Sequence.payload)."""

    token_ids: list[int]
    pooling: str
    normalize: bool
    token_embeddings: bool
    layers: tuple[int, ...] = ()
    heads: tuple[int, ...] = ()


@dataclass(frozen=True)
class SequenceResult:
    embedding: np.ndarray  # (d_model,)
    token_embeddings: np.ndarray | None  # (len, d_model)
    attention: np.ndarray | None  # (n_layers_sel, n_heads_sel, len, len)


class InjectedFault(RuntimeError):
    """Raised inside the worker thread when fault_inject_text is set and matched (tests only)."""


def check_fault(batch: list[Sequence], fault_ids: list[int] | None) -> None:
    if fault_ids is not None and any(s.payload.token_ids == fault_ids for s in batch):
        raise InjectedFault("injected fault (the fault_inject_text setting matched an input of this batch)")


def run_fast_batch(runner: GraphRunner, batch: list[Sequence]) -> list[SequenceResult]:
    input_ids, attention_mask = pad_batch([s.payload.token_ids for s in batch])
    (hidden,) = runner.run(input_ids, attention_mask)
    return pool_batch(hidden, attention_mask, batch, attention=None)


def run_attention_batch(runner: GraphRunner, batch: list[Sequence]) -> list[SequenceResult]:
    input_ids, attention_mask = pad_batch([s.payload.token_ids for s in batch])
    hidden, probs = runner.run(input_ids, attention_mask)  # probs: (B, L, h, T, T)
    return pool_batch(hidden, attention_mask, batch, attention=probs)


def pool_batch(
    hidden: np.ndarray, attention_mask: np.ndarray, batch: list[Sequence], attention: np.ndarray | None
) -> list[SequenceResult]:
    """Per-sequence pooling options applied to one batch's hidden states (B, T, C)."""
    hidden = hidden.astype(np.float32, copy=False)
    means = mean_pool(hidden, attention_mask.sum(1))
    results = []
    for i, sequence in enumerate(batch):
        options: SequenceOptions = sequence.payload
        vector = means[i] if options.pooling == "mean" else hidden[i, 0].copy()
        if options.normalize:
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        n = sequence.length
        tokens = hidden[i, :n].copy() if options.token_embeddings else None
        probs = None
        if attention is not None:
            selected = attention[i][list(options.layers)][:, list(options.heads)]  # (l, h, T, T)
            probs = np.ascontiguousarray(selected[:, :, :n, :n], dtype=np.float32)
        results.append(SequenceResult(vector.astype(np.float32, copy=False), tokens, probs))
    return results


def to_tokens(encoding: Encoding) -> list[Token]:
    return [
        Token(id=i, text=text, start=start, end=end)
        for i, text, (start, end) in zip(encoding.ids, encoding.tokens, encoding.offsets, strict=True)
    ]


class Engine:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.keys = ApiKeys(settings)
        self.artifact: Artifact | None = None
        self.runtime: Runtime | None = None
        self.info: ModelInfo | None = None
        self.started = False
        self.draining = False
        self.failed_batches_in_a_row = 0
        self.inflight = 0
        self.tokenizing = 0  # admitted requests not yet queued: company for a waiting batch
        self.tokenizing_tokens = 0  # their estimated tokens, counted against the queue's room
        self._batchers: dict[str, Batcher] = {}
        self._tokenizer: TokenizerWorker | None = None
        self._probe: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # lifecycle -------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        assert self.artifact is not None, "engine not started"
        return self.artifact.manifest

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and self.failed_batches_in_a_row < UNHEALTHY_AFTER_FAILED_BATCHES

    def model_info(self) -> ModelInfo:
        self._admit()
        assert self.info is not None
        return self.info

    async def start(self) -> None:
        """Verify the artifact, load sessions, warm up; only then is the engine ready."""
        loop = asyncio.get_running_loop()
        self.artifact = await loop.run_in_executor(None, Artifact.load, self.settings.model_dir)
        self.runtime = await loop.run_in_executor(None, Runtime.load, self.artifact, self.settings)
        manifest = self.artifact.manifest
        tokenizer = Tokenizer.from_file(str(self.artifact.tokenizer_path))
        tokenizer.enable_truncation(max_length=manifest.max_len)
        tokenizer.no_padding()
        self._tokenizer = TokenizerWorker(tokenizer)
        warm_s = await loop.run_in_executor(None, self.runtime.warm_up, manifest.max_len)
        log.info("warm-up took %.2f s", warm_s)
        self.info = ModelInfo(
            name=manifest.name,
            version=manifest.version,
            d_model=manifest.d_model,
            n_layers=manifest.n_layers,
            n_heads=manifest.n_heads,
            max_len=manifest.max_len,
            pooling=manifest.pooling,
            normalize=manifest.normalize,
            provider=self.runtime.fast.provider,
            precision=self.runtime.fast.precision,
            graph=self.runtime.fast.file,
        )
        self.metrics.model_info.labels(manifest.name, manifest.version, self.info.provider, self.info.precision).set(1)
        s = self.settings
        fast, attention = self.runtime.fast, self.runtime.attention
        fault_ids = tokenizer.encode(s.fault_inject_text).ids if s.fault_inject_text else None
        if fault_ids is not None:
            log.warning("fault injection is ON: batches holding %r will fail (testing only)", s.fault_inject_text)

        def run_fast(batch: list[Sequence]) -> list[SequenceResult]:
            check_fault(batch, fault_ids)
            return run_fast_batch(fast, batch)

        def run_attention(batch: list[Sequence]) -> list[SequenceResult]:
            check_fault(batch, fault_ids)
            return run_attention_batch(attention, batch)

        self._batchers = {
            "fast": self._batcher("fast", run_fast, s.max_batch_tokens, self.runtime.workers),
            "attention": self._batcher("attention", run_attention, s.attention_max_batch_tokens, workers=1),
        }
        for batcher in self._batchers.values():
            batcher.start()
        self.started = True

    def _batcher(
        self, graph: str, run: Callable[[list[Sequence]], list], max_batch_tokens: int, workers: int
    ) -> Batcher:
        return Batcher(
            graph,
            run,
            max_batch_size=self.settings.max_batch_size,
            max_batch_tokens=max_batch_tokens,
            max_wait_ms=self.settings.max_wait_ms,
            on_batch=lambda stats: self._observe_batch(graph, stats),
            on_drop=self._observe_drop,
            on_depth=self._observe_depth,
            more_coming=self._more_coming if self.settings.batch_wait == "adaptive" else None,
            thread_initializer=functools.partial(lower_thread_priority, self.settings.inference_nice),
            workers=workers,
        )

    def begin_drain(self) -> None:
        """Readiness turns false and new requests are refused; in-flight ones go on."""
        self.draining = True

    async def stop(self, grace_s: float) -> None:
        self.begin_drain()
        if self._probe is not None:
            self._probe.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            log.warning("%d requests still in flight after the %.0f s grace period", self.inflight, grace_s)
        for batcher in self._batchers.values():
            await batcher.stop()
        if self._tokenizer:
            self._tokenizer.close()

    # requests --------------------------------------------------------------------------

    async def embed(self, request: EmbedRequest, is_disconnected: Callable[[], bool] | None = None) -> EmbedResult:
        self._admit()
        manifest = self.manifest
        pooling = request.pooling or manifest.pooling
        if pooling not in ("mean", "cls"):
            raise InvalidRequest(f"pooling {pooling!r} is not supported: use 'mean' or 'cls'")
        self._check_inputs(request.inputs)
        layers, heads = self._resolve_attention(request.attention)
        deadline = time.monotonic() + (request.timeout_s or self.settings.request_timeout_s)
        estimate = self._estimate_tokens(request.inputs)
        self._refuse_when_full(estimate)
        self._enter()
        try:
            started = time.monotonic()
            encodings = await self._encode(request.inputs, request.truncate, estimate)
            tokenize_s = time.monotonic() - started
            lengths = [len(e.ids) for e in encodings]
            if request.attention is not None:
                values = sum(len(layers) * len(heads) * n * n for n in lengths)
                if values > self.settings.max_attention_values:
                    raise PayloadTooLarge(
                        f"the attention answer would hold {values:,} values, over the limit of "
                        f"{self.settings.max_attention_values:,}: ask for fewer layers or heads, shorter or fewer "
                        "inputs, or raise --max-attention-values"
                    )
            graph = "attention" if request.attention is not None else "fast"
            job = Job(len(encodings), deadline, is_disconnected)
            sequences = [
                Sequence(
                    job,
                    i,
                    lengths[i],
                    SequenceOptions(
                        token_ids=encoding.ids,
                        pooling=pooling,
                        normalize=request.normalize,
                        token_embeddings=request.return_token_embeddings,
                        layers=layers,
                        heads=heads,
                    ),
                )
                for i, encoding in enumerate(encodings)
            ]
            self._enqueue(graph, sequences)
            results: list[SequenceResult] = await self._wait(job, deadline)
            self.metrics.tokens.inc(sum(lengths))
            return EmbedResult(
                model=manifest.name,
                embeddings=np.stack([r.embedding for r in results]),
                tokens=[to_tokens(e) for e in encodings] if request.return_tokens else None,
                token_embeddings=[r.token_embeddings for r in results] if request.return_token_embeddings else None,
                attention=[r.attention for r in results] if request.attention is not None else None,
                attention_layers=layers,
                attention_heads=heads,
                token_counts=tuple(lengths),
                timings=Timings(
                    queue_ms=job.queue_s * 1000.0,
                    inference_ms=job.inference_s * 1000.0,
                    tokenize_ms=tokenize_s * 1000.0,
                ),
            )
        finally:
            self._leave()

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResult:
        self._admit()
        self._check_inputs(request.inputs)
        self._enter()
        try:
            encodings = await self._encode(request.inputs, request.truncate)
            return TokenizeResult(model=self.manifest.name, tokens=[to_tokens(e) for e in encodings])
        finally:
            self._leave()

    # helpers ---------------------------------------------------------------------------

    def _admit(self) -> None:
        if not self.started:
            raise NotReady("the model is still loading; retry in a few seconds")
        if self.draining:
            raise NotReady("the server is shutting down; retry (another replica will answer)")

    def _enter(self) -> None:
        self.inflight += 1
        self._idle.clear()
        self.metrics.inflight.set(self.inflight)

    def _leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        if self.inflight == 0:
            self._idle.set()

    def _check_inputs(self, inputs: tuple[str, ...]) -> None:
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

    def _resolve_attention(self, selection: AttentionSelection | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if selection is None:
            return (), ()
        manifest = self.manifest
        layers = self._indices(selection.layers, manifest.n_layers, "layer")
        heads = self._indices(selection.heads, manifest.n_heads, "head")
        return layers, heads

    @staticmethod
    def _indices(chosen: tuple[int, ...] | None, count: int, what: str) -> tuple[int, ...]:
        if chosen is None:
            return tuple(range(count))
        if not chosen:
            raise InvalidRequest(f'return_attention.{what}s is empty: list at least one {what} or say "all"')
        for value in chosen:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
                raise InvalidRequest(f"{what} {value!r} does not exist: the model has {what}s 0..{count - 1}")
        if len(set(chosen)) != len(chosen):
            raise InvalidRequest(f"return_attention.{what}s lists a {what} twice: {list(chosen)}")
        return tuple(chosen)

    def _more_coming(self) -> bool:
        return self.tokenizing > 0

    async def _encode(self, inputs: tuple[str, ...], truncate: bool, estimate: int = 0) -> list[Encoding]:
        assert self._tokenizer is not None
        self.tokenizing += 1
        self.tokenizing_tokens += estimate
        try:
            encodings = await self._tokenizer.encode(list(inputs))
        finally:
            self.tokenizing -= 1
            self.tokenizing_tokens -= estimate
        if not truncate:
            for i, encoding in enumerate(encodings):
                if encoding.overflowing:
                    raise InvalidRequest(
                        f"inputs[{i}] is longer than the model's {self.manifest.max_len} tokens: "
                        "shorten it, or send truncate: true to cut it there"
                    )
        return encodings

    def _estimate_tokens(self, inputs: tuple[str, ...]) -> int:
        """Tokens a request will hold, guessed without tokenizing: its words plus [CLS] and [SEP]
        (WordPiece gives ordinary text at least a token per word), at most max_len per input."""
        max_len = self.manifest.max_len
        return sum(min(max_len, len(text.split()) + 2) for text in inputs)

    def _refuse_when_full(self, estimate: int) -> None:
        """Under overload, refuse before tokenizing: a refusal then costs no tokenizer round trip
        and never waits behind other requests' tokenization. Only while other work is queued, and
        never for a request too big for any queue (that gets its exact 413 after tokenizing);
        `_enqueue` makes the exact decision for everything let through."""
        queued, limit = self._queued_tokens(), self.settings.max_queue_tokens
        if queued and estimate <= limit and queued + self.tokenizing_tokens + estimate > limit:
            raise self._at_capacity(queued)

    def _queued_tokens(self) -> int:
        return sum(b.queued_tokens for b in self._batchers.values())

    def _at_capacity(self, queued: int) -> Overloaded:
        return Overloaded(
            f"the server is at capacity ({queued:,} tokens queued, limit {self.settings.max_queue_tokens:,}); "
            "retry after the Retry-After interval",
            retry_after_s=1,
        )

    def _enqueue(self, graph: str, sequences: list[Sequence]) -> None:
        tokens = sum(s.length for s in sequences)
        queued = self._queued_tokens()
        if tokens > self.settings.max_queue_tokens:
            raise PayloadTooLarge(
                f"this request holds {tokens:,} tokens, more than the whole queue takes "
                f"({self.settings.max_queue_tokens:,}): split it into smaller requests"
            )
        if queued + tokens > self.settings.max_queue_tokens:
            raise self._at_capacity(queued)
        self._batchers[graph].submit(sequences)

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

    # metrics ---------------------------------------------------------------------------

    def _observe_batch(self, graph: str, stats: BatchStats) -> None:
        m = self.metrics
        if not stats.ok:
            self.failed_batches_in_a_row += 1
            if self.failed_batches_in_a_row == UNHEALTHY_AFTER_FAILED_BATCHES:
                log.error(
                    "%d batches failed in a row: readiness is now false; a probe batch every %.0f s checks "
                    "for recovery",
                    self.failed_batches_in_a_row,
                    self.settings.recovery_probe_s,
                )
                if self._probe is None or self._probe.done():
                    self._probe = asyncio.create_task(self._probe_until_recovered(), name="recovery-probe")
            return
        self.failed_batches_in_a_row = 0
        m.inference_duration.labels(graph).observe(stats.inference_s)
        m.batch_size.observe(stats.size)
        m.batch_tokens.observe(stats.padded_tokens)
        m.padding_ratio.observe(1.0 - stats.real_tokens / stats.padded_tokens)
        for seconds in stats.queue_s:
            m.queue_duration.observe(seconds)

    async def _probe_until_recovered(self) -> None:
        """Once readiness is false, Kubernetes routes no requests here, so none could show that
        the runtime works again; a probe batch, run as a request is, does that instead."""
        while True:
            await asyncio.sleep(self.settings.recovery_probe_s)
            if self.ready or self.draining:  # a request still routed here succeeded, or shutting down
                return
            try:
                await self.embed(EmbedRequest(inputs=(PROBE_TEXT,)))
            except MhaserveError as error:
                log.warning("recovery probe failed (%s); next in %.0f s", error.message, self.settings.recovery_probe_s)
            else:
                log.info("recovery probe batch succeeded: readiness is true again")
                return

    def _observe_drop(self, error: MhaserveError) -> None:
        reason = "deadline" if isinstance(error, DeadlineExceeded) else "cancelled"
        self.metrics.dropped.labels(reason).inc()

    def _observe_depth(self) -> None:
        self.metrics.queue_depth.set(self._queued_tokens())
