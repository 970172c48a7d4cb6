"""SQL: the guard's own queries (decisions, policy versions, images, API keys, webhook deliveries).

The queries of the admin pages are in ``guard/admin/queries.py`` (``AdminQueries``, over the same
database). Every read returns a frozen record (``guard/stored.py``), never a dict.

The methods here are blocking; async callers run them in a worker thread. The schema is
created and changed only by the Alembic migrations (``guard migrate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from alembic import command
from alembic.config import Config
from psycopg.types.json import Json
from sqlalchemy import (
    JSON,
    Connection,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from guard import resources
from guard.calibration import ChannelMap, parse_channel_map
from guard.channel_book import bounded as bounded  # re-exported: the store's callers wait with it
from guard.database import Database, create_db_engine
from guard.policies import QUEUED_ACTIONS, Policy, default_policy, parse_policy, policy_document
from guard.records import DecisionRecord
from guard.stored import (
    ApiKeyRow,
    Delivery,
    PolicyVersionRow,
    QueueItemRow,
    StoredDecision,
    aware,
    decision_row,
    from_orm,
)
from guard.tables import (
    ApiKey,
    Decision,
    PolicyVersion,
    QueueItem,
    ScoreMapVersion,
    StoredImage,
    WebhookDelivery,
    utcnow,
)

T = TypeVar("T")
MIGRATIONS_DIR = resources.migrations()
_DECISIONS = cast(Table, Decision.__table__)
_QUEUE_ITEMS = cast(Table, QueueItem.__table__)


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


_DECISION_COLUMNS = [c.name for c in _DECISIONS.columns]
_JSON_COLUMNS = frozenset(c.name for c in _DECISIONS.columns if isinstance(c.type, JSON))


def _insert_decisions(conn: Connection, records: Sequence[DecisionRecord]) -> set[str]:
    """SQLite: insert the decisions not there yet; returns their ids."""
    ids = [r.row.id for r in records]
    existing = set(conn.execute(select(_DECISIONS.c.id).where(_DECISIONS.c.id.in_(ids))).scalars())
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.row.id not in existing and rec.row.id not in rows:
            rows[rec.row.id] = rec.row.columns()
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
                d = rec.row.columns()
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


class Store(Database):
    """The guard's own queries."""

    # Decisions -------------------------------------------------------------------------------

    def record(self, records: Sequence[DecisionRecord]) -> None:
        """Write a batch of decisions in one transaction; idempotent (a retried batch adds nothing twice).

        Core statements, no ORM unit of work. The decisions go in with ``ON CONFLICT (id) DO
        NOTHING`` and the statement tells which ones are new: on PostgreSQL the batch is COPYed
        into a temporary table and moved over with one ``INSERT ... SELECT ... RETURNING id``
        (about 10x the rows/s of an executemany); on SQLite one SELECT finds the ids already there
        and one executemany (sent as multi-row VALUES pages) inserts the rest. Only new decisions
        get their photo and, when held, their queue item (``ON CONFLICT DO NOTHING`` too, for a
        concurrent writer of the same batch). A decision that was answered (send, follow-up) and
        still carries a queue item id was sampled for audit: its item's kind is ``audit``. A field
        missing from a record (an older spool line) is None, written as NULL.
        """
        if not records:
            return
        with self.session() as s:
            conn = s.connection()
            postgres = conn.dialect.name == "postgresql"
            new_ids = _copy_decisions(conn, records) if postgres else _insert_decisions(conn, records)
            fresh = {r.row.id: r for r in records if r.row.id in new_ids}.values()
            images = {r.image[0]: r.image for r in fresh if r.image is not None}
            for image in images.values():
                self._keep_image(s, *image)
            items = [
                {
                    "id": r.queue_item_id,
                    "decision_id": r.row.id,
                    "kind": r.row.action if r.row.action in QUEUED_ACTIONS else "audit",
                    "state": "pending",
                    "channel": r.row.channel,
                    "created_at": r.row.created_at,
                    "updated_at": r.row.created_at,
                }
                for r in fresh
                if r.queue_item_id is not None
            ]
            if items:
                insert = pg_insert if postgres else sqlite_insert
                conn.execute(insert(_QUEUE_ITEMS).on_conflict_do_nothing(), items)

    def get_decision(self, decision_id: str) -> StoredDecision | None:
        with self.session() as s:
            row = s.get(Decision, decision_id)
            if row is None:
                return None
            item = s.scalar(select(QueueItem).where(QueueItem.decision_id == decision_id))
            return StoredDecision(decision_row(row), None if item is None else from_orm(QueueItemRow, item))

    def count_decisions(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(Decision)) or 0)

    def queue(self, state: str = "pending") -> list[QueueItemRow]:
        with self.session() as s:
            rows = s.scalars(select(QueueItem).where(QueueItem.state == state).order_by(QueueItem.created_at))
            return [from_orm(QueueItemRow, r) for r in rows]

    # Policies --------------------------------------------------------------------------------

    def active_policy(self, channel: str) -> Policy | None:
        """The highest published version of ``channel``'s policy, or None if it has none."""
        with self.session() as s:
            row = latest_policy_version(s, channel)
            if row is None:
                return None
            return parse_policy(row.document, channel=row.channel, version=row.version)

    def active_policies(self) -> dict[str, Policy]:
        """Every channel's highest published policy version (the local policy copy is made of them)."""
        with self.session() as s:
            latest = (
                select(PolicyVersion.channel, func.max(PolicyVersion.version).label("version"))
                .group_by(PolicyVersion.channel)
                .subquery()
            )
            rows = s.scalars(
                select(PolicyVersion).join(
                    latest,
                    (PolicyVersion.channel == latest.c.channel) & (PolicyVersion.version == latest.c.version),
                )
            )
            return {r.channel: parse_policy(r.document, channel=r.channel, version=r.version) for r in rows}

    def policy_in_force(self, channel: str) -> tuple[Policy, bool]:
        """The policy ``channel`` is under, and whether it is the channel's own: its own, else the
        ``default`` channel's, else the built-in default. The one place this rule is written."""
        own = self.active_policy(channel)
        if own is not None:
            return own, True
        fallback = self.active_policy("default") if channel != "default" else None
        return (fallback or default_policy()), False

    def publish_policy(self, policy: Policy, author: str, note: str | None = None) -> Policy:
        """Store ``policy`` as the next version of its channel and return it with that version;
        ``note``: why (the change note shown with the version)."""
        with self.session() as s:
            published, _previous = add_policy_version(s, policy, author, note=note)
        return published

    def policy_versions(self, channel: str, *, newest_first: bool = False) -> list[PolicyVersionRow]:
        """Every version of ``channel``'s policy, with author, time (UTC) and document."""
        order = PolicyVersion.version.desc() if newest_first else PolicyVersion.version
        with self.session() as s:
            rows = s.scalars(select(PolicyVersion).where(PolicyVersion.channel == channel).order_by(order))
            return [from_orm(PolicyVersionRow, r, "created_at") for r in rows]

    # Score maps (calibration from labels, guard/calibration.py) -------------------------------

    def active_score_map(self, channel: str) -> ChannelMap | None:
        """The highest published score map of ``channel``; None when it has none or it is switched off."""
        with self.session() as s:
            row = s.scalar(
                select(ScoreMapVersion)
                .where(ScoreMapVersion.channel == channel, ScoreMapVersion.state == "published")
                .order_by(ScoreMapVersion.version.desc())
                .limit(1)
            )
            if row is None or row.document is None or row.version is None:
                return None
            return parse_channel_map(channel, row.version, row.document)

    def score_maps(self, channel: str) -> dict[int, ChannelMap]:
        """Every published map of ``channel`` by version (to take recorded scores back to raw ones)."""
        with self.session() as s:
            rows = s.scalars(
                select(ScoreMapVersion).where(
                    ScoreMapVersion.channel == channel, ScoreMapVersion.state == "published"
                )
            )
            return {
                r.version: parse_channel_map(channel, r.version, r.document)
                for r in rows
                if r.document is not None and r.version is not None
            }

    # Images ----------------------------------------------------------------------------------

    def save_image(self, sha256: str, mime_type: str, width: int, height: int, data: bytes) -> None:
        with self.session() as s:
            self._keep_image(s, sha256, mime_type, width, height, data)

    def get_image(self, sha256: str) -> tuple[str, bytes] | None:
        with self.session() as s:
            row = s.get(StoredImage, sha256)
            return None if row is None else (row.mime_type, row.data)

    def get_image_stored_at(self, sha256: str) -> tuple[bytes, datetime] | None:
        """The photo's bytes and when it was (last) stored, or None."""
        with self.session() as s:
            row = s.get(StoredImage, sha256)
            return None if row is None else (row.data, _aware_at(row.created_at))

    def delete_expired_images(self, cutoff: datetime) -> int:
        """Delete the photos last stored before ``cutoff``, except those of cases still pending in
        the queue (a supervisor may yet need them); the number deleted."""
        with self.session() as s:
            open_cases = (
                select(Decision.image_sha256)
                .join(QueueItem, QueueItem.decision_id == Decision.id)
                .where(QueueItem.state == "pending", Decision.image_sha256.is_not(None))
            )
            result = s.execute(
                delete(StoredImage).where(
                    StoredImage.created_at < cutoff, StoredImage.sha256.not_in(open_cases)
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def _keep_image(
        self, s: Session, sha256: str, mime_type: str, width: int, height: int, data: bytes
    ) -> None:
        """Store the photo, or (already stored) restart its retention period from now."""
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
        s.execute(
            insert(StoredImage)
            .values(**values)
            .on_conflict_do_update(index_elements=["sha256"], set_={"created_at": values["created_at"]})
        )

    # Chatbot integrations: API keys and handoff webhook deliveries -------------------

    def create_api_key(self, key_id: str, channel: str, key_hash: str, name: str | None) -> None:
        with self.session() as s:
            s.add(ApiKey(id=key_id, channel=channel, key_hash=key_hash, name=name, created_at=utcnow()))

    def api_key(self, key_id: str) -> tuple[str, str] | None:
        """(channel, key hash) of an active key, or None."""
        with self.session() as s:
            row = s.get(ApiKey, key_id)
            return None if row is None or row.revoked_at is not None else (row.channel, row.key_hash)

    def api_keys(self) -> list[ApiKeyRow]:
        with self.session() as s:
            rows = s.scalars(select(ApiKey).order_by(ApiKey.created_at))
            return [from_orm(ApiKeyRow, r) for r in rows]

    def active_api_keys(self) -> dict[str, tuple[str, str]]:
        """key id -> (channel, key hash) of every active key (for the guard's local copy)."""
        with self.session() as s:
            rows = s.execute(
                select(ApiKey.id, ApiKey.channel, ApiKey.key_hash).where(ApiKey.revoked_at.is_(None))
            )
            return {key_id: (channel, key_hash) for key_id, channel, key_hash in rows}

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

    def claim_deliveries(self, limit: int, lease_s: float) -> list[Delivery]:
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
            return [from_orm(Delivery, r) for r in rows]

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

    def deliveries(self, decision_id: str) -> list[Delivery]:
        """The webhook deliveries of one decision, oldest first (what supervisors see)."""
        with self.session() as s:
            rows = s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.decision_id == decision_id)
                .order_by(WebhookDelivery.created_at)
            )
            return [from_orm(Delivery, r) for r in rows]


