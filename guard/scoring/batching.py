"""Micro-batching: concurrent scoring requests share one ``score_batch`` call.

A model forward pass over 32 pairs costs far less than 32 passes over one pair, so requests
that arrive together are scored together. The batcher waits at most ``max_wait_s`` after the
first waiting request for others to join, takes at most ``max_items`` pairs into one batch
(a single request larger than that is scored on its own, never split), and runs the batch in
its one worker thread, off the event loop. While that thread is busy, new requests queue
up and form the next batch, so under load batches fill without any extra wait.

A batch that fails is retried request by request, so one poisonous request cannot fail the
requests it happened to share a batch with. Requests cancelled while they wait (their caller's
deadline passed) are dropped before they reach the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

from guard.scoring.base import ScoreInput, Scorer, ScoreResult

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    items: list[ScoreInput]
    future: asyncio.Future[list[ScoreResult]]
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    requests: int = 0
    largest: int = 0


class MicroBatcher:
    """Groups concurrent ``score`` calls into bounded ``scorer.score_batch`` calls on ``executor``.

    Bound to the event loop it is first used on. ``max_items=1`` scores one request at a time.
    """

    def __init__(self, scorer: Scorer, executor: Executor, *, max_items: int = 32, max_wait_s: float = 0.003):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        self.scorer = scorer
        self._executor = executor
        self._max_items = max_items
        self._max_wait = max_wait_s
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._carry: _Request | None = None
        self.stats = BatchStats()

    async def score(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        """Results for ``items``, in order; raises what ``score_batch`` raised for them."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._loop is not loop:
            self._queue = asyncio.Queue()
            self._carry = None
            self._loop = loop
            self._worker = loop.create_task(self._run(), name="score-batcher")
        request = _Request(list(items), loop.create_future())
        self._queue.put_nowait(request)
        return await request.future

    async def _next(self, wait_s: float | None) -> _Request | None:
        assert self._queue is not None
        if self._carry is not None:
            req, self._carry = self._carry, None
            return req
        if wait_s is None:
            return await self._queue.get()
        if wait_s <= 0:
            try:
                return self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), wait_s)
        except TimeoutError:
            return None

    async def _collect(self) -> list[_Request]:
        first = await self._next(None)
        assert first is not None
        batch = [first]
        size = len(first.items)
        deadline = time.perf_counter() + self._max_wait
        while size < self._max_items:
            req = await self._next(deadline - time.perf_counter())
            if req is None:
                break
            if req.future.done():  # cancelled while it waited
                continue
            if size + len(req.items) > self._max_items:
                self._carry = req
                break
            batch.append(req)
            size += len(req.items)
        return [r for r in batch if not r.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            items = [it for r in batch for it in r.items]
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.items += len(items)
            self.stats.largest = max(self.stats.largest, len(items))
            try:
                results = await loop.run_in_executor(self._executor, self.scorer.score_batch, items)
                if len(results) != len(items):
                    raise RuntimeError(f"scorer returned {len(results)} results for {len(items)} items")
            except asyncio.CancelledError:
                for r in batch:
                    if not r.future.done():
                        r.future.cancel()
                raise
            except Exception as exc:
                if len(batch) == 1:
                    _fail(batch[0], exc)
                    continue
                log.warning("a batch of %d requests failed (%r); scoring them one by one", len(batch), exc)
                for r in batch:
                    await self._score_alone(r)
                continue
            start = 0
            for r in batch:
                part = results[start : start + len(r.items)]
                start += len(r.items)
                if not r.future.done():
                    r.future.set_result(list(part))

    async def _score_alone(self, req: _Request) -> None:
        if req.future.done():
            return
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self.scorer.score_batch, req.items)
        except Exception as exc:
            _fail(req, exc)
            return
        if not req.future.done():
            req.future.set_result(list(results))

    def close(self) -> None:
        """Stop the batching task; requests still waiting are cancelled. Call it on the batcher's loop."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.done():
            worker.cancel()
        pending = [self._carry] if self._carry is not None else []
        self._carry = None
        if self._queue is not None:
            while not self._queue.empty():
                pending.append(self._queue.get_nowait())
        for r in pending:
            if not r.future.done():
                with contextlib.suppress(RuntimeError):  # its loop is already closed
                    r.future.cancel()


def _fail(req: _Request, exc: Exception) -> None:
    if not req.future.done():
        req.future.set_exception(exc)
