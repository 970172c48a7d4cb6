"""A real `guard serve` killed with SIGKILL mid-load: every decision a client received lands after restart."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from guard.store import migrate
from tests.serving import closed_port, guard_serve, serve_env
from tests.test_faults import drive, logged, wait_for

pytestmark = pytest.mark.integration


def test_sigkill_mid_load_then_restart_every_received_decision_lands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'guard.db'}"
    migrate(url)
    port = closed_port()
    # A writer that is slow to reach SQL: many decisions are only in the spool at the kill.
    env = serve_env(url, tmp_path / "spool", GUARD_LOG_BATCH_SIZE="5")
    base_url = f"http://127.0.0.1:{port}"
    # Another writer holds SQLite's write lock from 3 s on, so the decisions made after that are
    # only in the spool when the guard is killed at 6 s.
    locker = sqlite3.connect(tmp_path / "guard.db", timeout=30, isolation_level=None, check_same_thread=False)
    with guard_serve(env, port, tmp_path / "guard.log") as proc:
        result = drive(
            base_url,
            8.0,
            schedule=[
                (3.0, lambda: locker.execute("BEGIN EXCLUSIVE")),
                (6.0, lambda: os.kill(proc.pid, signal.SIGKILL)),
            ],
        )
        proc.wait(10)
        assert proc.returncode == -signal.SIGKILL
    locker.execute("ROLLBACK")
    locker.close()
    received = set(result.decisions)
    assert len(received) > 30, "too few decisions before the kill to prove anything"
    assert result.failures, "the kill happened after the load: nothing was tested"
    before = logged(url)
    assert len(set(before) & received) < len(received), "SQL had every decision: the spool was not tested"
    segments = list((tmp_path / "spool").rglob("*.jsonl"))
    assert segments, "no spool left behind by the killed guard"

    with guard_serve(env, port, tmp_path / "guard.log"):
        wait_for(lambda: received <= set(logged(url)), 60, "the spool to be replayed")
    rows = logged(url)
    assert received <= set(rows)
    assert all(n == 1 for _, n in rows.values())
    assert {k: rows[k][0] for k in received} == result.decisions
    print(f"received {len(received)}, in SQL at the kill {len(before)}, after restart {len(rows)}")
