"""The decision spool and the spooled decision log: durable before acknowledged, none lost or doubled."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec

import pytest

from guard.decision_log import DecisionLog
from guard.errors import SpoolUnavailable
from guard.records import Candidate, DecisionRecord
from guard.spool import Spool, decode_record, encode_record, read_segment, spool_key
from guard.store import Store, migrate
from tests.fakes import decision_row
from tests.spool_opener import open_together

ROOT = Path(__file__).resolve().parents[1]
P = ParamSpec("P")


def sync(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test in its own event loop (the suite has no async test plugin)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


def record(i: int, *, image: bool = False, text: str = "口袋开线怎么办？") -> DecisionRecord:
    return DecisionRecord(
        row=decision_row(
            f"{i:032x}",
            "review" if image else "follow_up",
            created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
            conversation_id=f"c-{i}",
            locale="zh",
            question=text,
            image_sha256="ab" * 32 if image else None,
            draft="<script>alert(1)</script>'; DROP TABLE decisions; --",
            candidates=(Candidate("a", 0.5),),
            score=0.55,
            band="[0.5,0.6)",
            follow_up="\u202eRTL\u200b",
            holding_message=None,
        ),
        queue_item_id=f"{i:031x}q" if image else None,
        image=("ab" * 32, "image/png", 3, 2, b"\x89PNG\x00\xff") if image else None,
    )


class FlakyStore:
    """Store.record's contract (idempotent by id) in memory; ``down`` makes every write fail."""

    def __init__(self) -> None:
        self.rows: dict[str, DecisionRecord] = {}
        self.inserts = 0
        self.down = False
        self.calls = 0
        self._lock = threading.Lock()

    def record(self, records: Sequence[DecisionRecord]) -> None:
        with self._lock:
            self.calls += 1
            if self.down:
                raise ConnectionError("database is down")
            for r in records:
                if r.row.id not in self.rows:
                    self.rows[r.row.id] = r
                    self.inserts += 1


def log_over_a_dead_store(spool_dir: Path, url: str = "sqlite:///x.db") -> tuple[FlakyStore, DecisionLog]:
    """A started decision log whose store is down: it spools, retrying SQL every 0.05 s at most."""
    store = FlakyStore()
    store.down = True
    log = DecisionLog(store, spool=Spool(spool_dir, url), max_retry_delay_s=0.05)  # type: ignore[arg-type]
    log.start()
    return store, log


def segments(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.rglob("*.jsonl"))


def test_a_record_survives_the_round_trip_unchanged() -> None:
    for rec in (record(1), record(2, image=True), record(3, text="\U0001f600 \u0000 '\"\\")):
        line = encode_record(rec)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert decode_record(line) == rec


def test_the_spool_key_ignores_the_password_but_not_the_database() -> None:
    a = spool_key("postgresql+psycopg://u:secret1@h:5432/db")
    assert a == spool_key("postgresql+psycopg://u:secret2@h:5432/db")
    assert a != spool_key("postgresql+psycopg://u:secret1@h:5432/other")


@sync
async def test_put_returns_only_after_the_decision_is_in_the_spool(tmp_path: Path) -> None:
    store, log = log_over_a_dead_store(tmp_path)
    await log.put(record(1))
    on_disk = [r for seg in segments(tmp_path) for r in read_segment(seg)[0]]
    assert [r.row.id for r in on_disk] == [record(1).row.id]
    store.down = False
    await asyncio.wait_for(log.flush(), 5)
    await log.stop()
    assert list(store.rows) == [record(1).row.id]
    assert segments(tmp_path) == []  # SQL holds it: the spool is empty again


@sync
async def test_concurrent_decisions_share_fsyncs(tmp_path: Path) -> None:
    store = FlakyStore()
    spool = Spool(tmp_path, "sqlite:///x.db")
    log = DecisionLog(store, spool=spool)  # type: ignore[arg-type]
    log.start()
    await asyncio.gather(*(log.put(record(i)) for i in range(500)))
    await asyncio.wait_for(log.flush(), 10)
    await log.stop()
    assert spool.appends == 500 and len(store.rows) == 500
    assert spool.fsyncs < 100, f"{spool.fsyncs} fsyncs for 500 concurrent decisions: no group commit"


@sync
async def test_database_down_then_back_nothing_lost_nothing_doubled(tmp_path: Path) -> None:
    store = FlakyStore()
    # A tiny queue and tiny segments: most decisions wait on disk and are replayed from there.
    spool = Spool(tmp_path, "sqlite:///x.db", segment_bytes=20_000)
    log = DecisionLog(store, spool=spool, max_queue=20, batch_size=16, max_retry_delay_s=0.05)  # type: ignore[arg-type]
    log.start()
    ids = []
    for i in range(1200):
        if i == 100:
            store.down = True
        if i == 900:
            store.down = False
        await log.put(record(i, image=i % 7 == 0))
        ids.append(record(i).row.id)
    assert store.calls > 0
    await asyncio.wait_for(log.flush(), 20)
    await log.stop()
    assert sorted(store.rows) == sorted(ids)
    assert store.inserts == len(ids)
    assert log.replayed > 0, "the queue never overflowed to disk: the test did not test the replay"
    assert segments(tmp_path) == []
    assert not os.listdir(tmp_path), "a clean stop leaves an empty spool folder"


