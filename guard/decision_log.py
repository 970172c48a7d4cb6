"""The decision log writer: decisions go to SQL in batches, off the request's critical path.

With a spool (``GUARD_SPOOL_DIR``, guard/spool.py) a request's decision is first appended to a
local, fsync'd journal, and only then does the request return. Appends are group-committed:
while one fsync runs, the decisions that arrive meanwhile gather and share the next one, so
the cost per decision falls as load rises. Once durable, a decision is handed to a bounded
in-memory queue; one background task writes batches to SQL in a worker thread, and a journal
segment is deleted only after SQL holds all of it. When the database fails, the batch is kept
and retried with backoff (a batch is idempotent, so nothing is doubled); when the queue is full
the decision waits on disk instead of in memory, and is replayed from there. On start-up the
segments a previous process left behind (a crash, a kill -9) are replayed.

When an append fails (the disk is full or failing), GUARD_SPOOL_ON_ERROR decides: ``503`` refuses
the decision (SpoolUnavailable: nothing is answered that is not durable); ``hold`` refuses it too,
and the pipeline then holds the reply and hands that decision over with ``or_memory``; ``memory``
keeps it in memory. A decision kept in memory only is recorded with ``durable=False``.

Without a spool (``GUARD_SPOOL_DIR`` empty) decisions wait in the queue only, and when it is
full requests wait for room rather than drop a decision. On shutdown the queue is drained.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import exc as sa_exc

from guard.errors import SpoolUnavailable
from guard.metrics import Metrics
from guard.records import DecisionRecord
from guard.settings import Settings, SpoolOnError
from guard.spool import Spool, encode_record, iter_batches, read_segment
from guard.store import Store

log = logging.getLogger(__name__)

_Item = tuple[int | None, DecisionRecord]
"""(spool segment, record); the segment is None without a spool."""
_Pending = tuple[bytes, DecisionRecord, "asyncio.Future[bool]", bool]
"""A decision waiting for the next fsync: (spool line, record, its caller's future, memory allowed)."""


class DecisionLog:
    def __init__(
        self,
        store: Store,
        *,
        max_queue: int = 10_000,
        batch_size: int = 200,
        spool: Spool | None = None,
        max_retry_delay_s: float = 5.0,
        linger_s: float = 0.0,
        on_spool_error: SpoolOnError = "503",
    ) -> None:
        self._store = store
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max_queue)
        self._batch_size = max(1, batch_size)
        self._spool = spool
        self._max_delay = max_retry_delay_s
        self._linger = linger_s
        self._task: asyncio.Task[None] | None = None
        self._orphans: list[Path] = []
        self._replaying = 0
        # Group commit: lines waiting for the next fsync, and the task that runs it.
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool") if spool else None
        self.written = 0
        self.failures = 0
        self.replayed = 0
        self.spool_errors = 0
        self.skipped_lines = 0
        self.rejected = 0
        self._on_spool_error = on_spool_error
        self.spool_refused = 0
        """Decisions refused (503) or held because the spool could not write them."""
        self.not_durable = 0
        """Decisions answered while the spool could not write them (``hold``, ``memory``)."""
        self.spool_error: str | None = None
        """Why the last append to the spool failed, while it fails (None: the spool writes)."""

    def start(self) -> None:
        if self._spool is not None:
            self._orphans = self._spool.open()
        self._task = asyncio.create_task(self._run(), name="decision-log-writer")

    # Handing decisions over ---------------------------------------------------------------------

    async def put(self, record: DecisionRecord, *, or_memory: bool | None = None) -> bool:
        """Hand a decision over. True once it is durable (fsync'd in the spool); False when it waits
        for SQL in memory only, its record then marked ``durable=False``: there is no spool, or the
        spool could not write and memory is allowed (``or_memory``; by default only when
        GUARD_SPOOL_ON_ERROR=memory). Else a failed append raises SpoolUnavailable, and the decision
        is not kept (the caller answers 503, or holds the reply and hands that decision over)."""
        if self._spool is None:
            await self._queue.put((None, _in_memory(record)))
            return False
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()
        memory_ok = self._on_spool_error == "memory" if or_memory is None else or_memory
        self._pending.append((encode_record(record), record, done, memory_ok))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_spool(), name="spool-group-commit")
        # If this caller is cancelled (its client went away) the decision still becomes durable
        # and reaches SQL: the flusher owns it from here.
        return await done

    async def _flush_spool(self) -> None:
        assert self._spool is not None
        loop = asyncio.get_running_loop()
        while self._pending:
            group, self._pending = self._pending, []
            data = b"".join(line for line, _, _, _ in group)
            try:
                seq = await loop.run_in_executor(self._io, self._spool.append, data, len(group))
            except Exception as exc:
                self.spool_errors += 1
                self.spool_error = _brief(exc)
                await self._fall_back(group, exc)
                continue
            self.spool_error = None
            for _line, record, done, _memory_ok in group:
                try:
                    self._queue.put_nowait((seq, record))
                except asyncio.QueueFull:  # it waits on disk; the writer replays the segment later
                    self._spool.mark_spilled(seq)
                if not done.done():
                    done.set_result(True)

    async def _fall_back(self, group: list[_Pending], exc: Exception) -> None:
        """A group the spool could not take: each decision in memory, or refused (SpoolUnavailable)."""
        kept = sum(memory_ok for *_, memory_ok in group)
        why = self.spool_error or _brief(exc)
        log.error(
            "spool: could not append %d decisions (%s); %d kept in memory only, %d refused"
            " (GUARD_SPOOL_ON_ERROR=%s)",
            len(group),
            why,
            kept,
            len(group) - kept,
            self._on_spool_error,
        )
        for _line, record, done, memory_ok in group:
            if not memory_ok:
                self.spool_refused += 1
                if not done.done():
                    done.set_exception(SpoolUnavailable.because(why))
                continue
            await self._queue.put((None, _in_memory(record)))
            self.not_durable += 1
            if not done.done():
                done.set_result(False)

    @property
    def spool_state(self) -> str:
        """ "ok" (appends succeed), "failing" (the last append failed) or "off" (no spool)."""
        if self._spool is None:
            return "off"
        return "failing" if self.spool_error is not None else "ok"

    async def probe_spool(self) -> str:
        """The spool's state; while it fails, first try a small durable write (has it recovered?)."""
        if self._spool is not None and self.spool_error is not None:
            try:
                await self._in_io(self._spool.probe)
            except Exception as exc:
                self.spool_error = _brief(exc)
            else:
                self.spool_error = None
        return self.spool_state

    def register_metrics(self, metrics: Metrics) -> None:
        metrics.gauge_from(
            "guard_decision_log_pending",
            "Decisions not in SQL yet: the backlog in memory and in the spool.",
            lambda: float(self.pending),
        )
        metrics.counter_from(
            "guard_decision_log_written_total", "Decisions written to SQL.", lambda: float(self.written)
        )
        metrics.counter_from(
            "guard_decision_log_failures_total",
            "Writes to SQL that failed and were retried.",
            lambda: float(self.failures),
        )
        metrics.counter_from(
            "guard_decision_log_replayed_total",
            "Decisions written into SQL from spool segments left on disk.",
            lambda: float(self.replayed),
        )
        metrics.counter_from(
            "guard_decision_log_rejected_total",
            "Decisions SQL refused for their content (kept in the spool's rejected.ndjson).",
            lambda: float(self.rejected),
        )
        if self._spool is not None:
            spool = self._spool
            metrics.counter_from(
                "guard_spool_appends_total", "Decisions appended to the spool.", lambda: float(spool.appends)
            )
            metrics.counter_from(
                "guard_spool_fsyncs_total", "fsync calls on the spool's journal.", lambda: float(spool.fsyncs)
            )
            metrics.counter_from(
                "guard_spool_errors_total",
                "Appends to the spool that failed (a full or failing disk).",
                lambda: float(self.spool_errors),
            )
            metrics.counter_from(
                "guard_spool_refused_total",
                "Decisions answered 503 or held because the spool could not write them.",
                lambda: float(self.spool_refused),
            )
            metrics.counter_from(
                "guard_decisions_not_durable_total",
                "Decisions answered while the spool could not write them (kept in memory until SQL).",
                lambda: float(self.not_durable),
            )
            metrics.gauge_from(
                "guard_spool_failing",
                "Whether the spool cannot be written now (1) or writes (0).",
                lambda: float(self.spool_error is not None),
                workers="livemax",
            )

    # State --------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Decisions not in SQL yet (in memory or waiting on disk)."""
        if self._spool is None:
            return self._queue.qsize()
        return self._spool.pending + len(self._pending) + self._replaying

    async def flush(self) -> None:
        """Wait until every decision handed over so far is in the database."""
        while True:
            if self._flusher is not None and not self._flusher.done():
                await asyncio.shield(self._flusher)
            await self._queue.join()
            if self._idle():
                return
            await asyncio.sleep(0.01)

    def _idle(self) -> bool:
        if self._pending or self._replaying or self._orphans or not self._queue.empty():
            return False
        return self._spool is None or not self._spool.has_spilled

    async def stop(self, timeout_s: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            log.error("decision log: %d decisions not written to SQL at shutdown", self.pending)
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with suppress(asyncio.CancelledError):
                await self._flusher
        if self._spool is not None:
            kept = self._spool.close()
            if kept:
                log.warning("spool: %d decisions stay in %s for the next start", kept, self._spool.root)
        if self._io is not None:
            self._io.shutdown(wait=True)

    # Writing ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        if self._orphans:
            await self._replay(self._orphans)
            self._orphans = []
            assert self._spool is not None
            await self._in_io(self._spool.release_adopted)
        while True:
            if self._spool is not None and self._queue.empty() and self._spool.has_spilled:
                self._replaying += 1  # has_spilled turns False inside take_spilled, before _replay counts
                try:
                    paths = await self._in_io(self._spool.take_spilled)
                    await self._replay(paths)
                finally:
                    self._replaying -= 1
                continue
            batch = [await self._queue.get()]
            if self._linger > 0 and self._queue.qsize() < self._batch_size - 1:
                await asyncio.sleep(self._linger)  # light traffic: let a batch gather first
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write([record for _, record in batch])
            if self._spool is not None:
                counts = Counter(seq for seq, _ in batch if seq is not None)
                if counts:
                    await self._in_io(self._spool.committed, counts)
            for _ in batch:
                self._queue.task_done()

    async def _replay(self, paths: list[Path]) -> None:
        """Write segments from disk into SQL (idempotent), then delete them."""
        assert self._spool is not None
        self._replaying += len(paths)  # not idle until the last one is written
        for path in paths:
            records, bad = await self._in_io(read_segment, path)
            self.skipped_lines += bad
            if bad:
                log.warning("spool: %d unreadable line(s) skipped in %s (a torn write)", bad, path.name)
            self._replaying += len(records)
            for chunk in iter_batches(records, self._batch_size):
                await self._write(chunk)
                self.replayed += len(chunk)
                self._replaying -= len(chunk)
            await self._in_io(self._spool.discard, path)
            self._replaying -= 1

    async def _in_io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _write(self, batch: list[DecisionRecord]) -> None:
        """Write ``batch`` to SQL, retrying (with backoff) until the database takes it.

        A batch that SQL refuses for its content is split and its decisions written one by one; a
        decision refused on its own is set aside (``_reject``) so that it cannot block the log.
        Refused for its content means: the database's DataError or IntegrityError (a value too long
        for its column, a field missing from an old spool line), or any error that is not the
        database's at all, whatever its type (the driver's UnicodeEncodeError on a lone surrogate,
        a ValueError on a NUL character). The database's own errors (connection lost, read-only,
        locked, timed out: SQLAlchemy, driver and OS errors) are retried.
        """
        delay = 0.05
        while True:
            try:
                await asyncio.to_thread(self._store.record, batch)
            except Exception as exc:
                if _refused(exc):
                    if len(batch) == 1:
                        await self._reject(batch[0], exc)
                    else:
                        for record in batch:
                            await self._write([record])
                    return
                self.failures += 1
                log.warning(
                    "decision log: writing %d decisions failed (%s); retrying in %.2fs",
                    len(batch),
                    _brief(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_delay)
            else:
                self.written += len(batch)
                return

    async def _reject(self, record: DecisionRecord, exc: Exception) -> None:
        """Set aside a decision SQL refuses: in the spool's rejected file, or in the log without a spool."""
        self.rejected += 1
        line = encode_record(record)
        if self._spool is not None:
            try:
                path = await self._in_io(self._spool.reject, line)
            except OSError:
                log.exception("spool: could not keep a refused decision")
            else:
                log.error(
                    "decision log: SQL refused decision %s (%s); kept in %s",
                    record.row.id,
                    _brief(exc),
                    path,
                )
                return
        log.error(
            "decision log: SQL refused decision %s (%s); the decision: %s",
            record.row.id,
            _brief(exc),
            line.decode().rstrip(),
        )


_CONTENT_ERRORS = (sa_exc.DataError, sa_exc.IntegrityError, psycopg.DataError, psycopg.IntegrityError)
_DATABASE_ERRORS = (sa_exc.SQLAlchemyError, psycopg.Error, OSError, TimeoutError)


def _refused(exc: BaseException) -> bool:
    """Did SQL refuse the data (as opposed to failing as a database)?

    Looks through what the error wraps (``orig``, ``__cause__``): a data or integrity error, or
    an error that is neither SQLAlchemy's, the driver's nor the OS's, is about the record.
    """
    current: BaseException | None = exc
    for _ in range(10):
        if current is None or isinstance(current, _CONTENT_ERRORS):
            return current is not None
        inner = getattr(current, "orig", None) or current.__cause__
        if inner is None:
            return not isinstance(current, _DATABASE_ERRORS)
        current = inner
    return False


def _in_memory(record: DecisionRecord) -> DecisionRecord:
    """The record of a decision that waits for SQL in memory only (``durable=False``)."""
    return dataclasses.replace(record, row=dataclasses.replace(record.row, durable=False))


def _brief(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"


def open_decision_log(store: Store, settings: Settings) -> DecisionLog:
    """The decision log of ``settings``: spooled under GUARD_SPOOL_DIR unless that is empty."""
    spool = Spool(settings.spool_dir, settings.database_url) if settings.spool_dir else None
    return DecisionLog(
        store,
        max_queue=settings.log_queue_size,
        batch_size=settings.log_batch_size,
        spool=spool,
        linger_s=settings.log_linger_ms / 1000,
        on_spool_error=settings.spool_on_error,
    )
