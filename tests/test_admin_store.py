"""The admin pages' queries on SQLite and PostgreSQL: the atomic claim, sessions, throttling,
users, audit, policy history and the traffic rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import inspect

from guard.admin.queries import AdminQueries
from guard.admin.records import OutcomeRow, QueueFilter
from guard.policies import Band, Policy
from guard.records import DecisionRecord
from guard.store import Store, downgrade, migrate
from guard.tables import utcnow
from tests.fakes import decision_row

ADMIN_TABLES = {"users", "admin_sessions", "login_throttle", "audit_log"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    migrate(url)
    s = Store.open(url)
    yield s
    s.close()


@pytest.fixture
def queries(store: Store) -> AdminQueries:
    """The admin pages' queries over the store's database, as the admin opens them."""
    return AdminQueries(store.engine)


def queue_cases(store: Store, n: int) -> list[str]:
    records = [
        DecisionRecord(
            decision_row(f"d{i}", "escalate" if i % 2 else "review"),
            queue_item_id=f"q{i}",
        )
        for i in range(n)
    ]
    store.record(records)
    return [f"q{i}" for i in range(n)]


def test_admin_tables_come_and_go_with_the_migration(store: Store) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    assert set(inspect(store.engine).get_table_names()) >= ADMIN_TABLES
    downgrade(url, "0003")
    assert not set(inspect(store.engine).get_table_names()) & ADMIN_TABLES
    migrate(url)
    assert set(inspect(store.engine).get_table_names()) >= ADMIN_TABLES


def test_two_supervisors_racing_for_one_case_exactly_one_wins(store: Store, queries: AdminQueries) -> None:
    items = queue_cases(store, 8)
    for item in items:
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def act(
            who: str,
            item: str = item,
            barrier: threading.Barrier = barrier,
            results: dict[str, object] = results,
        ) -> None:
            barrier.wait()
            results[who] = queries.resolve_case(item, "approved", who, final_reply="ok", note=None)

        threads = [threading.Thread(target=act, args=(who,)) for who in ("ann", "bob")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        winners = [who for who, got in results.items() if got is not None]
        assert len(results) == 2 and len(winners) == 1, results
        case = queries.case(item)
        assert case is not None and case.item.resolved_by == winners[0] and case.item.state == "approved"
    audit = [e for e in queries.audit_entries() if e.action == "case.approved"]
    assert len(audit) == len(items), "one audit entry per case, from the winner only"


def test_resolve_case_moves_to_the_final_state_once(store: Store, queries: AdminQueries) -> None:
    (item,) = queue_cases(store, 1)
    done = queries.resolve_case(item, "dismissed", "ann", final_reply=None, note="spam")
    assert done is not None and done.decision_id == "d0"
    assert queries.resolve_case(item, "approved", "bob", final_reply="x", note=None) is None
    case = queries.case(item)
    assert case is not None and (case.item.state, case.item.note, case.item.resolved_by) == (
        "dismissed",
        "spam",
        "ann",
    )
    assert queries.queue_summary() == (0, None)


def test_queue_page_filters_and_orders(store: Store, queries: AdminQueries) -> None:
    queue_cases(store, 4)
    assert [c.item.id for c in queries.queue_page()] == ["q0", "q1", "q2", "q3"]
    assert queries.queue_page(QueueFilter(newest_first=True))[0].item.id == "q3"
    assert {c.item.kind for c in queries.queue_page(QueueFilter(kind="review"))} == {"review"}
    assert queries.queue_page(QueueFilter(channel="elsewhere")) == []
    count, oldest = queries.queue_summary()
    assert count == 4 and oldest is not None and oldest.tzinfo is not None
    assert queries.queue_channels() == ["default"]


def test_sessions_expire_and_end(queries: AdminQueries) -> None:
    uid = queries.create_user("ann", "hash", "supervisor", actor="test")
    queries.create_session("live", uid, "csrf1", ttl_s=60)
    queries.create_session("dead", uid, "csrf2", ttl_s=0)
    time.sleep(0.01)
    found = queries.session_user("live")
    assert found is not None and (found.username, found.role, found.csrf) == (
        "ann",
        "supervisor",
        "csrf1",
    )
    assert queries.session_user("dead") is None
    queries.end_session("live")
    assert queries.session_user("live") is None


def test_login_throttle_locks_and_clears(queries: AdminQueries) -> None:
    keys = ["user:ann"]
    for _ in range(2):
        queries.login_failed(keys, limit=3, window_s=60, lock_s=60)
    assert queries.login_locked_until(keys) is None
    queries.login_failed(keys, limit=3, window_s=60, lock_s=60)
    until = queries.login_locked_until(keys)
    assert until is not None and until > utcnow() + timedelta(seconds=50)
    assert queries.login_locked_until(["user:bob"]) is None
    queries.login_succeeded(keys)
    assert queries.login_locked_until(keys) is None


def test_last_active_admin_cannot_be_disabled_or_demoted(queries: AdminQueries) -> None:
    root = queries.create_user("root", "h", "admin", actor="cli")
    ann = queries.create_user("ann", "h", "supervisor", actor="root")
    queries.create_session("s", ann, "c", ttl_s=60)
    assert not queries.update_user(root, "root", active=False)
    assert not queries.update_user(root, "root", role="supervisor")
    assert queries.user_by_name("root").role == "admin"  # type: ignore[union-attr]
    assert queries.update_user(ann, "root", active=False)
    assert queries.session_user("s") is None, "a disabled user's sessions end"
    entries = queries.audit_entries()
    assert entries[0].action == "user.update" and entries[0].before == {
        "role": "supervisor",
        "active": True,
    }


def test_publish_audited_and_history(store: Store, queries: AdminQueries) -> None:
    p = Policy(channel="vip", bands=(Band(0.0, 0.5, "review"), Band(0.5, 1.0, "send")))
    assert queries.publish_policy_audited(p, "olive").version == 1
    assert queries.publish_policy_audited(p, "olive", "policy.rollback").version == 2
    history = store.policy_versions("vip", newest_first=True)
    assert [h.version for h in history] == [2, 1] and history[0].author == "olive"
    old = queries.policy_at("vip", 1)
    assert old is not None and old.bands == p.bands
    assert queries.policy_channels() == ["default", "vip"]
    entry = queries.audit_entries()[0]
    assert entry.action == "policy.rollback" and entry.before is not None and entry.before["version"] == 1


def test_traffic_replay_and_outcome_rows(store: Store, queries: AdminQueries) -> None:
    queue_cases(store, 2)
    store.record([DecisionRecord(decision_row("s1", "send"))])
    queries.resolve_case("q0", "edited", "ann", final_reply="x", note=None)
    since = utcnow() - timedelta(hours=1)
    assert len(queries.traffic_rows(since)) == 3
    replay = queries.replay_rows("default", since)
    assert sorted(r.outcome or "-" for r in replay) == ["-", "edited", "pending"]
    [row] = queries.outcome_rows("default", since)
    assert isinstance(row, OutcomeRow)
    assert (row.channel, row.band, row.action, row.score, row.outcome, row.kind) == (
        "default",
        "[0.0,0.4)",
        "review",
        0.1,
        "edited",
        "review",
    )
    assert row.audit_verdict is None and row.created_at is not None and row.created_at.tzinfo is not None
