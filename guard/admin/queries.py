"""The admin pages' queries: queue work, accounts, sessions, login throttling, audit, traffic.

Each state change writes its audit entry in the same transaction. Blocking, like every query;
the pages run them in a worker thread. ``AdminQueries`` is opened over the guard's own database
(the engine of the runtime's ``Store``); every read returns a frozen record
(``guard/admin/records.py``), never a dict.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Select,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from guard.admin.records import (
    AuditFilter,
    AuditRecord,
    CalibrationRow,
    Case,
    Neighbours,
    OutcomeRow,
    QueueFilter,
    ReplayRow,
    ResolvedCase,
    ScoreMapRecord,
    SessionUser,
    TrafficRow,
    UserRecord,
    Viewer,
)
from guard.calibration import reweight
from guard.database import Database
from guard.policies import Policy, parse_policy, policy_document
from guard.store import add_policy_version
from guard.stored import QUEUE_ITEM_TIMES, QueueItemRow, aware, decision_row, from_orm
from guard.tables import (
    AdminSession,
    AuditEntry,
    CaseViewer,
    Decision,
    LoginThrottle,
    PolicyVersion,
    QueueItem,
    ScoreMapVersion,
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
        *,
        note: str | None = None,
        channel: str | None = None,
    ) -> None:
        with self.session() as s:
            _audit(s, actor, action, target, before, after, note=note, channel=channel)

    def audit_entries(
        self, limit: int = 200, offset: int = 0, where: AuditFilter | None = None
    ) -> list[AuditRecord]:
        """The newest entries first, those ``where`` selects."""
        f = where or AuditFilter()
        with self.session() as s:
            q = select(AuditEntry)
            if f.actor:
                q = q.where(AuditEntry.actor == f.actor)
            if f.action:
                q = q.where(AuditEntry.action == f.action)
            if f.channel:
                q = q.where(AuditEntry.channel == f.channel)
            if f.since is not None:
                q = q.where(AuditEntry.at >= f.since)
            if f.until is not None:
                q = q.where(AuditEntry.at < f.until)
            rows = s.scalars(q.order_by(AuditEntry.id.desc()).limit(limit).offset(offset))
            return [from_orm(AuditRecord, r, "at") for r in rows]

    def audit_facets(self) -> tuple[list[str], list[str], list[str]]:
        """The actors, actions and channels the audit log holds (for its filters)."""
        with self.session() as s:
            actors = sorted(s.scalars(select(AuditEntry.actor).distinct()))
            actions = sorted(s.scalars(select(AuditEntry.action).distinct()))
            channels = sorted(c for c in s.scalars(select(AuditEntry.channel).distinct()) if c)
            return actors, actions, channels

    # Queue

    def queue_page(self, f: QueueFilter | None = None, *, limit: int = 200, offset: int = 0) -> list[Case]:
        """Queue items with the decision fields the queue shows, filtered and ordered (no filter:
        the pending cases, oldest first)."""
        f = f or QueueFilter()
        with self.session() as s:
            rows = s.execute(_filtered(_cases(), f).order_by(*_order(f)).limit(limit).offset(offset)).all()
            return [_case(item, dec) for item, dec in rows]

    def queue_count(self, f: QueueFilter) -> int:
        """How many cases the filters match."""
        with self.session() as s:
            return int(s.scalar(_counted(f)) or 0)

    def queue_state_counts(self, f: QueueFilter) -> dict[str, int]:
        """Cases per state under ``f``'s channel and action filters, whatever its states (for the
        state filter's options)."""
        with self.session() as s:
            q = _filtered(select(QueueItem.state, func.count()).select_from(QueueItem), replace(f, states=()))
            return {state: int(n) for state, n in s.execute(q.group_by(QueueItem.state))}

    def queue_neighbours(self, queue_item_id: str, f: QueueFilter) -> Neighbours | None:
        """The cases before and after ``queue_item_id`` in the filtered, ordered queue (keyset on
        (created_at, id), so a case that no longer matches the filters still has neighbours)."""
        with self.session() as s:
            item = s.get(QueueItem, queue_item_id)
            if item is None:
                return None
            at, key = item.created_at, item.id
            same = QueueItem.created_at == at
            older = or_(QueueItem.created_at < at, and_(same, QueueItem.id < key))
            newer = or_(QueueItem.created_at > at, and_(same, QueueItem.id > key))
            if f.newest_first:  # ordered by created_at desc, then id asc
                before = or_(QueueItem.created_at > at, and_(same, QueueItem.id < key))
                after = or_(QueueItem.created_at < at, and_(same, QueueItem.id > key))
            else:
                before, after = older, newer
            order = _order(f)
            reverse = [QueueItem.created_at.asc() if f.newest_first else QueueItem.created_at.desc()]
            previous = s.scalar(
                _filtered(select(QueueItem.id), f)
                .where(before)
                .order_by(*reverse, QueueItem.id.desc())
                .limit(1)
            )
            following = s.scalar(_filtered(select(QueueItem.id), f).where(after).order_by(*order).limit(1))
            total = int(s.scalar(_counted(f)) or 0)
            position: int | None = None
            if _admits(f, item):
                ahead = s.scalar(_counted(f).where(before))
                position = int(ahead or 0) + 1
            return Neighbours(previous, following, position, total)

    def next_waiting(self, f: QueueFilter, *, viewer: str, ttl_s: float, look_ahead: int = 25) -> str | None:
        """The first waiting case under the channel and action filters, in their order, that nobody
        but ``viewer`` has open; the first waiting one when all of the next ``look_ahead`` are open
        elsewhere; None when nothing waits. Without an action filter only held cases count (a
        customer waits for them); audit items come next only under the "audit" filter."""
        waiting = replace(f, states=("pending",))
        with self.session() as s:
            q = _filtered(select(QueueItem.id), waiting)
            if not f.kind:
                q = q.where(QueueItem.kind != "audit")
            ids = [str(i) for i in s.scalars(q.order_by(*_order(waiting)).limit(look_ahead))]
        busy = self.viewers(ids, ttl_s, except_user=viewer)
        free = [i for i in ids if i not in busy]
        return (free or ids)[0] if ids else None

    # Presence: who has a case open

    def touch_viewer(self, queue_item_id: str, username: str, ttl_s: float) -> list[Viewer]:
        """Record that ``username`` has the case open now; the others who have it open (seen within
        ``ttl_s``). Rows of pages closed long ago are swept here."""
        now = utcnow()
        with self.session() as s:
            insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
            s.execute(
                insert(CaseViewer)
                .values(queue_item_id=queue_item_id, username=username, seen_at=now)
                .on_conflict_do_update(index_elements=["queue_item_id", "username"], set_={"seen_at": now})
            )
            s.execute(
                delete(CaseViewer).where(CaseViewer.seen_at < now - timedelta(seconds=max(ttl_s, 60) * 10))
            )
        return self.viewers([queue_item_id], ttl_s, except_user=username).get(queue_item_id, [])

    def leave_case(self, queue_item_id: str, username: str) -> None:
        with self.session() as s:
            s.execute(
                delete(CaseViewer).where(
                    CaseViewer.queue_item_id == queue_item_id, CaseViewer.username == username
                )
            )

    def viewers(
        self, queue_item_ids: Collection[str], ttl_s: float, *, except_user: str | None = None
    ) -> dict[str, list[Viewer]]:
        """Who has each of these cases open now (seen within ``ttl_s``), but ``except_user``."""
        if not queue_item_ids:
            return {}
        since = utcnow() - timedelta(seconds=ttl_s)
        out: dict[str, list[Viewer]] = {}
        with self.session() as s:
            q = select(CaseViewer).where(
                CaseViewer.queue_item_id.in_(list(queue_item_ids)), CaseViewer.seen_at >= since
            )
            if except_user is not None:
                q = q.where(CaseViewer.username != except_user)
            for row in s.scalars(q.order_by(CaseViewer.username)):
                seen = aware(row.seen_at)
                assert seen is not None
                out.setdefault(row.queue_item_id, []).append(Viewer(row.username, seen))
        return out

    def queue_channels(self) -> list[str]:
        with self.session() as s:
            return sorted(s.scalars(select(QueueItem.channel).distinct()))

    def queue_summary(self) -> tuple[int, datetime | None]:
        """(held cases waiting, when the oldest of them arrived): the customers waiting for a reply.
        Pending audit items are not counted (their reply was sent; see ``audits_pending``)."""
        with self.session() as s:
            count, oldest = s.execute(
                select(func.count(), func.min(QueueItem.created_at)).where(
                    QueueItem.state == "pending", QueueItem.kind != "audit"
                )
            ).one()
            return int(count or 0), aware(oldest)

    def audits_pending(self) -> int:
        """Audit items waiting to be marked right or wrong."""
        with self.session() as s:
            q = select(func.count()).select_from(QueueItem)
            return int(s.scalar(q.where(QueueItem.state == "pending", QueueItem.kind == "audit")) or 0)

    def case(self, queue_item_id: str) -> Case | None:
        with self.session() as s:
            found = s.execute(_cases().where(QueueItem.id == queue_item_id)).first()
            return None if found is None else _case(found[0], found[1])

    def resolve_case(
        self, queue_item_id: str, state: str, actor: str, *, final_reply: str | None, note: str | None
    ) -> ResolvedCase | None:
        """Move a pending case to its final ``state``, atomically: of two supervisors acting on one
        case exactly one succeeds (UPDATE ... WHERE state = 'pending'); None for the other."""
        now = utcnow()
        with self.session() as s:
            # an audit item was sent already: it is marked (mark_audit), not resolved
            item = _close_pending(
                s, queue_item_id, actor, now, audit=False, state=state, final_reply=final_reply, note=note
            )
            if item is None:
                return None
            after = {"state": state, "final_reply": final_reply, "note": note}
            _audit(
                s,
                actor,
                f"case.{state}",
                f"case {queue_item_id}",
                {"state": "pending"},
                after,
                channel=item.channel,
            )
            return ResolvedCase(queue_item_id, item.decision_id, state, now)

    def mark_audit(
        self, queue_item_id: str, verdict: str, grade: int | None, actor: str, note: str | None = None
    ) -> ResolvedCase | None:
        """Mark a pending audit item right or wrong (with an optional corrected grade), atomically:
        of two supervisors exactly one marks it; None for the other (or for a held case)."""
        now = utcnow()
        with self.session() as s:
            item = _close_pending(
                s,
                queue_item_id,
                actor,
                now,
                audit=True,
                state="audited",
                audit_verdict=verdict,
                audit_grade=grade,
                note=note,
            )
            if item is None:
                return None
            after = {"state": "audited", "verdict": verdict, "grade": grade, "note": note}
            _audit(s, actor, "case.audit", f"case {queue_item_id}", {"state": "pending"}, after)
            return ResolvedCase(queue_item_id, item.decision_id, "audited", now)

    def next_audit(self, after_id: str | None = None) -> str | None:
        """The oldest pending audit item (other than ``after_id``), for marking one after another."""
        with self.session() as s:
            q = select(QueueItem.id).where(QueueItem.kind == "audit", QueueItem.state == "pending")
            if after_id:
                q = q.where(QueueItem.id != after_id)
            return s.scalar(q.order_by(QueueItem.created_at, QueueItem.id).limit(1))

    # Outcomes and traffic

    def outcome_rows(self, channel: str | None = None, since: datetime | None = None) -> list[OutcomeRow]:
        """Labels: resolved held cases and marked audit items, by the decision's own channel, with the
        band and action it was decided with, the policy version, and what the supervisor said."""
        with self.session() as s:
            q = (
                select(
                    Decision.channel,
                    Decision.band,
                    Decision.action,
                    Decision.score,
                    QueueItem.state,
                    QueueItem.kind,
                    QueueItem.audit_verdict,
                    QueueItem.audit_grade,
                    Decision.policy_channel,
                    Decision.policy_version,
                    Decision.created_at,
                    Decision.id,
                    Decision.scorer_version,
                )
                .join(QueueItem, QueueItem.decision_id == Decision.id)
                .where(QueueItem.state != "pending")
            )
            if channel:
                q = q.where(Decision.channel == channel)
            if since is not None:
                q = q.where(Decision.created_at >= since)
            return [
                OutcomeRow(*r[:10], created_at=_aware_time(r[10]), decision_id=r[11], scorer_version=r[12])
                for r in s.execute(q)
            ]

    def answered_per_day(self, since: datetime) -> list[tuple[str, str, str, int]]:
        """(day "YYYY-MM-DD" in UTC, the decision's channel, action, decisions) since ``since``."""
        with self.session() as s:
            postgres = s.get_bind().dialect.name == "postgresql"
            day = (
                func.to_char(func.timezone("UTC", Decision.created_at), "YYYY-MM-DD")
                if postgres
                else func.strftime("%Y-%m-%d", Decision.created_at)
            )
            q = (
                select(day, Decision.channel, Decision.action, func.count())
                .where(Decision.created_at >= since)
                .group_by(day, Decision.channel, Decision.action)
            )
            return [(str(d), str(c), str(a), int(n)) for d, c, a, n in s.execute(q)]

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

    # Score maps (calibration from labels)

    def calibration_rows(self, channel: str, since: datetime, limit: int = 50_000) -> list[CalibrationRow]:
        """Decisions of ``channel`` since ``since`` with the scorer version that scored them."""
        with self.session() as s:
            q = (
                select(
                    Decision.score,
                    Decision.action,
                    Decision.degraded,
                    Decision.uncertain_reason,
                    Decision.scorer_version,
                )
                .where(Decision.channel == channel, Decision.created_at >= since)
                .order_by(Decision.created_at.desc())
                .limit(limit)
            )
            return [CalibrationRow(*r) for r in s.execute(q)]

    def score_map_history(self, channel: str) -> list[ScoreMapRecord]:
        """The channel's drafts (newest first) then its published versions (newest first)."""
        with self.session() as s:
            rows = s.scalars(
                select(ScoreMapVersion)
                .where(ScoreMapVersion.channel == channel, ScoreMapVersion.state != "discarded")
                .order_by(ScoreMapVersion.version.desc().nulls_first(), ScoreMapVersion.id.desc())
            )
            return [from_orm(ScoreMapRecord, r, "created_at", "published_at") for r in rows]

    def score_map_channels(self) -> list[str]:
        with self.session() as s:
            return sorted(s.scalars(select(ScoreMapVersion.channel).distinct()))

    def save_score_map_draft(self, channel: str, document: str, report: dict[str, Any], actor: str) -> int:
        """Keep a fitted map as the channel's draft (an earlier draft is discarded); returns its id."""
        now = utcnow()
        with self.session() as s:
            s.execute(
                update(ScoreMapVersion)
                .where(ScoreMapVersion.channel == channel, ScoreMapVersion.state == "draft")
                .values(state="discarded")
                .execution_options(synchronize_session=False)
            )
            row = ScoreMapVersion(
                channel=channel,
                version=None,
                state="draft",
                document=document,
                report=report,
                note=None,
                author=actor,
                created_at=now,
            )
            s.add(row)
            s.flush()
            _audit(s, actor, "calibration.draft", f"score map {channel} draft {row.id}", None, report)
            return row.id

    def discard_score_map_draft(self, channel: str, draft_id: int, actor: str) -> bool:
        with self.session() as s:
            result = s.execute(
                update(ScoreMapVersion)
                .where(
                    ScoreMapVersion.id == draft_id,
                    ScoreMapVersion.channel == channel,
                    ScoreMapVersion.state == "draft",
                )
                .values(state="discarded")
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) != 1:
                return False
            _audit(s, actor, "calibration.discard", f"score map {channel} draft {draft_id}", None, None)
            return True

    def publish_score_map(
        self,
        channel: str,
        actor: str,
        *,
        draft_id: int | None = None,
        from_version: int | None = None,
        note: str | None = None,
    ) -> int | None:
        """Publish the draft ``draft_id``, or again the published ``from_version`` (a rollback;
        0 switches the map off), as the channel's next version; returns it, None when there is no
        such draft or version."""
        now = utcnow()
        with self.session() as s:
            latest = s.scalar(
                select(func.max(ScoreMapVersion.version)).where(ScoreMapVersion.channel == channel)
            )
            version = (latest or 0) + 1
            current = s.scalar(
                select(ScoreMapVersion).where(
                    ScoreMapVersion.channel == channel, ScoreMapVersion.version == latest
                )
            )
            before = None if current is None else {"version": current.version, "document": current.document}
            if draft_id is not None:
                row = s.get(ScoreMapVersion, draft_id, with_for_update=True)
                if row is None or row.channel != channel or row.state != "draft" or row.document is None:
                    return None
                row.document = reweight(row.document, channel, version)
                row.version, row.state = version, "published"
                row.published_by, row.published_at, row.note = actor, now, note
                action = "calibration.publish"
            else:
                document: str | None = None
                report: dict[str, object] | None = None
                if from_version:
                    old = s.scalar(
                        select(ScoreMapVersion).where(
                            ScoreMapVersion.channel == channel,
                            ScoreMapVersion.version == from_version,
                            ScoreMapVersion.state == "published",
                        )
                    )
                    if old is None:
                        return None
                    document = None if old.document is None else reweight(old.document, channel, version)
                    report = old.report
                label = f"rollback to v{from_version}" if from_version else "switched off"
                s.add(
                    ScoreMapVersion(
                        channel=channel,
                        version=version,
                        state="published",
                        document=document,
                        report=report,
                        note=note or label,
                        author=actor,
                        created_at=now,
                        published_by=actor,
                        published_at=now,
                    )
                )
                action = "calibration.rollback"
            s.flush()
            _audit(
                s,
                actor,
                action,
                f"score map {channel} v{version}",
                before,
                {"version": version, "from_version": from_version, "draft_id": draft_id, "note": note},
            )
            return version

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

    def publish_policy_audited(
        self,
        policy: Policy,
        actor: str,
        action: str = "policy.publish",
        *,
        note: str | None = None,
        summary: str | None = None,
        rollback_of: int | None = None,
    ) -> Policy:
        """publish_policy plus its audit entry (before: the version in force), in one transaction.
        ``note``: the publisher's change note; ``summary``: what the preview said; ``rollback_of``:
        the version a rollback went back to."""
        with self.session() as s:
            published, previous = add_policy_version(
                s, policy, actor, note=note, rollback_of=rollback_of, preview_summary=summary
            )
            after: dict[str, Any] = {"version": published.version, **policy_document(policy)}
            if rollback_of is not None:
                after["rollback_of"] = rollback_of
            _audit(
                s,
                actor,
                action,
                f"policy {policy.channel} v{published.version}",
                None if previous is None else {"version": previous.version, **previous.document},
                after,
                note=note,
                channel=policy.channel,
            )
        return published

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