def latest_policy_version(s: Session, channel: str) -> PolicyVersion | None:
    """The row of the highest published version of ``channel``'s policy, in the session ``s``."""
    return s.scalar(
        select(PolicyVersion)
        .where(PolicyVersion.channel == channel)
        .order_by(PolicyVersion.version.desc())
        .limit(1)
    )


def add_policy_version(
    s: Session,
    policy: Policy,
    author: str,
    *,
    note: str | None = None,
    rollback_of: int | None = None,
    preview_summary: str | None = None,
) -> tuple[Policy, PolicyVersion | None]:
    """Add ``policy`` as the next version of its channel in the session ``s`` (the caller's
    transaction: the admin writes its audit entry in the same one). Returns the policy with its
    version, and the row of the version it follows (None for a channel's first). ``note``: the
    change note; ``rollback_of``: the version a rollback went back to; ``preview_summary``: what the
    preview said when it was published."""
    previous = latest_policy_version(s, policy.channel)
    version = (previous.version if previous else 0) + 1
    document = policy_document(policy)
    s.add(
        PolicyVersion(
            channel=policy.channel,
            version=version,
            document=document,
            author=author,
            created_at=utcnow(),
            note=note,
            rollback_of=rollback_of,
            preview_summary=preview_summary,
        )
    )
    return parse_policy(document, channel=policy.channel, version=version), previous


def _aware_at(value: datetime) -> datetime:
    found = aware(value)
    assert found is not None
    return found
