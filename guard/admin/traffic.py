"""Preview on recent traffic, outcome agreement and dashboard figures. Pure: rows in, numbers out.

Outcomes are labels. A supervisor who *approved* a held draft says no human was needed; one who
*edited* it or *took over* says a human was needed; a *dismissed* case says nothing either way.
A decision agrees with its label when it held the draft for a human (review, escalate) exactly
when a human was needed. A sent decision sampled for audit is labelled by the supervisor's mark:
*right* agrees, *wrong* does not. Rates come with a 95% Wilson interval.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from guard.admin.records import OutcomeRow, ReplayRow, TrafficRow
from guard.evaluation import percentile
from guard.pipeline import decide_case
from guard.policies import ACTIONS, QUEUED_ACTIONS, Policy

OUTCOME_NEEDS_HUMAN: dict[str, bool] = {"approved": False, "edited": True, "taken_over": True}

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}


def window(name: str | None, default: str = "24h") -> tuple[str, timedelta]:
    key = name if name in WINDOWS else default
    return key, WINDOWS[key]


@dataclass(frozen=True)
class Agreement:
    labelled: int
    agreed: int

    @property
    def rate(self) -> float | None:
        return self.agreed / self.labelled if self.labelled else None


def agrees(action: str, outcome: str | None) -> bool | None:
    """Whether ``action`` agrees with the supervisor's ``outcome``; None when the outcome is no label."""
    needed = OUTCOME_NEEDS_HUMAN.get(outcome or "")
    if needed is None:
        return None
    return (action in QUEUED_ACTIONS) == needed


def agreement(pairs: Iterable[tuple[str, str | None]]) -> Agreement:
    labelled = agreed = 0
    for action, outcome in pairs:
        verdict = agrees(action, outcome)
        if verdict is None:
            continue
        labelled += 1
        agreed += verdict
    return Agreement(labelled, agreed)


@dataclass(frozen=True)
class Replay:
    total: int
    old_counts: dict[str, int]
    new_counts: dict[str, int]
    changed: int
    transitions: list[tuple[str, str, int]]
    """(old action, new action, count) for every decision the draft would decide differently."""
    old_agreement: Agreement
    new_agreement: Agreement
    scores: list[float]


def replay(rows: Sequence[ReplayRow], draft: Policy) -> Replay:
    """Decide each logged decision again under ``draft`` from its recorded score (no re-scoring).

    A decision whose score was unusable (degraded) takes the draft's ``on_error`` action; one the
    guard could not judge (``uncertain_reason``) takes at least the draft's ``uncertain_action``."""
    old: Counter[str] = Counter()
    new: Counter[str] = Counter()
    moves: Counter[tuple[str, str]] = Counter()
    old_pairs: list[tuple[str, str | None]] = []
    new_pairs: list[tuple[str, str | None]] = []
    scores: list[float] = []
    for row in rows:
        score = float(row.score) if row.score is not None and math.isfinite(row.score) else None
        verdict = decide_case(draft, score, row.uncertain_reason)
        old[row.action] += 1
        new[verdict.action] += 1
        if verdict.action != row.action:
            moves[(row.action, verdict.action)] += 1
        old_pairs.append((row.action, row.outcome))
        new_pairs.append((verdict.action, row.outcome))
        if score is not None:
            scores.append(score)
    return Replay(
        total=len(rows),
        old_counts={a: old.get(a, 0) for a in ACTIONS},
        new_counts={a: new.get(a, 0) for a in ACTIONS},
        changed=sum(moves.values()),
        transitions=sorted(((a, b, n) for (a, b), n in moves.items()), key=lambda t: -t[2]),
        old_agreement=agreement(old_pairs),
        new_agreement=agreement(new_pairs),
        scores=scores,
    )


def wilson(agreed: int, labelled: int, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of ``agreed`` out of ``labelled`` (95% by default); None for no labels."""
    if labelled <= 0:
        return None
    p = agreed / labelled
    denom = 1 + z * z / labelled
    centre = (p + z * z / (2 * labelled)) / denom
    half = z * math.sqrt(p * (1 - p) / labelled + z * z / (4 * labelled * labelled)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def label_right(row: OutcomeRow) -> bool | None:
    """Whether the guard was right on one label; None when it is no label (dismissed, unmarked)."""
    if row.kind == "audit":
        return None if row.audit_verdict is None else row.audit_verdict == "right"
    return agrees(row.action, row.outcome)


@dataclass(frozen=True)
class BandOutcomes:
    channel: str
    """The decision's own channel (not the channel of the policy it fell back to)."""
    band: str
    action: str
    outcomes: dict[str, int]
    agreement: Agreement
    policies: tuple[str, ...] = ()
    """The policy versions that decided these labels, e.g. ("default v3",)."""

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.agreement.agreed, self.agreement.labelled)


OUTCOME_KEYS = ("approved", "edited", "taken_over", "dismissed", "right", "wrong")


