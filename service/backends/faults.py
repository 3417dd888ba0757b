"""Fault injection as a wrapper around a backend: the engine never knows faults exist.

A batch holding an input whose token ids equal those of `text` fails inside the runtime
call, as a broken graph or device would; the other batches are computed as usual. The
reliability suite starts servers with `--fault-inject-text` to prove that a failing
batch fails only its own requests and that readiness follows repeated failures.
"""

from __future__ import annotations

import logging

import numpy as np

from service.backends.base import Backend

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    pass


class FaultInjectingBackend:
    def __init__(self, inner: Backend, text: str):
        self.inner = inner
        self.spec, self.tokenizer, self.placement, self.workers, self.inline_max_tokens = (
            inner.spec,
            inner.tokenizer,
            inner.placement,
            inner.workers,
            inner.inline_max_tokens,
        )
        self.fault_ids = inner.tokenizer.encode(text).ids
        log.warning("fault injection is ON: batches holding %r will fail (testing only)", text)

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        self._check(input_ids, attention_mask)
        return self.inner.embed(input_ids, attention_mask)

    def attend(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check(input_ids, attention_mask)
        return self.inner.attend(input_ids, attention_mask)

    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        self._check(input_ids, attention_mask)
        return self.inner.score(input_ids, attention_mask, token_type_ids)

    def score_attend(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        self._check(input_ids, attention_mask)
        return self.inner.score_attend(input_ids, attention_mask, token_type_ids)

    def warm_up(self) -> float:
        return self.inner.warm_up()

    def _check(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        for ids, n in zip(input_ids, attention_mask.sum(1), strict=True):
            if ids[:n].tolist() == self.fault_ids:
                raise InjectedFault("injected fault (the fault_inject_text setting matched an input of this batch)")
