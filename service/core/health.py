"""Readiness: loading -> ready <-> failing, and draining at the end; the recovery probe.

Draining has two steps: withdrawn (readiness false, so balancers stop routing here, while
requests are still served) and then draining proper (new requests refused).

Readiness turns false after UNHEALTHY_AFTER_FAILED_BATCHES batches fail in a row, and true
again after the next batch that succeeds. Once it is false, Kubernetes routes no requests
here, so none could show that the runtime works again: a probe batch, run as a request is,
does that instead, every `probe_every_s`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import StrEnum

from service.errors import MhaserveError, NotReady

log = logging.getLogger(__name__)

UNHEALTHY_AFTER_FAILED_BATCHES = 3


class Status(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILING = "failing"
    DRAINING = "draining"
    STUCK = "stuck"  # refusing with an empty queue: see Capacity.stuck


class Health:
    def __init__(self, probe: Callable[[], Awaitable[object]], probe_every_s: float):
        self._probe = probe
        self._probe_every_s = probe_every_s
        self._probe_task: asyncio.Task | None = None
        self.started = False
        self.withdrawn = False
        self.draining = False
        self.failed_batches_in_a_row = 0

    @property
    def status(self) -> Status:
        if self.draining or self.withdrawn:
            return Status.DRAINING
        if not self.started:
            return Status.LOADING
        if self.failed_batches_in_a_row >= UNHEALTHY_AFTER_FAILED_BATCHES:
            return Status.FAILING
        return Status.READY

    @property
    def ready(self) -> bool:
        return self.status is Status.READY

    def admit(self) -> None:
        """Raises NotReady while loading or draining; a failing engine still takes requests
        (one may be the batch that shows it recovered)."""
        if self.draining:
            raise NotReady("the server is shutting down; retry (another replica will answer)")
        if not self.started:
            raise NotReady("the model is still loading; retry in a few seconds")

    def mark_started(self) -> None:
        self.started = True

    def withdraw(self) -> None:
        """Readiness turns false at once; requests are still admitted until begin_drain."""
        self.withdrawn = True

    def begin_drain(self) -> None:
        self.withdrawn = True
        self.draining = True
        if self._probe_task is not None:
            self._probe_task.cancel()

    def batch_done(self, ok: bool) -> None:
        if ok:
            self.failed_batches_in_a_row = 0
            return
        self.failed_batches_in_a_row += 1
        if self.failed_batches_in_a_row == UNHEALTHY_AFTER_FAILED_BATCHES:
            log.error(
                "%d batches failed in a row: readiness is now false; a probe batch every %.0f s checks for recovery",
                self.failed_batches_in_a_row,
                self._probe_every_s,
            )
            if self._probe_task is None or self._probe_task.done():
                self._probe_task = asyncio.create_task(self._probe_until_recovered(), name="recovery-probe")

    async def _probe_until_recovered(self) -> None:
        while True:
            await asyncio.sleep(self._probe_every_s)
            if self.ready or self.withdrawn:  # a request still routed here succeeded, or shutting down
                return
            try:
                await self._probe()
            except MhaserveError as error:
                log.warning("recovery probe failed (%s); next in %.0f s", error.message, self._probe_every_s)
            else:
                log.info("recovery probe batch succeeded: readiness is true again")
                return
