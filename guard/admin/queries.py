"""The admin pages' queries: queue work, accounts, sessions, login throttling, audit, traffic.

Each state change writes its audit entry in the same transaction. Blocking, like every query;
the pages run them in a worker thread. ``AdminQueries`` is opened over the guard's own database
(the engine of the runtime's ``Store``); every read returns a frozen record
(``guard/admin/records.py``), never a dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from guard.admin.records import (
    AuditRecord,
    Case,
    OutcomeRow,
    ReplayRow,
    ResolvedCase,
    SessionUser,
    TrafficRow,
    UserRecord,
)
from guard.database import Database
from guard.policies import Policy, parse_policy, policy_document
from guard.stored import QUEUE_ITEM_TIMES, QueueItemRow, aware, decision_row, from_orm
from guard.tables import (
    AdminSession,
    AuditEntry,
    Decision,
    LoginThrottle,
    PolicyVersion,
    QueueItem,
    User,
    utcnow,
)


class AdminQueries(Database):
    """What the admin pages read and change."""

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

    def audit_entries(self, limit: int = 200, offset: int = 0) -> list[AuditRecord]:
        with self.session() as s:
            rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset))
            return [from_orm(AuditRecord, r, "at") for r in rows]

    # Queue

    def queue_page(
        self,
        *,
        states: Sequence[str] = ("pending",),
        channel: str | None = None,
        kind: str | None = None,
        newest_first: bool = False,
        limit: int = 200,
    ) -> list[Case]:
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
            return int(count or 0), aware(oldest)

    def case(self, queue_item_id: str) -> Case | None:
        with self.session() as s:
            found = s.execute(
                select(QueueItem, Decision)
                .join(Decision, Decision.id == QueueItem.decision_id)
                .where(QueueItem.id == queue_item_id)
            ).first()
            return None if found is None else _case(found[0], found[1])

    def resolve_case(
        self, queue_item_id: str, state: str, actor: str, *, final_reply: str | None, note: str | None
    ) -> ResolvedCase | None:
        """Move a pending case to its final ``state``, atomically: of two supervisors acting on one
        case exactly one succeeds (UPDATE ... WHERE state = 'pending'); None for the other."""
        now = utcnow()
        with self.session() as s:
            result = s.execute(
                update(QueueItem)
                .where(QueueItem.id == queue_item_id, QueueItem.state == "pending")
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
            item = s.get(QueueItem, queue_item_id)
            assert item is not None
            after = {"state": state, "final_reply": final_reply, "note": note}
            _audit(s, actor, f"case.{state}", f"case {queue_item_id}", {"state": "pending"}, after)
            return ResolvedCase(queue_item_id, item.decision_id, state, now)

    # Outcomes and traffic

    def outcome_rows(self, channel: str | None = None, since: datetime | None = None) -> list[OutcomeRow]:
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
            return [OutcomeRow(*r) for r in s.execute(q)]

    def replay_rows(self, channel: str, since: datetime, limit: int = 50_000) -> list[ReplayRow]:
        """Decisions made for ``channel`` since ``since``: score, recorded action, outcome (if any) and
        why the guard could not judge it (if it could not)."""
        with self.session() as s:
            q = (
                select(
                    Decision.score,
                    Decision.action,
                    Decision.degraded,
                    QueueItem.state,
                    Decision.uncertain_reason,
                )
                .outerjoin(QueueItem, QueueItem.decision_id == Decision.id)
                .where(
                    or_(Decision.policy_channel == channel, Decision.channel == channel),
                    Decision.created_at >= since,
                )
                .order_by(Decision.created_at.desc())
                .limit(limit)
            )
            return [ReplayRow(*r) for r in s.execute(q)]

    def traffic_rows(self, since: datetime, limit: int = 100_000) -> list[TrafficRow]:
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
            return [TrafficRow(_aware_time(r[0]), r[1], r[2], r[3], r[4], r[5] or {}) for r in s.execute(q)]

    # Policy history

    def policy_channels(self) -> list[str]:
        with self.session() as s:
            return sorted(set(s.scalars(select(PolicyVersion.channel).distinct())) | {"default"})

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

    def user_by_name(self, username: str) -> UserRecord | None:
        with self.session() as s:
            row = s.scalar(select(User).where(User.username == username))
            return None if row is None else from_orm(UserRecord, row)

    def users(self) -> list[UserRecord]:
        with self.session() as s:
            rows = s.scalars(select(User).order_by(User.username))
            return [from_orm(UserRecord, r, "created_at") for r in rows]

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

    def session_user(self, token_hash: str) -> SessionUser | None:
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
            user = found[0]
            return SessionUser(user.id, user.username, user.role, found[1])

    def end_session(self, token_hash: str) -> None:
        with self.session() as s:
            s.execute(delete(AdminSession).where(AdminSession.id == token_hash))

    # Login throttling

    def login_locked_until(self, keys: Sequence[str]) -> datetime | None:
        now = utcnow()
        with self.session() as s:
            until = [
                aware(t)
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
                start = aware(row.window_start)
                if start is None or (now - start).total_seconds() > window_s:
                    row.failures, row.window_start = 0, now
                row.failures += 1
                if row.failures >= limit:
                    row.locked_until = now + timedelta(seconds=lock_s)
                    row.failures, row.window_start = 0, now

    def login_succeeded(self, keys: Sequence[str]) -> None:
        with self.session() as s:
            s.execute(delete(LoginThrottle).where(LoginThrottle.key.in_(list(keys))))

    def login_locks(self) -> list[tuple[str, datetime]]:
        """The throttle keys locked now (``user:<name>|ip:<address>`` and ``ip:<address>``), with
        the time each lock ends, soonest first."""
        now = utcnow()
        with self.session() as s:
            rows = s.execute(
                select(LoginThrottle.key, LoginThrottle.locked_until).where(
                    LoginThrottle.locked_until.is_not(None)
                )
            ).all()
        locks = [(key, until) for key, t in rows if (until := aware(t)) is not None and until > now]
        return sorted(locks, key=lambda lock: lock[1])

    def unlock_login(self, match: str, actor: str, target: str) -> int:
        """End the sign-in locks and failure counts of the throttle keys that are ``match`` or, when
        it ends with ``|`` (a user's prefix), start with it; with an audit entry. The keys cleared."""
        column = LoginThrottle.key
        where = column.startswith(match, autoescape=True) if match.endswith("|") else column == match
        with self.session() as s:
            keys = list(s.scalars(select(column).where(where)))
            if keys:
                s.execute(delete(LoginThrottle).where(column.in_(keys)))
                _audit(s, actor, "login.unlock", target, {"throttle_keys": keys}, None)
            return len(keys)


class _LastAdminError(Exception):
    pass


def _aware_time(value: datetime) -> datetime:
    found = aware(value)
    assert found is not None
    return found


def _case(item: QueueItem, decision: Decision) -> Case:
    row = decision_row(decision)
    return Case(
        from_orm(QueueItemRow, item, *QUEUE_ITEM_TIMES),
        replace(row, created_at=_aware_time(row.created_at)),
    )


def _audit(
    s: Session,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    s.add(AuditEntry(at=utcnow(), actor=actor, action=action, target=target, before=before, after=after))
