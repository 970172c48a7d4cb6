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
    """A resolved case as a label: the decision's band and action, and what the supervisor did."""

    channel: str
    band: str | None
    action: str
    score: float | None
    outcome: str


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
