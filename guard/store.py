"""SQL: opens the engine and owns every query (decisions, queue, policy versions, images).

The methods here are blocking; async callers run them in a worker thread. The schema is
created and changed only by the Alembic migrations (``guard migrate``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from psycopg.types.json import Json
from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Table,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from guard import resources
from guard.policies import Policy, parse_policy, policy_document
from guard.tables import (
    AdminSession,
    ApiKey,
    AuditEntry,
    Decision,
    LoginThrottle,
    PolicyVersion,
    QueueItem,
    StoredImage,
    User,
    WebhookDelivery,
    utcnow,
)

T = TypeVar("T")
MIGRATIONS_DIR = resources.migrations()
_DECISIONS = cast(Table, Decision.__table__)
_QUEUE_ITEMS = cast(Table, QueueItem.__table__)


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder, WAL mode and foreign keys.

    The pool hands out the connection used last (LIFO): at light and medium load the same one or
    two connections do all the work, so the others stay cold (each warm SQLite connection holds
    its own page cache: RSS grew 10% less over 100,000 requests) and can be closed when idle.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=5, pool_use_lifo=True
        )
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15}, pool_use_lifo=True)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


async def bounded(timeout_s: float, fn: Callable[..., T], *args: Any) -> T:
    """Run the blocking ``fn(*args)`` in a worker thread and wait at most ``timeout_s`` for it.

    Past the deadline TimeoutError is raised; the thread is left to finish (or fail) on its own,
    so a database that accepts connections but never answers cannot hold a request.
    """
    return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout_s)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (safe to run from any replica, any number of times)."""
    if make_url(url).get_backend_name() == "sqlite":
        create_db_engine(url).dispose()  # creates the folder of a SQLite file
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


@dataclass(frozen=True)
class DecisionRecord:
    """Everything written for one decision: the row, its queue item when held, the photo to keep."""

    decision: dict[str, Any]
    queue_item_id: str | None = None
    image: tuple[str, str, int, int, bytes] | None = None
    """(sha256, mime type, width, height, bytes) of a photo a supervisor will need to see."""


_DECISION_COLUMNS = [c.name for c in _DECISIONS.columns]
_JSON_COLUMNS = frozenset(c.name for c in _DECISIONS.columns if isinstance(c.type, JSON))


def _insert_decisions(conn: Connection, records: Sequence[DecisionRecord]) -> set[str]:
    """SQLite: insert the decisions not there yet; returns their ids."""
    ids = [r.decision["id"] for r in records]
    existing = set(conn.execute(select(_DECISIONS.c.id).where(_DECISIONS.c.id.in_(ids))).scalars())
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.decision["id"] not in existing:
            rows.setdefault(rec.decision["id"], {c: rec.decision.get(c) for c in _DECISION_COLUMNS})
    if rows:
        # RETURNING makes SQLAlchemy send multi-row VALUES pages instead of one row per statement.
        add = (
            sqlite_insert(_DECISIONS).on_conflict_do_nothing(index_elements=["id"]).returning(_DECISIONS.c.id)
        )
        conn.execute(add, list(rows.values())).close()
    return set(rows)


def _copy_value(column: str, value: Any) -> Any:
    return Json(value) if value is not None and column in _JSON_COLUMNS else value


