"""Readable differences between two versions of a thing the admin pages change: a policy (which
scores now get which action, the error and uncertain actions, the instruction, the templates), a
user (role, active), a case (state, reply, note). Pure: documents in, rows of changes out.

A policy's bands are compared by what they *do*: the score range [0, 1] is cut at every edge of
both versions, and each stretch whose action differs is one change ("scores [0.4,0.45): review ->
escalate"). Bands split or merged without any score changing its action are one "bands" change.
Their audit samples are compared the same way ("audit sample, scores [0.7,1.0]": 2% -> 10%).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from guard.admin.charts import ACTION_LABELS
from guard.policies import DEFAULT_UNCERTAIN_ACTION
from guard.scoring.base import DEFAULT_INSTRUCTION

POLICY_FIELDS = {
    "on_error": "when the score is unusable",
    "uncertain_action": "when the guard cannot judge a case",
    "instruction": "scoring instruction",
}
NOT_COMPARED = frozenset({"version", "channel", "rollback_of"})
"""Keys that say where or which version, not what (the target and the action name them)."""
POLICY_DEFAULTS: dict[str, Any] = {
    "on_error": "escalate",
    "uncertain_action": DEFAULT_UNCERTAIN_ACTION,
    "instruction": DEFAULT_INSTRUCTION,
}
"""What a stored document without the key means (parse_policy's defaults): no change when added."""


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: ``what`` changed from ``before`` to ``after`` (None: absent on that side)."""

    what: str
    before: str | None
    after: str | None


def changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[Change]:
    """The differences from ``before`` to ``after``: a policy's by meaning, anything else key by key."""
    if _is_policy(after) or _is_policy(before):
        return policy_changes(before, after)
    return _key_changes(before or {}, after or {})


def policy_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[Change]:
    old = {**POLICY_DEFAULTS, **before} if before is not None else {}
    new = {**POLICY_DEFAULTS, **after} if after is not None else {}
    out = _band_changes(old.get("bands"), new.get("bands"))
    out += _audit_changes(old.get("bands"), new.get("bands"))
    for key, label in POLICY_FIELDS.items():
        a, b = old.get(key), new.get(key)
        if a != b:
            out.append(Change(label, _action_text(a), _action_text(b)))
    old_t: Mapping[str, Any] = old.get("templates") or {}
    new_t: Mapping[str, Any] = new.get("templates") or {}
    for key in sorted(set(old_t) | set(new_t)):
        if old_t.get(key) != new_t.get(key):
            out.append(
                Change(
                    f"template {key}",
                    _template_text(old_t.get(key), before),
                    _template_text(new_t.get(key), after),
                )
            )
    known = {"bands", "templates", *POLICY_FIELDS, *NOT_COMPARED}
    rest_old = {k: v for k, v in old.items() if k not in known}
    rest_new = {k: v for k, v in new.items() if k not in known}
    out += _key_changes(rest_old, rest_new)
    return out


def _is_policy(doc: Mapping[str, Any] | None) -> bool:
    return isinstance(doc, Mapping) and isinstance(doc.get("bands"), list)


Segment = tuple[float, float, str]


def _segments(raw: Any) -> list[Segment] | None:
    if not isinstance(raw, list):
        return None
    out: list[Segment] = []
    for band in raw:
        try:
            out.append((float(band["lo"]), float(band["hi"]), str(band["action"])))
        except (KeyError, TypeError, ValueError):
            return None
    return sorted(out)


V = TypeVar("V")


def _value_at(bands: list[tuple[float, float, V]], lo: float, hi: float) -> V | None:
    """The value (action, audit sample) of the band that covers the stretch [lo, hi) (one band
    does: it lies between edges); None when none does."""
    mid = (lo + hi) / 2
    return next((x for a, b, x in bands if a <= mid < b), None)


def _stretches(
    old: list[tuple[float, float, V]], new: list[tuple[float, float, V]]
) -> list[tuple[float, float, V | None, V | None]]:
    """(lo, hi, old value, new value) of each stretch of scores, cut at every edge of both
    versions, whose value differs; a stretch that continues the same change is joined to it."""
    edges = sorted({e for a, b, _ in old + new for e in (a, b) if math.isfinite(e)})
    stretches: list[tuple[float, float, V | None, V | None]] = []
    for lo, hi in itertools.pairwise(edges):
        was, now = _value_at(old, lo, hi), _value_at(new, lo, hi)
        if was == now:
            continue
        if stretches and stretches[-1][1] == lo and stretches[-1][2:] == (was, now):
            stretches[-1] = (stretches[-1][0], hi, was, now)  # extend: the same move continues
        else:
            stretches.append((lo, hi, was, now))
    return stretches


def band_label(lo: float, hi: float) -> str:
    return f"[{_num(lo)},{_num(hi)}{']' if hi >= 1.0 else ')'}"


def _bands_text(segments: list[Segment]) -> str:
    return ", ".join(f"{band_label(a, b)} {ACTION_LABELS.get(x, x)}" for a, b, x in segments)


def _band_changes(before: Any, after: Any) -> list[Change]:
    old, new = _segments(before), _segments(after)
    if old == new:
        return []
    if new is None:
        return [Change("bands", _bands_text(old) if old else None, None)]
    if old is None:  # the first version: every band is new
        return [Change(f"scores {band_label(a, b)}", None, ACTION_LABELS.get(x, x)) for a, b, x in new]
    out = [
        Change(
            f"scores {band_label(lo, hi)}",
            ACTION_LABELS.get(was, was) if was else "no band",
            ACTION_LABELS.get(now, now) if now else "no band",
        )
        for lo, hi, was, now in _stretches(old, new)
    ]
    if not out:  # the same action for every score: bands were split or merged
        out.append(Change("bands (same action for every score)", _bands_text(old), _bands_text(new)))
    return out


def _audits(raw: Any) -> list[tuple[float, float, float | None]] | None:
    """(lo, hi, audit_sample) of each band; None for no or malformed bands."""
    if not isinstance(raw, list):
        return None
    out: list[tuple[float, float, float | None]] = []
    for band in raw:
        try:
            share = band.get("audit_sample")
            out.append((float(band["lo"]), float(band["hi"]), None if share is None else float(share)))
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
    return sorted(out)


def _audit_text(share: float | None) -> str:
    return "the default" if share is None else f"{share * 100:g}%"


def _audit_changes(before: Any, after: Any) -> list[Change]:
    """The audit samples that differ, by score stretch ("audit sample, scores [0.7,1.0]": 2% -> 10%);
    a first version lists the samples it sets."""
    old, new = _audits(before), _audits(after)
    if new is None or old == new:
        return []
    if old is None:
        return [
            Change(f"audit sample, scores {band_label(a, b)}", None, _audit_text(x))
            for a, b, x in new
            if x is not None
        ]
    return [
        Change(f"audit sample, scores {band_label(lo, hi)}", _audit_text(was), _audit_text(now))
        for lo, hi, was, now in _stretches(old, new)
    ]


def _action_text(value: Any) -> str | None:
    if value is None:
        return None
    return ACTION_LABELS.get(value, value) if isinstance(value, str) else _text(value)


def _template_text(value: Any, doc: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return "(the built-in text)" if doc is not None else None
    return str(value)


def _key_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    out = []
    for key in [*before, *(k for k in after if k not in before)]:
        if key in NOT_COMPARED:
            continue
        a, b = before.get(key), after.get(key)
        if a != b:
            out.append(
                Change(str(key), _text(a) if key in before else None, _text(b) if key in after else None)
            )
    return out


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return _num(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _num(x: float) -> str:
    """0.4 -> "0.4", 1 -> "1.0": as the policy's own band labels read."""
    text = f"{x:g}"
    return text if "." in text or "e" in text or not math.isfinite(x) else text + ".0"
