"""Migrations (upgrade head and a downgrade round trip) and the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect

from guard.policies import Band, Policy, default_policy
from guard.records import DecisionRecord
from guard.store import Store, bounded, downgrade, migrate
from tests.fakes import decision_row

TABLES = {"decisions", "queue_items", "policy_versions", "images", "alembic_version"}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(name)
    return url


def test_upgrade_downgrade_round_trip(db_url: str) -> None:
    migrate(db_url)
    store = Store.open(db_url)
    assert set(inspect(store.engine).get_table_names()) >= TABLES
    assert store.active_policy("default") == default_policy().__class__(
        **{**default_policy().__dict__, "version": 1}
    )
    downgrade(db_url, "base")
    assert set(inspect(store.engine).get_table_names()) <= {"alembic_version"}
    migrate(db_url)
    migrate(db_url)  # idempotent: a second replica finds nothing to do
    assert store.active_policy("default") is not None
    store.close()


def test_record_is_idempotent_and_queues_held_decisions(db_url: str) -> None:
    migrate(db_url)
    store = Store.open(db_url)
    records = [
        DecisionRecord(
            decision_row("d1", "escalate"),
            queue_item_id="q1",
            image=("a" * 64, "image/png", 1, 1, b"png"),
        ),
        DecisionRecord(decision_row("d2", "send")),
    ]
    store.record(records)
    store.record(records)  # a retried batch adds nothing twice
    assert store.count_decisions() == 2
    got = store.get_decision("d1")
    assert got is not None and got.queue_item is not None and got.queue_item.state == "pending"
    assert got.row.question == "q <script>alert(1)</script>'; DROP TABLE decisions; --", "stored verbatim"
    assert [q.id for q in store.queue()] == ["q1"]
    assert store.get_image("a" * 64) == ("image/png", b"png")
    store.close()


def test_policy_versions_per_channel(db_url: str) -> None:
    migrate(db_url)
    store = Store.open(db_url)
    p = Policy(channel="vip", bands=(Band(0.0, 0.5, "review"), Band(0.5, 1.0, "send")), on_error="review")
    assert store.publish_policy(p, "alice").version == 1
    assert store.publish_policy(p, "bob").version == 2
    active = store.active_policy("vip")
    assert active is not None and active.version == 2 and active.on_error == "review"
    assert [(v.version, v.author) for v in store.policy_versions("vip")] == [(1, "alice"), (2, "bob")]
    assert store.active_policy("nobody") is None
    store.close()


def test_bounded_times_out_and_never_swallows_a_cancel() -> None:
    """A SQL call past its deadline is a TimeoutError; a task cancelled while it waits ends
    cancelled, even when the cancel lands as the thread returns (asyncio.wait_for on Python 3.11
    returned the result instead, and a stopping background loop then ran on)."""

    async def main() -> None:
        release = threading.Event()
        with pytest.raises(TimeoutError):
            await bounded(0.05, release.wait, 5.0)
        release.set()
        for steps in range(4):
            for _ in range(50):
                returned = threading.Event()
                task = asyncio.create_task(bounded(5.0, returned.set))
                while not returned.is_set():  # noqa: ASYNC110 (a thread's event, one loop step at a time)
                    await asyncio.sleep(0)
                for _ in range(steps):  # land the cancel a few loop steps after the thread returned
                    await asyncio.sleep(0)
                if task.cancel():  # still waiting: it must end cancelled
                    with pytest.raises(asyncio.CancelledError):
                        await task

    asyncio.run(main())


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """var/guard.db holds customers' messages: 0600 like the spool (it was 0644), and so are the
    -wal and -shm files SQLite makes beside it."""
    import os

    old_umask = os.umask(0o022)  # the usual umask, under which SQLite's own default is 0644
    try:
        path = tmp_path / "var" / "guard.db"
        url = f"sqlite:///{path}"
        migrate(url)
        store = Store.open(url)
        try:
            store.record([DecisionRecord(decision_row("perm-1", "send"))])
            files = sorted(path.parent.glob("guard.db*"))
            assert {f.name for f in files} >= {"guard.db", "guard.db-wal", "guard.db-shm"}
            for f in files:
                assert f.stat().st_mode & 0o777 == 0o600, f"{f.name} is {oct(f.stat().st_mode & 0o777)}"
        finally:
            store.close()
    finally:
        os.umask(old_umask)