def _copy_decisions(conn: Connection, records: Sequence[DecisionRecord]) -> set[str]:
    """PostgreSQL: COPY the batch into a temporary table, move the new ones over; returns their ids."""
    columns = ", ".join(_DECISION_COLUMNS)
    driver: Any = conn.connection.driver_connection  # psycopg's connection, inside this transaction
    cursor = driver.cursor()
    with cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE IF NOT EXISTS decisions_in (LIKE decisions) ON COMMIT DELETE ROWS"
        )
        with cursor.copy(f"COPY decisions_in ({columns}) FROM STDIN") as copy:
            for rec in records:
                d = rec.decision
                copy.write_row(
                    [
                        Json(d[c]) if c in _JSON_COLUMNS and d.get(c) is not None else d.get(c)
                        for c in _DECISION_COLUMNS
                    ]
                )
        cursor.execute(
            f"INSERT INTO decisions ({columns}) SELECT DISTINCT ON (id) {columns} FROM decisions_in"
            " ON CONFLICT (id) DO NOTHING RETURNING id"
        )
        return {row[0] for row in cursor.fetchall()}


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str) -> Store:
        return cls(create_db_engine(url))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    # Decisions -------------------------------------------------------------------------------

    def record(self, records: Sequence[DecisionRecord]) -> None:
        """Write a batch of decisions in one transaction; idempotent (a retried batch adds nothing twice).

        Core statements, no ORM unit of work. The decisions go in with ``ON CONFLICT (id) DO
        NOTHING`` and the statement tells which ones are new: on PostgreSQL the batch is COPYed
        into a temporary table and moved over with one ``INSERT ... SELECT ... RETURNING id``
        (about 10x the rows/s of an executemany); on SQLite one SELECT finds the ids already there
        and one executemany (sent as multi-row VALUES pages) inserts the rest. Only new decisions
        get their photo and, when held, their queue item (``ON CONFLICT DO NOTHING`` too, for a
        concurrent writer of the same batch). A field missing from a record (an older spool line)
        is written as NULL.
        """
        if not records:
            return
        with self.session() as s:
            conn = s.connection()
            postgres = conn.dialect.name == "postgresql"
            new_ids = _copy_decisions(conn, records) if postgres else _insert_decisions(conn, records)
            fresh = {r.decision["id"]: r for r in records if r.decision["id"] in new_ids}.values()
            images = {r.image[0]: r.image for r in fresh if r.image is not None}
            for image in images.values():
                self._keep_image(s, *image)
            items = [
                {
                    "id": r.queue_item_id,
                    "decision_id": r.decision["id"],
                    "kind": r.decision["action"],
                    "state": "pending",
                    "channel": r.decision["channel"],
                    "created_at": r.decision["created_at"],
                    "updated_at": r.decision["created_at"],
                }
                for r in fresh
                if r.queue_item_id is not None
            ]
            if items:
                insert = pg_insert if postgres else sqlite_insert
                conn.execute(insert(_QUEUE_ITEMS).on_conflict_do_nothing(), items)

    def get_decision(self, decision_id: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(Decision, decision_id)
            if row is None:
                return None
            item = s.scalar(select(QueueItem).where(QueueItem.decision_id == decision_id))
            out = {c.name: getattr(row, c.name) for c in Decision.__table__.columns}
            out["queue_item"] = (
                None if item is None else {c.name: getattr(item, c.name) for c in QueueItem.__table__.columns}
            )
            return out

    def count_decisions(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Decision)) or 0)

    def queue(self, state: str = "pending") -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(QueueItem).where(QueueItem.state == state).order_by(QueueItem.created_at))
            return [{c.name: getattr(r, c.name) for c in QueueItem.__table__.columns} for r in rows]

    # Policies --------------------------------------------------------------------------------

    def active_policy(self, channel: str) -> Policy | None:
        """The highest published version of ``channel``'s policy, or None if it has none."""
        with self.session() as s:
            row = s.scalar(
                select(PolicyVersion)
                .where(PolicyVersion.channel == channel)
                .order_by(PolicyVersion.version.desc())
                .limit(1)
            )
            if row is None:
                return None
            return parse_policy(row.document, channel=row.channel, version=row.version)

    def publish_policy(self, policy: Policy, author: str) -> Policy:
        """Store ``policy`` as the next version of its channel and return it with that version."""
        with self.session() as s:
            current = s.scalar(
                select(func.max(PolicyVersion.version)).where(PolicyVersion.channel == policy.channel)
            )
            version = (current or 0) + 1
            s.add(
                PolicyVersion(
                    channel=policy.channel,
                    version=version,
                    document=policy_document(policy),
                    author=author,
                    created_at=utcnow(),
                )
            )
        return parse_policy(policy_document(policy), channel=policy.channel, version=version)

    def policy_versions(self, channel: str) -> list[tuple[int, str, datetime]]:
        with self.session() as s:
            rows = s.execute(
                select(PolicyVersion.version, PolicyVersion.author, PolicyVersion.created_at)
                .where(PolicyVersion.channel == channel)
                .order_by(PolicyVersion.version)
            )
            return [(r[0], r[1], r[2]) for r in rows]

    # Images ----------------------------------------------------------------------------------

    def save_image(self, sha256: str, mime_type: str, width: int, height: int, data: bytes) -> None:
        with self.session() as s:
            self._keep_image(s, sha256, mime_type, width, height, data)

    def get_image(self, sha256: str) -> tuple[str, bytes] | None:
        with self.session() as s:
            row = s.get(StoredImage, sha256)
            return None if row is None else (row.mime_type, row.data)

    def _keep_image(
        self, s: Session, sha256: str, mime_type: str, width: int, height: int, data: bytes
    ) -> None:
        values = {
            "sha256": sha256,
            "mime_type": mime_type,
            "width": width,
            "height": height,
            "data": data,
            "created_at": utcnow(),
        }
        dialect = s.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        s.execute(insert(StoredImage).values(**values).on_conflict_do_nothing(index_elements=["sha256"]))

    # Admin pages (issue 5): queue work, accounts, sessions, throttling, audit, traffic ---------
    # Everything below is used by guard/admin; each state change writes its audit entry in the
    # same transaction.

    def audit(
        self,
        actor: str,
        action: str,
        target: str,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        with self.session() as s:
            _audit(s, actor, action, target, before, after)

    def audit_entries(self, limit: int = 200, offset: int = 0) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset))
            return [_row(r) | {"at": _aware(r.at)} for r in rows]

    # Queue

    def queue_page(
        self,
        *,
        states: Sequence[str] = ("pending",),
        channel: str | None = None,
        kind: str | None = None,
        newest_first: bool = False,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Queue items with the decision fields the queue shows, filtered and ordered."""
        with self.session() as s:
            q = (
                select(QueueItem, Decision)
                .join(Decision, Decision.id == QueueItem.decision_id)
                .where(QueueItem.state.in_(list(states)))
            )
            if channel:
                q = q.where(QueueItem.channel == channel)
            if kind:
                q = q.where(QueueItem.kind == kind)
            order = QueueItem.created_at.desc() if newest_first else QueueItem.created_at.asc()
            rows = s.execute(q.order_by(order, QueueItem.id).limit(limit)).all()
            return [_case(item, dec) for item, dec in rows]

    def queue_channels(self) -> list[str]:
        with self.session() as s:
            return sorted(s.scalars(select(QueueItem.channel).distinct()))

    def queue_summary(self) -> tuple[int, datetime | None]:
        """(pending cases, when the oldest pending case arrived)."""
        with self.session() as s:
            count, oldest = s.execute(
                select(func.count(), func.min(QueueItem.created_at)).where(QueueItem.state == "pending")
            ).one()
            return int(count or 0), _aware(oldest)

    def case(self, item_id: str) -> dict[str, Any] | None:
        with self.session() as s:
            found = s.execute(
                select(QueueItem, Decision)
                .join(Decision, Decision.id == QueueItem.decision_id)
                .where(QueueItem.id == item_id)
            ).first()
            return None if found is None else _case(found[0], found[1])

    def resolve_case(
        self, item_id: str, state: str, actor: str, *, final_reply: str | None, note: str | None
    ) -> dict[str, Any] | None:
        """Move a pending case to its final ``state``, atomically: of two supervisors acting on one
        case exactly one succeeds (UPDATE ... WHERE state = 'pending'); None for the other."""
        now = utcnow()
        with self.session() as s:
            result = s.execute(
                update(QueueItem)
                .where(QueueItem.id == item_id, QueueItem.state == "pending")
                .values(
                    state=state,
                    claimed_by=actor,
                    resolved_by=actor,
                    resolved_at=now,
                    updated_at=now,
                    final_reply=final_reply,
                    note=note,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) != 1:
                return None
            item = s.get(QueueItem, item_id)
            assert item is not None
            after = {"state": state, "final_reply": final_reply, "note": note}
            _audit(s, actor, f"case.{state}", f"case {item_id}", {"state": "pending"}, after)
            return {"id": item_id, "decision_id": item.decision_id, "state": state, "resolved_at": now}

    # Outcomes and traffic

    def outcome_rows(self, channel: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """Resolved cases as labels: the decision's band and action and what the supervisor did."""
        with self.session() as s:
            q = (
                select(
                    Decision.policy_channel, Decision.band, Decision.action, Decision.score, QueueItem.state
                )
                .join(QueueItem, QueueItem.decision_id == Decision.id)
                .where(QueueItem.state != "pending")
            )
            if channel:
                q = q.where(Decision.policy_channel == channel)
            if since is not None:
                q = q.where(Decision.created_at >= since)
            return [
                {"channel": r[0], "band": r[1], "action": r[2], "score": r[3], "outcome": r[4]}
                for r in s.execute(q)
            ]

    def replay_rows(self, channel: str, since: datetime, limit: int = 50_000) -> list[dict[str, Any]]:
        """Decisions made for ``channel`` since ``since``: score, recorded action and outcome, if any."""
        with self.session() as s:
            q = (
                select(Decision.score, Decision.action, Decision.degraded, QueueItem.state)
                .outerjoin(QueueItem, QueueItem.decision_id == Decision.id)
                .where(
                    or_(Decision.policy_channel == channel, Decision.channel == channel),
                    Decision.created_at >= since,
                )
                .order_by(Decision.created_at.desc())
                .limit(limit)
            )
            return [{"score": r[0], "action": r[1], "degraded": r[2], "outcome": r[3]} for r in s.execute(q)]

    def traffic_rows(self, since: datetime, limit: int = 100_000) -> list[dict[str, Any]]:
        """What the dashboard draws: one row per decision since ``since``."""
        with self.session() as s:
            q = (
                select(
                    Decision.created_at,
                    Decision.action,
                    Decision.score,
                    Decision.cached,
                    Decision.latency_ms,
                    Decision.timings_ms,
                )
                .where(Decision.created_at >= since)
                .order_by(Decision.created_at.desc())
                .limit(limit)
            )
            return [
                {
                    "created_at": _aware(r[0]),
                    "action": r[1],
                    "score": r[2],
                    "cached": r[3],
                    "latency_ms": r[4],
                    "timings_ms": r[5] or {},
                }
                for r in s.execute(q)
            ]

    # Policy history

    def policy_channels(self) -> list[str]:
        with self.session() as s:
            return sorted(set(s.scalars(select(PolicyVersion.channel).distinct())) | {"default"})

    def policy_history(self, channel: str) -> list[dict[str, Any]]:
        """Every version of ``channel``'s policy, newest first, with author, time and document."""
        with self.session() as s:
            rows = s.scalars(
                select(PolicyVersion)
                .where(PolicyVersion.channel == channel)
                .order_by(PolicyVersion.version.desc())
            )
            return [
                {
                    "version": r.version,
                    "author": r.author,
                    "created_at": _aware(r.created_at),
                    "document": r.document,
                }
                for r in rows
            ]

    def policy_at(self, channel: str, version: int) -> Policy | None:
        with self.session() as s:
            row = s.scalar(
                select(PolicyVersion).where(
                    PolicyVersion.channel == channel, PolicyVersion.version == version
                )
            )
            return None if row is None else parse_policy(row.document, channel=channel, version=version)

    def publish_policy_audited(self, policy: Policy, actor: str, action: str = "policy.publish") -> Policy:
        """publish_policy plus its audit entry (before: the version in force), in one transaction."""
        with self.session() as s:
            current = s.scalar(
                select(PolicyVersion)
                .where(PolicyVersion.channel == policy.channel)
                .order_by(PolicyVersion.version.desc())
                .limit(1)
            )
            version = (current.version if current else 0) + 1
            document = policy_document(policy)
            s.add(
                PolicyVersion(
                    channel=policy.channel,
                    version=version,
                    document=document,
                    author=actor,
                    created_at=utcnow(),
                )
            )
            _audit(
                s,
                actor,
                action,
                f"policy {policy.channel} v{version}",
                None if current is None else {"version": current.version, **current.document},
                {"version": version, **document},
            )
        return parse_policy(document, channel=policy.channel, version=version)

    # Accounts

    def create_user(self, username: str, password_hash: str, role: str, actor: str) -> int:
        with self.session() as s:
            user = User(
                username=username, password_hash=password_hash, role=role, active=True, created_at=utcnow()
            )
            s.add(user)
            s.flush()
            _audit(s, actor, "user.create", f"user {username}", None, {"role": role, "active": True})
            return user.id

    def user_by_name(self, username: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.scalar(select(User).where(User.username == username))
            return None if row is None else _row(row)

    def users(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(User).order_by(User.username))
            return [_row(r) | {"created_at": _aware(r.created_at)} for r in rows]

    def update_user(
        self,
        user_id: int,
        actor: str,
        *,
        role: str | None = None,
        active: bool | None = None,
        password_hash: str | None = None,
    ) -> bool:
        """Change a user; a disabled user or a new password ends that user's sessions. False: no such user,
        or the change would leave no active admin."""
        try:
            return self._update_user(user_id, actor, role, active, password_hash)
        except _LastAdminError:
            return False

    def _update_user(
        self, user_id: int, actor: str, role: str | None, active: bool | None, password_hash: str | None
    ) -> bool:
        with self.session() as s:
            user = s.get(User, user_id, with_for_update=True)
            if user is None:
                return False
            before = {"role": user.role, "active": user.active}
            if role is not None:
                user.role = role
            if active is not None:
                user.active = active
            if password_hash is not None:
                user.password_hash = password_hash
            s.flush()
            admins = s.scalar(
                select(func.count()).select_from(User).where(User.role == "admin", User.active.is_(True))
            )
            if not admins:
                raise _LastAdminError  # rolls the change back
            if active is False or password_hash is not None:
                s.execute(delete(AdminSession).where(AdminSession.user_id == user_id))
            after = {"role": user.role, "active": user.active}
            if password_hash is not None:
                after["password"] = "changed"
            _audit(s, actor, "user.update", f"user {user.username}", before, after)
            return True

    def record_login(self, user_id: int) -> None:
        with self.session() as s:
            s.execute(update(User).where(User.id == user_id).values(last_login_at=utcnow()))

    # Sessions

    def create_session(self, token_hash: str, user_id: int, csrf_token: str, ttl_s: int) -> None:
        now = utcnow()
        with self.session() as s:
            s.execute(delete(AdminSession).where(AdminSession.expires_at < now))
            s.add(
                AdminSession(
                    id=token_hash,
                    user_id=user_id,
                    csrf_token=csrf_token,
                    created_at=now,
                    expires_at=now + timedelta(seconds=ttl_s),
                )
            )

    def session_user(self, token_hash: str) -> dict[str, Any] | None:
        """The active user of an unexpired session, with the session's CSRF token; else None."""
        with self.session() as s:
            found = s.execute(
                select(User, AdminSession.csrf_token)
                .join(AdminSession, AdminSession.user_id == User.id)
                .where(
                    AdminSession.id == token_hash,
                    AdminSession.expires_at > utcnow(),
                    User.active.is_(True),
                )
            ).first()
            if found is None:
                return None
            return {"id": found[0].id, "username": found[0].username, "role": found[0].role, "csrf": found[1]}

    def end_session(self, token_hash: str) -> None:
        with self.session() as s:
            s.execute(delete(AdminSession).where(AdminSession.id == token_hash))

    # Login throttling

    def login_locked_until(self, keys: Sequence[str]) -> datetime | None:
        now = utcnow()
        with self.session() as s:
            until = [
                _aware(t)
                for t in s.scalars(
                    select(LoginThrottle.locked_until).where(LoginThrottle.key.in_(list(keys)))
                )
                if t is not None
            ]
            latest = max((t for t in until if t is not None), default=None)
            return latest if latest is not None and latest > now else None

    def login_failed(self, keys: Sequence[str], *, limit: int, window_s: int, lock_s: int) -> None:
        """Count a failed sign-in against each key; ``limit`` failures within the window lock the key."""
        now = utcnow()
        with self.session() as s:
            for key in keys:
                row = s.get(LoginThrottle, key, with_for_update=True)
                if row is None:
                    row = LoginThrottle(key=key, failures=0, window_start=now, locked_until=None)
                    s.add(row)
                start = _aware(row.window_start)
                if start is None or (now - start).total_seconds() > window_s:
                    row.failures, row.window_start = 0, now
                row.failures += 1
                if row.failures >= limit:
                    row.locked_until = now + timedelta(seconds=lock_s)
                    row.failures, row.window_start = 0, now

    def login_succeeded(self, keys: Sequence[str]) -> None:
        with self.session() as s:
            s.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(list(keys))))

    # Chatbot integrations (issue 4): API keys and handoff webhook deliveries -------------------

    def create_api_key(self, key_id: str, channel: str, key_hash: str, name: str | None) -> None:
        with self.session() as s:
            s.add(ApiKey(id=key_id, channel=channel, key_hash=key_hash, name=name, created_at=utcnow()))

    def api_key(self, key_id: str) -> tuple[str, str] | None:
        """(channel, key hash) of an active key, or None."""
        with self.session() as s:
            row = s.get(ApiKey, key_id)
            return None if row is None or row.revoked_at is not None else (row.channel, row.key_hash)

    def api_keys(self) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(ApiKey).order_by(ApiKey.created_at))
            return [
                {c.name: getattr(r, c.name) for c in ApiKey.__table__.columns if c.name != "key_hash"}
                for r in rows
            ]

    def count_api_keys(self) -> int:
        """Active (not revoked) keys."""
        with self.session() as s:
            return int(
                s.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0
            )

    def revoke_api_key(self, key_id: str) -> bool:
        with self.session() as s:
            result = s.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return getattr(result, "rowcount", 0) == 1

    def add_delivery(self, delivery_id: str, decision_id: str, event: str, url: str, body: str) -> None:
        now = utcnow()
        with self.session() as s:
            s.add(
                WebhookDelivery(
                    id=delivery_id,
                    decision_id=decision_id,
                    event=event,
                    url=url,
                    body=body,
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )

    def claim_deliveries(self, limit: int, lease_s: float) -> list[dict[str, Any]]:
        """Pending deliveries that are due, leased for ``lease_s`` so no other replica sends them too."""
        now = utcnow()
        with self.session() as s:
            query = (
                select(WebhookDelivery)
                .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )
            if s.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = list(s.scalars(query))
            for row in rows:
                row.next_attempt_at = now + timedelta(seconds=lease_s)
            return [{c.name: getattr(r, c.name) for c in WebhookDelivery.__table__.columns} for r in rows]

    def finish_attempt(
        self,
        delivery_id: str,
        *,
        state: str,
        status: int | None,
        error: str | None,
        retry_at: datetime | None,
    ) -> None:
        now = utcnow()
        with self.session() as s:
            row = s.get(WebhookDelivery, delivery_id)
            if row is None:
                return
            row.attempts += 1
            row.state = state
            row.last_status = status
            row.last_error = error
            row.updated_at = now
            if retry_at is not None:
                row.next_attempt_at = retry_at
            if state == "delivered":
                row.delivered_at = now

    def deliveries(self, decision_id: str) -> list[dict[str, Any]]:
        """The webhook deliveries of one decision, oldest first (what supervisors see)."""
        with self.session() as s:
            rows = s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.decision_id == decision_id)
                .order_by(WebhookDelivery.created_at)
            )
            return [{c.name: getattr(r, c.name) for c in WebhookDelivery.__table__.columns} for r in rows]


class _LastAdminError(Exception):
    pass


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _row(row: Any) -> dict[str, Any]:
    return {c.name: getattr(row, c.name) for c in row.__table__.columns}


def _case(item: QueueItem, decision: Decision) -> dict[str, Any]:
    out = {f"decision_{k}": v for k, v in _row(decision).items()}
    out.update(_row(item))
    for key in ("created_at", "updated_at", "resolved_at", "decision_created_at"):
        out[key] = _aware(out[key])
    return out


def _audit(
    s: Session,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    s.add(AuditEntry(at=utcnow(), actor=actor, action=action, target=target, before=before, after=after))