@sync
async def test_decisions_not_in_sql_at_shutdown_stay_for_the_next_start(tmp_path: Path) -> None:
    store, log = log_over_a_dead_store(tmp_path)
    for i in range(10):
        await log.put(record(i))
    await log.stop(timeout_s=0.3)
    assert store.rows == {}
    assert sum(len(read_segment(s)[0]) for s in segments(tmp_path)) == 10

    store.down = False
    again = DecisionLog(store, spool=Spool(tmp_path, "sqlite:///x.db"))  # type: ignore[arg-type]
    again.start()
    await asyncio.wait_for(again.flush(), 5)
    await again.stop()
    assert len(store.rows) == 10 and store.inserts == 10
    assert segments(tmp_path) == []


@sync
async def test_a_live_owners_segments_are_not_adopted(tmp_path: Path) -> None:
    store, first = log_over_a_dead_store(tmp_path)
    await first.put(record(1))
    other = FlakyStore()
    second = DecisionLog(other, spool=Spool(tmp_path, "sqlite:///x.db"))  # type: ignore[arg-type]
    second.start()
    await asyncio.wait_for(second.flush(), 5)
    assert other.rows == {}, "a second worker replayed the segments of a live one"
    await second.stop()
    store.down = False
    await asyncio.wait_for(first.flush(), 5)
    await first.stop()
    assert list(store.rows) == [record(1).row.id]


