"""The typed record of one decision, as it travels pipeline -> decision log (spool) -> store.

``DecisionRow`` is what the pipeline decided; ``DecisionRecord`` adds what is written beside it
(the queue item of a held decision, the photo a supervisor will need). Only :meth:`DecisionRow.columns`
and :meth:`DecisionRow.from_columns` know the ``decisions`` table's column names; the spool writes
a record's columns, so its lines read the same as before the record was typed.

Names: the row's ``draft`` is what the chatbot wrote (column ``decisions.reply``); ``final_reply``
is what the customer sees (the API's ``reply``). ``queue_item_id`` is the API's ``escalation_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from operator import attrgetter
from typing import Any


@dataclass(frozen=True, slots=True)
class Candidate:
    """One of the replies the chatbot offered, with its score (None: the scorer failed on it)."""

    reply: str
    score: float | None


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One decision, field for field the ``decisions`` row (``draft`` is the column ``reply``)."""

    id: str
    created_at: datetime
    conversation_id: str | None
    channel: str
    locale: str
    question: str
    image_sha256: str | None
    draft: str
    candidates: tuple[Candidate, ...] | None
    score: float | None
    band: str | None
    action: str
    final_reply: str | None
    follow_up: str | None
    holding_message: str | None
    issue_phrase: str | None
    issue_kind: str | None
    """The kind of the customer's issue; None in rows written before it was recorded."""
    uncertain: bool | None
    """The guard could not judge the case (the photo carries the issue); None in older rows."""
    uncertain_reason: str | None
    image_text: str | None
    policy_channel: str
    policy_version: int
    scorer_name: str
    scorer_version: str
    inputs_used: tuple[str, ...]
    instruction_used: bool | None
    """The scorer read the scoring instruction; None in rows recorded before this was."""
    cached: bool
    degraded: bool
    reason: str | None
    latency_ms: float
    timings_ms: Mapping[str, float]
    durable: bool | None = None
    """The decision was fsync'd in the spool before it was answered; False: it waited for SQL in
    memory only (no spool, or the spool could not write); None in rows recorded before this was."""

    def columns(self) -> dict[str, Any]:
        """The row as the ``decisions`` table's columns (JSON columns as lists and dicts)."""
        out = dict(zip(_COLUMNS, _VALUES(self), strict=True))
        if self.candidates is not None:
            out["candidates"] = [{"reply": c.reply, "score": c.score} for c in self.candidates]
        out["inputs_used"] = list(self.inputs_used)
        out["timings_ms"] = dict(self.timings_ms)
        return out

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> DecisionRow:
        """The row of a ``decisions`` column mapping (a spool line); a missing column is None."""
        values: list[Any] = [columns.get(name) for name in _COLUMNS]
        candidates = values[_CANDIDATES]
        if candidates is not None:
            values[_CANDIDATES] = tuple(Candidate(c["reply"], c.get("score")) for c in candidates)
        if values[_INPUTS_USED] is not None:
            values[_INPUTS_USED] = tuple(values[_INPUTS_USED])
        return cls(*values)


_FIELDS = tuple(f.name for f in fields(DecisionRow))
_COLUMNS = tuple({"draft": "reply"}.get(name, name) for name in _FIELDS)
"""The column of each field, in order (``draft`` is the column ``reply``)."""
_VALUES = attrgetter(*_FIELDS)
_CANDIDATES = _FIELDS.index("candidates")
_INPUTS_USED = _FIELDS.index("inputs_used")


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """Everything written for one decision: the row, its queue item when held, the photo to keep."""

    row: DecisionRow
    queue_item_id: str | None = None
    image: tuple[str, str, int, int, bytes] | None = None
    """(sha256, mime type, width, height, bytes) of a photo a supervisor will need to see."""
