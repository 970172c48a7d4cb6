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

QUEUE_STATES = ("pending", "approved", "edited", "taken_over", "dismissed", "audited")
QUEUE_KINDS = ("escalate", "review", "audit")
"""A held decision's item has its action as kind; ``audit``: a sampled decision that was sent."""
AUDIT_VERDICTS = ("right", "wrong")
AUDIT_GRADES = {2: "addresses the issue", 1: "right direction", 0: "does not address it"}


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
    issue_kind: Mapped[str | None] = mapped_column(String(32))
    """The kind of the customer's issue (guard.issues.lexicon.KINDS or "other"); None in old rows."""
    uncertain: Mapped[bool | None] = mapped_column(Boolean)
    """The guard could not judge the case: no text states the issue and the scorer did not see
    the photo (the policy's uncertain_action applied); None in rows recorded before."""
    uncertain_reason: Mapped[str | None] = mapped_column(String(64))
    image_text: Mapped[str | None] = mapped_column(Text)
    """The text read from the photo (OCR), when there was any and it was read in time."""
    policy_channel: Mapped[str] = mapped_column(String(100))
    policy_version: Mapped[int] = mapped_column(Integer)
    scorer_name: Mapped[str] = mapped_column(String(100))
    scorer_version: Mapped[str] = mapped_column(String(200))
    inputs_used: Mapped[list[str]] = mapped_column(JSON)
    instruction_used: Mapped[bool | None] = mapped_column(Boolean)
    """The scorer read the scoring instruction (the bundled scorer does not); None in old rows."""
    cached: Mapped[bool] = mapped_column(Boolean)
    degraded: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(100))
    latency_ms: Mapped[float] = mapped_column(Float)
    timings_ms: Mapped[dict[str, float]] = mapped_column(JSON)
    durable: Mapped[bool | None] = mapped_column(Boolean)
    """The decision was in the spool (fsync'd) before it was answered; False: in memory only (no
    spool, or the spool could not write: GUARD_SPOOL_ON_ERROR hold or memory); None in old rows."""


class QueueItem(Base):
    """An escalated or reviewed decision waiting for (or worked by) a supervisor."""

    __tablename__ = "queue_items"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    decision_id: Mapped[str] = mapped_column(ForeignKey("decisions.id"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    """"escalate" or "review" (held), or "audit" (sent, sampled for a supervisor to mark)."""
    state: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    channel: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    resolved_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    final_reply: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    audit_verdict: Mapped[str | None] = mapped_column(String(8))
    """An audit item's mark: "right" or "wrong" (AUDIT_VERDICTS); None until marked."""
    audit_grade: Mapped[int | None] = mapped_column(Integer)
    """The supervisor's corrected grade of the sent reply (AUDIT_GRADES), when given."""


class CaseViewer(Base):
    """Who has a case open right now: one row per (case, supervisor), refreshed while the case page
    is open. A row older than the presence TTL means the page was closed; old rows are swept."""

    __tablename__ = "case_viewers"

    queue_item_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(100), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


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
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The publisher's change note (why), asked for when publishing or rolling back."""
    rollback_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The version this one rolled back to (its document is that version's); None: not a rollback."""
    preview_summary: Mapped[str | None] = mapped_column(Text, nullable=True)
    """What the preview on logged traffic said when it was published ("9 cases move from ...")."""


class ScoreMapVersion(Base):
    """A channel's score map fitted on its labels: a draft (``version`` None) or a published version.

    The highest published version is in force; its ``document`` (the JSON text of a
    ``guard-score-map-1`` map) None means no map (scores as the scorer gives them)."""

    __tablename__ = "score_maps"
    __table_args__ = (UniqueConstraint("channel", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    """"draft", "published" or "discarded"."""
    document: Mapped[str | None] = mapped_column(Text)
    report: Mapped[dict[str, object] | None] = mapped_column(JSON)
    """What the fit measured (labels, agreement before and after on held-out labels)."""
    note: Mapped[str | None] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_by: Mapped[str | None] = mapped_column(String(100))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StoredImage(Base):
    """A customer's photo, by the SHA-256 of its bytes: registered ones and those of queued cases."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    mime_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    """When it was last stored (registering it again restarts GUARD_IMAGE_RETENTION_DAYS)."""


# Admin pages: accounts, sessions, login throttling, audit log -------------------------

USER_ROLES = ("supervisor", "policy_owner", "admin")


class User(Base):
    """Someone who signs in to the admin pages; ``role`` is one of USER_ROLES."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AdminSession(Base):
    """A signed-in browser. The cookie holds a signed random token; only its SHA-256 is stored."""

    __tablename__ = "admin_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class LoginThrottle(Base):
    """Failed sign-ins per key ("user:<name>" or "ip:<address>"), shared by every replica."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """One admin action: who did what to which thing, when, and the thing before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(200))
    before: Mapped[dict[str, object] | None] = mapped_column(JSON)
    after: Mapped[dict[str, object] | None] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Why: a policy's change note."""
    channel: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    """The channel of the policy or case changed; None for users."""


# Chatbot integrations: API keys and handoff webhook deliveries ---------------------


class ApiKey(Base):
    """A chatbot client's API key, bound to a channel. Only the SHA-256 of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The public part of the key (``rg_<id>_<secret>``), used to find the row."""
    channel: Mapped[str] = mapped_column(String(100), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


WEBHOOK_STATES = ("pending", "delivered", "failed")


class WebhookDelivery(Base):
    """One handoff webhook: a case (escalate/review) or a supervisor's outcome, and its delivery state."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(32), index=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    """The exact JSON body that is signed and sent."""
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
