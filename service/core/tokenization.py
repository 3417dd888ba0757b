"""Tokenization off the event loop: concurrent requests share one `encode_batch` call.

Tokenizing each request on the event loop is a known p99 killer; one call for every request
that arrived meanwhile is both off the loop and parallel inside tokenizers. The exception is a
short request while the worker is idle, which costs less on the loop than the hand-offs.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from tokenizers import Encoding, Tokenizer

from service.core.batcher import taking_turns
from service.errors import InvalidRequest
from service.types import Token

# a request this short (all its texts together) is tokenized on the event loop when the worker
# is idle: about 20 us for a sentence, at most ~100 us, against a few hundred for the hand-offs
INLINE_CHARS = 256


class TokenizerWorker:
    """Coalesces concurrent tokenization into one `encode_batch` call on a worker thread."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._pending: list[tuple[list, asyncio.Future]] = []
        self._draining = False
        self._drain_task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    async def encode(self, texts: list[str] | list[tuple[str, str]]) -> list[Encoding]:
        """texts: single texts, or (a, b) pairs, which encode as the tokenizer's pair template."""
        if not self._draining and characters(texts) <= INLINE_CHARS:
            return self._encode_inline(texts)
        future = asyncio.get_running_loop().create_future()
        self._pending.append((texts, future))
        if not self._draining:
            self._draining = True
            self._drain_task = asyncio.create_task(self._drain())
        return await future

    def _encode_inline(self, texts: list[str]) -> list[Encoding]:
        """A short request while nothing else is being tokenized: encoded on the loop, in tens of
        microseconds, cheaper than the two thread hand-offs of the worker (the idle latency)."""
        try:
            return self.tokenizer.encode_batch(texts)
        except Exception as exc:
            raise refused_text(exc) from None

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
                async for request_texts, future in taking_turns(group):
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
                if not future.done():
                    future.set_exception(refused_text(exc))
                continue
            if not future.done():
                future.set_result(encodings)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


def characters(texts: list[str] | list[tuple[str, str]]) -> int:
    return sum(len(t) if isinstance(t, str) else sum(map(len, t)) for t in texts)


def refused_text(exc: Exception) -> InvalidRequest:
    return InvalidRequest(f"could not tokenize the input: send valid Unicode text, no lone surrogates ({exc})")


def to_tokens(encoding: Encoding) -> list[Token]:
    return [
        Token(id=i, text=text, start=start, end=end)
        for i, text, (start, end) in zip(encoding.ids, encoding.tokens, encoding.offsets, strict=True)
    ]
