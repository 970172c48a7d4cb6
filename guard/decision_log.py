"""The decision log writer: decisions go to SQL in batches, off the request's critical path.

A request hands its decision to a bounded queue and returns; one background task writes
batches in a worker thread. When the database fails the batch is kept and retried with
backoff (a batch is idempotent, so nothing is doubled); when the queue is full, requests
wait for room rather than drop a decision. On shutdown the queue is drained.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from guard.store import DecisionRecord, Store

log = logging.getLogger(__name__)


class DecisionLog:
    def __init__(self, store: Store, *, max_queue: int = 10_000, batch_size: int = 200) -> None:
        self._store = store
        self._queue: asyncio.Queue[DecisionRecord] = asyncio.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-log-writer")

    async def put(self, record: DecisionRecord) -> None:
        await self._queue.put(record)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def flush(self) -> None:
        """Wait until every decision handed over so far is in the database."""
        await self._queue.join()

    async def stop(self, timeout_s: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            log.error("decision log: %d decisions not written at shutdown", self._queue.qsize())
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)
            for _ in batch:
                self._queue.task_done()

    async def _write(self, batch: list[DecisionRecord]) -> None:
        delay = 0.05
        while True:
            try:
                await asyncio.to_thread(self._store.record, batch)
            except Exception:
                self.failures += 1
                log.exception(
                    "decision log: writing %d decisions failed; retrying in %.2fs", len(batch), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.written += len(batch)
                return