def test_spools_opened_at_once_by_many_processes_neither_fail_nor_adopt_a_live_one(tmp_path: Path) -> None:
    """The workers of `guard serve --workers N` start together in one spool folder: none may fail to
    take its lock (uvicorn then stops them all) or take a live sibling's segments for a dead one's."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    processes, rounds = 6, 15
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=open_together, args=(str(tmp_path), rounds, barrier, results))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    seen = [results.get(timeout=60) for _ in range(processes * rounds)]
    for w in workers:
        w.join(30)
    wrong = [s for s in seen if s[1] != "ok" or s[2] or s[3]]
    assert not wrong, f"{len(wrong)} of {len(seen)} opens failed or adopted a live spool: {wrong[:3]}"
    assert all(w.exitcode == 0 for w in workers)


@sync
async def test_another_databases_spool_is_left_alone(tmp_path: Path) -> None:
    _store, log = log_over_a_dead_store(tmp_path, "sqlite:///a.db")
    await log.put(record(1))
    await log.stop(timeout_s=0.2)
    other = FlakyStore()
    b = DecisionLog(other, spool=Spool(tmp_path, "sqlite:///b.db"))  # type: ignore[arg-type]
    b.start()
    await asyncio.wait_for(b.flush(), 5)
    await b.stop()
    assert other.rows == {} and len(segments(tmp_path)) == 1


def test_sigkill_mid_write_a_torn_line_is_skipped_and_the_rest_lands(tmp_path: Path, sqlite_url: str) -> None:
    """A process appends decisions, writes half a line and is killed with SIGKILL: the next start
    replays every acknowledged decision into SQL and skips the torn one."""
    spool_dir = tmp_path / "spool"
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from guard.spool import Spool, encode_record
        from tests.test_spool import record
        spool = Spool({str(spool_dir)!r}, {sqlite_url!r}, segment_bytes=4000)
        spool.open()
        for i in range(40):
            spool.append(encode_record(record(i, image=i % 5 == 0)), 1)
        seg = sorted(spool.root.glob("*.jsonl"))[-1]
        with open(seg, "ab") as f:
            f.write(encode_record(record(99))[:50])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], timeout=60, check=False, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert len(segments(spool_dir)) > 1

    migrate(sqlite_url)
    store = Store.open(sqlite_url)

    async def restart() -> DecisionLog:
        log = DecisionLog(store, spool=Spool(spool_dir, sqlite_url))
        log.start()
        await asyncio.wait_for(log.flush(), 10)
        await log.stop()
        return log

    log = asyncio.run(restart())
    try:
        assert store.count_decisions() == 40
        assert len(store.queue()) == 8  # the held ones came with their queue items
        assert store.get_decision(record(7).row.id).row.question == record(7).row.question  # type: ignore[union-attr]
        assert store.get_decision(record(99).row.id) is None
        assert log.skipped_lines == 1
        assert segments(spool_dir) == []
        # Replaying again (another crash before the delete, say) doubles nothing.
        for i in range(40):
            store.record([record(i, image=i % 5 == 0)])
        assert store.count_decisions() == 40
    finally:
        store.close()


def test_an_unwritable_spool_in_memory_mode_still_logs_the_decision(tmp_path: Path) -> None:
    async def go() -> FlakyStore:
        store = FlakyStore()
        spool = Spool(tmp_path, "sqlite:///x.db")
        log = DecisionLog(store, spool=spool, on_spool_error="memory")  # type: ignore[arg-type]
        log.start()
        assert spool._fd is not None
        os.close(spool._fd)  # the disk fails under it: EBADF on the next append
        spool._fd = os.open(os.devnull, os.O_RDONLY)
        await log.put(record(1))
        await asyncio.wait_for(log.flush(), 5)
        assert log.spool_errors == 1 and log.spool_state == "failing"
        await log.stop()
        return store

    assert list(asyncio.run(go()).rows) == [record(1).row.id]


def test_an_unwritable_spool_by_default_refuses_the_decision_until_it_writes_again(tmp_path: Path) -> None:
    async def go() -> FlakyStore:
        store = FlakyStore()
        spool = Spool(tmp_path, "sqlite:///x.db")
        log = DecisionLog(store, spool=spool)  # type: ignore[arg-type]
        log.start()
        assert spool._fd is not None and log.spool_state == "ok"
        good_fd, spool._fd = spool._fd, os.open(os.devnull, os.O_RDONLY)  # EBADF on the next append
        with pytest.raises(SpoolUnavailable):
            await log.put(record(1))
        assert log.spool_state == "failing" and log.spool_error is not None
        assert await log.probe_spool() == "ok", "the folder itself is writable: the probe succeeds"
        os.close(spool._fd)
        spool._fd = good_fd
        await log.put(record(2))
        await asyncio.wait_for(log.flush(), 5)
        assert log.spool_state == "ok"
        await log.stop()
        return store

    assert list(asyncio.run(go()).rows) == [record(2).row.id], "the refused decision was not answered"


@pytest.mark.parametrize("n", [0, 1])
def test_close_without_anything_pending_removes_the_folder(tmp_path: Path, n: int) -> None:
    async def go() -> None:
        log = DecisionLog(FlakyStore(), spool=Spool(tmp_path, "sqlite:///x.db"))  # type: ignore[arg-type]
        log.start()
        for i in range(n):
            await log.put(record(i))
        await log.stop()

    asyncio.run(go())
    assert list(tmp_path.iterdir()) == []


def _refused_record(i: int, database: str) -> DecisionRecord:
    """A decision SQL refuses for its content: too long for its column (PostgreSQL), or missing a
    field; a lone surrogate (UnicodeEncodeError in the driver), or a NUL character (PostgreSQL)."""
    rec = record(i)
    if database.endswith("-surrogate"):
        return DecisionRecord(dataclasses.replace(rec.row, question="refund \ud800 please"))
    if database.endswith("-nul"):
        return DecisionRecord(dataclasses.replace(rec.row, draft="refund \x00 please"))
    if database == "postgresql":
        return DecisionRecord(dataclasses.replace(rec.row, scorer_version="v" * 300))  # String(200)
    return DecisionRecord(dataclasses.replace(rec.row, channel=None))  # NOT NULL


@pytest.mark.parametrize(
    "database",
    ["sqlite", "postgresql", "sqlite-surrogate", "postgresql-surrogate", "postgresql-nul"],
)
def test_a_decision_sql_refuses_is_set_aside_and_does_not_block_the_log(
    tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url" if database.startswith("postgresql") else "sqlite_url")
    migrate(url)
    store = Store.open(url)
    refused = _refused_record(3, database)
    good = [record(i) for i in (1, 2, 4, 5)]

    async def go() -> DecisionLog:
        log = DecisionLog(store, spool=Spool(tmp_path, url), max_retry_delay_s=0.05)
        log.start()
        await asyncio.gather(*(log.put(r) for r in [*good[:2], refused, *good[2:]]))
        await asyncio.wait_for(log.flush(), 10)
        await log.put(record(6))  # the log goes on after the refusal
        await asyncio.wait_for(log.flush(), 10)
        await log.stop()
        return log

    try:
        log = asyncio.run(go())
        assert log.rejected == 1 and log.failures == 0
        assert store.count_decisions() == 5
        for r in [*good, record(6)]:
            assert store.get_decision(r.row.id) is not None
        assert store.get_decision(refused.row.id) is None
        kept = next(tmp_path.rglob("rejected.ndjson"))
        lines = kept.read_bytes().splitlines(keepends=True)
        assert [decode_record(line) for line in lines] == [refused]
        assert segments(tmp_path) == [], "everything else is in SQL: no segment left"
    finally:
        store.close()


def test_without_a_spool_a_refused_decision_is_logged_whole(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate(sqlite_url)
    store = Store.open(sqlite_url)
    refused = _refused_record(7, "sqlite")

    async def go() -> DecisionLog:
        log = DecisionLog(store)
        log.start()
        await log.put(refused)
        await log.put(record(8))
        await asyncio.wait_for(log.flush(), 10)
        await log.stop()
        return log

    try:
        assert asyncio.run(go()).rejected == 1
        assert store.count_decisions() == 1
        assert any(refused.row.id in m and "refused" in m for m in caplog.messages)
    finally:
        store.close()