def band_outcomes(rows: Iterable[OutcomeRow]) -> list[BandOutcomes]:
    """Per (decision channel, band, action): what supervisors did with those decisions (held cases
    resolved, audit items marked right or wrong) and how often the guard was right."""
    groups: dict[tuple[str, str, str], list[OutcomeRow]] = {}
    for row in rows:
        key = (row.channel, row.band or "degraded (no score)", row.action)
        groups.setdefault(key, []).append(row)
    out = []
    for (channel, band, action), items in sorted(groups.items()):
        counts = Counter(r.audit_verdict if r.kind == "audit" else r.outcome for r in items)
        labels = [v for v in (label_right(r) for r in items) if v is not None]
        versions = sorted({(r.policy_channel, r.policy_version) for r in items if r.policy_channel})
        out.append(
            BandOutcomes(
                channel,
                band,
                action,
                {k: counts.get(k, 0) for k in OUTCOME_KEYS},
                Agreement(len(labels), sum(labels)),
                tuple(f"{c} v{v}" for c, v in versions),
            )
        )
    return out


@dataclass(frozen=True)
class WrongSendDay:
    """One day of one channel (or of all, ``channel`` ""): how many customers got a ``send``, how many
    of those sends were audited and marked wrong, and the estimated share of the day's customers who
    got a wrong send (the send share times the wrong share of the audited sends), with its 95%
    interval (the Wilson interval of the audits, times the send share)."""

    day: str
    channel: str
    decisions: int
    sends: int
    audited: int
    wrong: int

    @property
    def share(self) -> float | None:
        if not self.audited or not self.decisions:
            return None
        return self.sends / self.decisions * self.wrong / self.audited

    @property
    def interval(self) -> tuple[float, float] | None:
        bounds = wilson(self.wrong, self.audited)
        if bounds is None or not self.decisions:
            return None
        scale = self.sends / self.decisions
        return bounds[0] * scale, bounds[1] * scale


def wrong_send_days(
    outcomes: Iterable[OutcomeRow], per_day: Iterable[tuple[str, str, str, int]], channel: str = ""
) -> list[WrongSendDay]:
    """Per day (UTC, oldest first) the share of customers who got a wrong ``send``, from the audit
    marks of sent decisions and the day's counts (``AdminQueries.answered_per_day``)."""
    decisions: Counter[str] = Counter()
    sends: Counter[str] = Counter()
    for day, chan, action, n in per_day:
        if channel and chan != channel:
            continue
        decisions[day] += n
        if action == "send":
            sends[day] += n
    audited: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    for row in outcomes:
        if row.kind != "audit" or row.action != "send" or row.audit_verdict is None:
            continue
        if (channel and row.channel != channel) or row.created_at is None:
            continue
        day = row.created_at.strftime("%Y-%m-%d")
        audited[day] += 1
        wrong[day] += row.audit_verdict == "wrong"
    return [
        WrongSendDay(day, channel, decisions[day], sends[day], audited[day], wrong[day])
        for day in sorted(set(decisions) | set(audited))
    ]


@dataclass(frozen=True)
class Dashboard:
    total: int
    per_action: dict[str, int]
    buckets: list[tuple[str, dict[str, int]]]
    scores: list[float]
    cache_hit_rate: float | None
    latency_p50: float | None
    latency_p95: float | None
    scorer_p50: float | None
    scorer_p95: float | None


def dashboard(rows: Sequence[TrafficRow], now: datetime, span: timedelta) -> Dashboard:
    step = _bucket_step(span)
    n = max(1, math.ceil(span / step))
    start = now - n * step
    buckets: list[Counter[str]] = [Counter() for _ in range(n)]
    per_action: Counter[str] = Counter()
    total_ms: list[float] = []
    scorer_ms: list[float] = []
    cached = 0
    scores: list[float] = []
    for row in rows:
        per_action[row.action] += 1
        i = int((row.created_at - start) / step)
        if 0 <= i < n:
            buckets[i][row.action] += 1
        cached += bool(row.cached)
        total_ms.append(float(row.latency_ms))
        score_ms = (row.timings_ms or {}).get("score")
        if not row.cached and isinstance(score_ms, int | float):
            scorer_ms.append(float(score_ms))
        if isinstance(row.score, float | int) and math.isfinite(row.score):
            scores.append(float(row.score))
    fmt = "%H:%M" if step < timedelta(days=1) else "%m-%d"
    if span > timedelta(days=1) and step < timedelta(days=1):
        fmt = "%m-%d %H:%M"
    return Dashboard(
        total=len(rows),
        per_action={a: per_action.get(a, 0) for a in ACTIONS},
        buckets=[((start + i * step).strftime(fmt), dict(c)) for i, c in enumerate(buckets)],
        scores=scores,
        cache_hit_rate=cached / len(rows) if rows else None,
        latency_p50=percentile(total_ms, 50),
        latency_p95=percentile(total_ms, 95),
        scorer_p50=percentile(scorer_ms, 50),
        scorer_p95=percentile(scorer_ms, 95),
    )


def _bucket_step(span: timedelta) -> timedelta:
    if span <= timedelta(hours=1):
        return timedelta(minutes=5)
    if span <= timedelta(days=1):
        return timedelta(hours=1)
    if span <= timedelta(days=7):
        return timedelta(hours=6)
    return timedelta(days=1)
