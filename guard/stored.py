"""The typed, frozen records the store reads back: queue items, a decision with its queue item,
policy versions, API keys and webhook deliveries.

Each record's fields are its table's columns by name; :func:`from_orm` fills one from a row.
Times come back as the database hands them (SQLite: naive UTC); :func:`aware` marks them UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import Field, dataclass, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar

from guard.records import DecisionRow
from guard.tables import Decision


class _Record(Protocol):
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]


R = TypeVar("R", bound=_Record)


def from_orm(cls: type[R], row: object, *times: str) -> R:
    """The record ``cls`` of an ORM row, its fields taken by name; the fields in ``times`` made aware."""
    values = {f.name: getattr(row, f.name) for f in fields(cls)}
    for name in times:
        values[name] = aware(values[name])
    return cls(**values)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def decision_row(row: Decision) -> DecisionRow:
    """The :class:`DecisionRow` of a ``decisions`` ORM row."""
    table = Decision.__table__
    return DecisionRow.from_columns({c.name: getattr(row, c.name) for c in table.columns})


@dataclass(frozen=True, slots=True)
class QueueItemRow:
    """A held decision's queue item (the API's ``escalation_id`` is its ``id``)."""

    id: str
    decision_id: str
    kind: str
    state: str
    channel: str
    created_at: datetime
    updated_at: datetime
    claimed_by: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    final_reply: str | None
    note: str | None
    audit_verdict: str | None = None
    """An ``audit`` item's mark ("right" or "wrong"); None until marked and for held cases."""
    audit_grade: int | None = None
    """The corrected grade a supervisor gave the sent reply (2, 1 or 0), when given."""

    @property
    def is_audit(self) -> bool:
        return self.kind == "audit"

    def audit_json(self) -> dict[str, object] | None:
        """What the API and the webhook say of an audit item (None for a held case)."""
        if not self.is_audit:
            return None
        return {
            "state": "pending" if self.state == "pending" else "marked",
            "verdict": self.audit_verdict,
            "grade": self.audit_grade,
            "marked_by": self.resolved_by,
            "marked_at": None if self.resolved_at is None else self.resolved_at.isoformat(),
        }


QUEUE_ITEM_TIMES = ("created_at", "updated_at", "resolved_at")


@dataclass(frozen=True, slots=True)
class StoredDecision:
    """A decision as stored, with its queue item when it was held."""

    row: DecisionRow
    queue_item: QueueItemRow | None


@dataclass(frozen=True, slots=True)
class PolicyVersionRow:
    """One published version of a channel's policy."""

    channel: str
    version: int
    author: str
    created_at: datetime
    document: Mapping[str, Any]
    note: str | None = None
    """The change note its publisher gave."""
    rollback_of: int | None = None
    """The version it rolled back to; None when it is not a rollback."""
    preview_summary: str | None = None
    """What the preview on logged traffic said when it was published."""


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    """An API key as listed (never its hash)."""

    id: str
    channel: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One handoff webhook delivery and its state."""

    id: str
    decision_id: str
    event: str
    url: str
    body: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
