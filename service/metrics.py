"""Prometheus collectors: one registry per server, every series present from start-up."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from service.errors import ERROR_TYPES, MhaserveError

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)
GRAPHS = ("fast", "attention")
DROP_REASONS = ("cancelled", "deadline")
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.answered = 0  # requests answered on any transport: the drain watches it to see traffic stop
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "mhaserve_requests",
            "Requests answered, by transport, route and status code",
            ["transport", "route", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "mhaserve_request_duration_seconds",
            "Time from request parsed to answer ready",
            ["transport", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "mhaserve_queue_duration_seconds",
            "Time a sequence waited in the batcher's queue, by model",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "mhaserve_inference_duration_seconds",
            "onnxruntime run time of one batch, by model and graph",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "mhaserve_batch_size", "Sequences per batch, by model", ["model"], buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "mhaserve_batch_tokens",
            "Padded tokens per batch (longest x count), by model",
            ["model"],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=r,
        )
        self.padding_ratio = Histogram(
            "mhaserve_padding_ratio",
            "Share of a batch's padded tokens that are padding, by model",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "mhaserve_queue_depth", "Tokens waiting in the batchers' queues, by model", ["model"], registry=r
        )
        self.inflight = Gauge(
            "mhaserve_inflight_requests", "Requests being served now, by model", ["model"], registry=r
        )
        self.reserved_tokens = Gauge(
            "mhaserve_reserved_tokens",
            "Tokens held against the queue's room by requests let in but not yet taken over by the engine",
            ["model"],
            registry=r,
        )
        self.reservations = Gauge(
            "mhaserve_reservations",
            "Requests holding reserved tokens (see mhaserve_reserved_tokens)",
            ["model"],
            registry=r,
        )
        self.tokens = Counter(
            "mhaserve_tokens", "Tokens embedded (special tokens included), by model", ["model"], registry=r
        )
        self.errors = Counter("mhaserve_errors", "Errors answered, by type", ["type"], registry=r)
        self.dropped = Counter(
            "mhaserve_dropped_sequences",
            "Queued sequences dropped before inference, by model and reason",
            ["model", "reason"],
            registry=r,
        )
        self.model_info = Gauge(
            "mhaserve_model_info",
            "The models being served, with what each does (task: embed, rerank or classify)",
            ["name", "version", "provider", "precision", "task"],
            registry=r,
        )
        for error_type in ERROR_TYPES:
            self.errors.labels(error_type)

    def for_model(self, name: str) -> ModelMetrics:
        """The series of one served model, created now so dashboards see zeros, not gaps."""
        return ModelMetrics(self, name)

    def declare_routes(self, transport: str, routes: list[str]) -> None:
        """Create a route's series at start-up so dashboards and rate() see zeros, not gaps."""
        for route in routes:
            self.request_duration.labels(transport, route)
            self.requests.labels(transport, route, "200" if transport == "http" else "OK")

    def observe_request(self, transport: str, route: str, code: str, seconds: float) -> None:
        self.answered += 1
        self.requests.labels(transport, route, code).inc()
        self.request_duration.labels(transport, route).observe(seconds)

    def observe_error(self, error: MhaserveError) -> None:
        self.errors.labels(error.type).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """One model's children of the per-model series."""

    def __init__(self, metrics: Metrics, model: str):
        self.queue_duration = metrics.queue_duration.labels(model)
        self.inference_duration = {graph: metrics.inference_duration.labels(model, graph) for graph in GRAPHS}
        self.batch_size = metrics.batch_size.labels(model)
        self.batch_tokens = metrics.batch_tokens.labels(model)
        self.padding_ratio = metrics.padding_ratio.labels(model)
        self.queue_depth = metrics.queue_depth.labels(model)
        self.inflight = metrics.inflight.labels(model)
        self.reserved_tokens = metrics.reserved_tokens.labels(model)
        self.reservations = metrics.reservations.labels(model)
        self.tokens = metrics.tokens.labels(model)
        self.dropped = {reason: metrics.dropped.labels(model, reason) for reason in DROP_REASONS}

    def watch_reservations(self, tokens: Callable[[], float], held: Callable[[], float]) -> None:
        """The reserved-tokens gauges read the accounting at each scrape, so it can be checked."""
        self.reserved_tokens.set_function(tokens)
        self.reservations.set_function(held)
