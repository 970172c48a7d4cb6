"""SQLAlchemy models. The schema changes only through Alembic migrations in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

QUEUE_STATES = ("pending", "approved", "edited", "taken_over", "dismissed")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Decision(Base):
    """One guarded reply: what came in, how it scored, what the policy did, what the customer got."""

    __tablename__ = "decisions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    conversation_id: Mapped[str | None] = mapped_column(String(200), index=True)
    channel: Mapped[str] = mapped_column(String(100))
    locale: Mapped[str] = mapped_column(String(8))
    question: Mapped[str] = mapped_column(Text)
    image_sha256: Mapped[str | None] = mapped_column(String(64))
    reply: Mapped[str] = mapped_column(Text)
    """The draft that was judged (the best one when candidates were given)."""
    candidates: Mapped[list[dict[str, object]] | None] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float)
    band: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16), index=True)
    final_reply: Mapped[str | None] = mapped_column(Text)
    """What the customer was sent: the draft, the draft plus follow-up, or None while held."""
    follow_up: Mapped[str | None] = mapped_column(Text)
    holding_message: Mapped[str | None] = mapped_column(Text)
    issue_phrase: Mapped[str | None] = mapped_column(String(200))
    policy_channel: Mapped[str] = mapped_column(String(100))
    policy_version: Mapped[int] = mapped_column(Integer)
    scorer_name: Mapped[str] = mapped_column(String(100))
    scorer_version: Mapped[str] = mapped_column(String(200))
    inputs_used: Mapped[list[str]] = mapped_column(JSON)
    cached: Mapped[bool] = mapped_column(Boolean)
    degraded: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(100))
    latency_ms: Mapped[float] = mapped_column(Float)
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSON)


class QueueItem(Base):
    """An escalated or reviewed decision waiting for (or worked by) a supervisor."""

    __tablename__ = "queue_items"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    decision_id: Mapped[str] = mapped_column(ForeignKey("decisions.id"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    """"escalate" or "review"."""
    state: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    channel: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    final_reply: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)


class PolicyVersion(Base):
    """One published version of a channel's policy; the highest version is the one in force."""

    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("channel", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    document: Mapped[dict[str, object]] = mapped_column(JSON)
    author: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StoredImage(Base):
    """A customer's photo, by the SHA-256 of its bytes: registered ones and those of queued cases."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