_Select = TypeVar("_Select", bound=Select[*tuple[Any, ...]])


def _filtered(q: _Select, f: QueueFilter) -> _Select:
    """``q`` (over queue_items) narrowed by the filters; no states: every state."""
    if f.states:
        q = q.where(QueueItem.state.in_(list(f.states)))
    if f.channel:
        q = q.where(QueueItem.channel == f.channel)
    if f.kind:
        q = q.where(QueueItem.kind == f.kind)
    return q


def _admits(f: QueueFilter, item: QueueItem) -> bool:
    """Whether ``f`` lets ``item`` through: ``_filtered``'s rule, for a row already read."""
    return (
        (not f.states or item.state in f.states)
        and (not f.channel or item.channel == f.channel)
        and (not f.kind or item.kind == f.kind)
    )


def _counted(f: QueueFilter) -> Select[int]:
    """How many queue items ``f`` lets through."""
    return _filtered(select(func.count()).select_from(QueueItem), f)


def _cases() -> Select[QueueItem, Decision]:
    """Queue items with their decisions (what ``_case`` reads)."""
    return select(QueueItem, Decision).join(Decision, Decision.id == QueueItem.decision_id)


def _close_pending(
    s: Session, queue_item_id: str, actor: str, now: datetime, *, audit: bool, **values: Any
) -> QueueItem | None:
    """Move a pending queue item out of pending with ``values``, atomically: of two supervisors
    acting on one item exactly one succeeds (UPDATE ... WHERE state = 'pending'); None for the
    other, and for an item not of the kind asked for (``audit``: an audit item, else a held case)."""
    kind = QueueItem.kind == "audit" if audit else QueueItem.kind != "audit"
    result = s.execute(
        update(QueueItem)
        .where(QueueItem.id == queue_item_id, QueueItem.state == "pending", kind)
        .values(claimed_by=actor, resolved_by=actor, resolved_at=now, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return None
    item = s.get(QueueItem, queue_item_id)
    assert item is not None
    return item


def _order(f: QueueFilter) -> tuple[Any, ...]:
    first = QueueItem.created_at.desc() if f.newest_first else QueueItem.created_at.asc()
    return (first, QueueItem.id)


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
    *,
    note: str | None = None,
    channel: str | None = None,
) -> None:
    s.add(
        AuditEntry(
            at=utcnow(),
            actor=actor,
            action=action,
            target=target,
            before=before,
            after=after,
            note=note,
            channel=channel,
        )
    )
