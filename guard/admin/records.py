"""The typed, frozen records the admin pages' queries return: cases, accounts, sessions, audit
entries, and the rows the dashboard, the policy preview and the outcomes page count."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from guard.records import DecisionRow
from guard.stored import QueueItemRow


@dataclass(frozen=True, slots=True)
class Case:
    """A queue item with the decision it holds: one row of the queue, one case page."""

    item: QueueItemRow
    decision: DecisionRow

    def waiting_s(self, now: datetime) -> float:
        """How long the case waited: until it was resolved, else until ``now``."""
        return ((self.item.resolved_at or now) - self.item.created_at).total_seconds()


@dataclass(frozen=True, slots=True)
class ResolvedCase:
    id: str
    decision_id: str
    state: str
    resolved_at: datetime


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    username: str
    password_hash: str
    role: str
    active: bool
    created_at: datetime | None
    last_login_at: datetime | None


@dataclass(frozen=True, slots=True)
class SessionUser:
    """The user of a live session, with the session's CSRF token."""

    id: int
    username: str
    role: str
    csrf: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime | None
    actor: str
    action: str
    target: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    note: str | None = None
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What the audit log page shows: every field None or empty means "any"."""

    actor: str | None = None
    action: str | None = None
    channel: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    """Exclusive."""


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    """A label: a resolved held case (``outcome`` approved, edited, taken_over, dismissed) or a marked
    audit item (``kind`` "audit", ``outcome`` "audited", ``audit_verdict`` right/wrong), with the
    decision's own channel, band and action and the policy version that decided it."""

    channel: str
    band: str | None
    action: str
    score: float | None
    outcome: str
    kind: str = ""
    audit_verdict: str | None = None
    audit_grade: int | None = None
    policy_channel: str = ""
    policy_version: int = 0
    created_at: datetime | None = None
    decision_id: str = ""
    scorer_version: str = ""


@dataclass(frozen=True, slots=True)
class ScoreMapRecord:
    """A channel's score map: a draft (``version`` None) or a published version (``document`` None:
    switched off, scores as the scorer gives them)."""

    id: int
    channel: str
    version: int | None
    state: str
    document: str | None
    report: Mapping[str, Any] | None
    note: str | None
    author: str
    created_at: datetime | None
    published_by: str | None
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class CalibrationRow:
    """A logged decision to score again with a draft map: its score, the scorer version that names
    the map it was scored under, and what was decided."""

    score: float | None
    action: str
    degraded: bool
    uncertain_reason: str | None
    scorer_version: str


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """A recorded decision to decide again: its score, action, outcome (None: not resolved) and why
    the guard could not judge it (None: it could)."""

    score: float | None
    action: str
    degraded: bool = False
    outcome: str | None = None
    uncertain_reason: str | None = None


@dataclass(frozen=True, slots=True)
class TrafficRow:
    """What the dashboard draws of one decision."""

    created_at: datetime
    action: str
    score: float | None
    cached: bool
    latency_ms: float
    timings_ms: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """Which cases the queue shows, and in which order: the filters a supervisor works under, kept
    from the list to each case and to the next case after an action."""

    states: tuple[str, ...] = ("pending",)
    channel: str | None = None
    kind: str | None = None
    newest_first: bool = False


@dataclass(frozen=True, slots=True)
class Neighbours:
    """A case's place in the filtered queue: the cases before and after it (None: none), its
    position from 1 (None: the case is not among them) and how many cases the filters match."""

    previous: str | None
    next: str | None
    position: int | None
    total: int


@dataclass(frozen=True, slots=True)
class Viewer:
    """Someone who has a case open: seen at ``seen_at`` (refreshed while the page stays open)."""

    username: str
    seen_at: datetime
