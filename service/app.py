"""One process, two servers: uvicorn (REST) and grpc.aio in one asyncio loop, one shutdown path.

Start-up: both servers listen first (liveness answers, readiness says "loading"), then the
model loads and warms up, then readiness turns true. SIGTERM/SIGINT: readiness false and
gRPC health NOT_SERVING at once; for shutdown_delay_s the server goes on serving, each REST
answer closing its connection, while load balancers take it out of rotation; then new
requests get 503 / UNAVAILABLE, in-flight requests finish within shutdown_grace_s, both
servers stop and the process exits 0.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
from pathlib import Path

from artifact.manifest import Artifact, ArtifactError
from service.backends.base import Backend, ModelSpec
from service.backends.fake import FAKE_SPEC, FAKE_SPECS, FakeBackend
from service.backends.faults import FaultInjectingBackend
from service.config import Settings
from service.core.engine import Engine
from service.core.models import Models
from service.grpc.server import GrpcServer, create_server
from service.http.app import create_app
from service.http.protocol import HttpServer, http_config
from service.memory import return_memory_after_bursts
from service.metrics import Metrics

log = logging.getLogger("mhaserve")
GC_THRESHOLDS = (50_000, 20, 100)  # allocations per young collection; young per middle; middle per full


def model_name(model_dir: Path) -> str:
    """The name a model is served under, from its manifest (checksums are verified as it loads)."""
    return Artifact.load(model_dir, verify=False).manifest.name


def load_backend(model_dir: Path | None, settings: Settings, fake_spec: ModelSpec = FAKE_SPEC) -> Backend:
    """onnxruntime on the artifact, or the fake of `fake_spec` (model_dir None); with
    --fault-inject-text, wrapped to fail matching batches. onnxruntime is imported only when it is used."""
    if model_dir is None:
        backend: Backend = FakeBackend(
            spec=fake_spec, workers=max(settings.inference_workers, 1), delay_s=settings.fake_batch_ms / 1000
        )
    else:
        from service.backends.onnx import OnnxBackend

        backend = OnnxBackend.load(model_dir, settings)
    if settings.fault_inject_text:
        backend = FaultInjectingBackend(backend, settings.fault_inject_text)
    return backend


def engines_to_serve(settings: Settings, metrics: Metrics) -> list[Engine]:
    """One engine per --model-dir, or with --backend fake one fake model per --fake-task."""
    if settings.backend == "fake":
        specs = [FAKE_SPECS[task] for task in dict.fromkeys(settings.fake_task)]
        return [
            Engine(settings, functools.partial(load_backend, None, settings, spec), metrics, name=spec.name)
            for spec in specs
        ]
    return [
        Engine(settings, functools.partial(load_backend, d, settings), metrics, name=model_name(d))
        for d in settings.model_dir
    ]


GRPC_STOP_GRACE_S = 1.0
QUIET_S = 0.25  # no request for this long: the clients have gone elsewhere


async def until_traffic_stops(metrics: Metrics, until: float) -> None:
    """While draining, keep refusing (503 / UNAVAILABLE) until no request has come for QUIET_S,
    or until `until`. A gRPC server that stops while calls still arrive cancels, not refuses,
    those it has received but not yet handed to the application (grpc-python's aio server)."""
    loop = asyncio.get_running_loop()
    seen = metrics.answered
    while loop.time() + QUIET_S < until:
        await asyncio.sleep(QUIET_S)
        if metrics.answered == seen:
            return
        seen = metrics.answered


async def leave_rotation(models: Models, grpc_server: GrpcServer, http: HttpServer, delay_s: float) -> None:
    """Readiness false and gRPC health NOT_SERVING at once, and every REST answer closes its
    connection; requests are still served for delay_s, the time a load balancer polling
    readiness needs to stop routing here. Refusing them at once would hand each a 503 (or
    UNAVAILABLE) that the balancer passes on to its client."""
    models.withdraw()
    grpc_server.set_not_serving()
    http.close_connections_after_answers()
    if delay_s > 0:
        log.info("leaving rotation: readiness is false, serving on for %.1f s before the drain", delay_s)
        await asyncio.sleep(delay_s)


async def serve(settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics = Metrics()
    engines = engines_to_serve(settings, metrics)
    try:
        models = Models(settings, engines, metrics)
    except ValueError as exc:
        raise ArtifactError(f"--model-dir: {exc}") from None
    app = create_app(settings, models)
    http = HttpServer(http_config(app, settings, models))
    http_task = asyncio.create_task(http.serve(), name="http")
    while not http.started:
        if http_task.done():  # e.g. the port is taken
            await http_task
            raise OSError(f"the REST server could not start on {settings.host}:{settings.http_port}")
        await asyncio.sleep(0.01)
    grpc_server = await create_server(settings, models, app.state.keys)
    scheme = "https" if settings.tls_cert is not None else "http"
    log.info(
        "listening: REST %s://%s:%d  gRPC %s:%d", scheme, settings.host, http.port, settings.host, grpc_server.port
    )
    if settings.tls_cert is not None:
        mtls = ", client certificates required on gRPC" if settings.tls_client_ca is not None else ""
        log.info("TLS on for REST and gRPC%s", mtls)

    loading = asyncio.create_task(models.start(), name="model-load")
    await asyncio.wait([loading, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        try:
            loading.result()
        except BaseException:
            http.should_exit = True
            await grpc_server.stop(0)
            await http_task
            raise
        # what start-up built (modules, the app, sessions) lives as long as the process: moved out
        # of the collector's reach, a full collection no longer walks it and pauses the event
        # loop for a fraction of the time
        gc.collect()
        gc.freeze()
        # under load every request in flight lives for seconds: at the default thresholds (700,
        # 10, 10) the collector runs hundreds of times a second and its older generations walk
        # them all again and again, each pass a pause of every request and refusal; cycles are
        # rare here, and refcounting frees the rest (docs/reliability.md)
        gc.set_threshold(*GC_THRESHOLDS)
        grpc_server.set_serving()
        for info in models.model_infos():
            log.info("ready: %s", info)
        trimming = asyncio.create_task(return_memory_after_bursts(metrics), name="malloc-trim")
        await stop.wait()
        trimming.cancel()
        await leave_rotation(models, grpc_server, http, settings.shutdown_delay_s)
    else:
        loading.cancel()

    log.info("shutting down: draining in-flight requests (grace %.0f s)", settings.shutdown_grace_s)
    stop_by = loop.time() + settings.shutdown_grace_s
    grpc_server.set_not_serving()
    await models.stop(settings.shutdown_grace_s)
    await until_traffic_stops(metrics, stop_by - GRPC_STOP_GRACE_S)
    http.should_exit = True
    await http_task
    # in-flight RPCs already finished in engine.stop; a short grace lets their answers flush
    await grpc_server.stop(GRPC_STOP_GRACE_S)
    log.info("stopped")
