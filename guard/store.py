"""SQL: opens the engine and owns every query (decisions, queue, policy versions, images).

The methods here are blocking; async callers run them in a worker thread. The schema is
created and changed only by the Alembic migrations (``guard migrate``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from guard.policies import Policy, parse_policy, policy_document
from guard.tables import Decision, PolicyVersion, QueueItem, StoredImage, utcnow

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their folder, WAL mode and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=5)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


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
        """Write a batch of decisions in one transaction; idempotent (a retried batch adds nothing twice)."""
        if not records:
            return
        with self.session() as s:
            ids = [r.decision["id"] for r in records]
            existing = set(s.scalars(select(Decision.id).where(Decision.id.in_(ids))))
            for rec in records:
                if rec.decision["id"] in existing:
                    continue
                if rec.image is not None:
                    self._keep_image(s, *rec.image)
                s.add(Decision(**rec.decision))
                if rec.queue_item_id is not None:
                    s.flush()
                    s.add(
                        QueueItem(
                            id=rec.queue_item_id,
                            decision_id=rec.decision["id"],
                            kind=rec.decision["action"],
                            state="pending",
                            channel=rec.decision["channel"],
                            created_at=rec.decision["created_at"],
                            updated_at=rec.decision["created_at"],
                        )
                    )

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
