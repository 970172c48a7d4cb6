"""Calibration from supervisors' labels: a per-channel score map fitted on that channel's outcomes.

Every resolved case and marked audit item is a label on the reply the guard judged, as a grade:

========================  =====  ==========================================
label                     grade  meaning
========================  =====  ==========================================
approved (held case)      2      the draft addressed the issue as it was
edited (held case)        1      right direction, it needed a change
taken over (held case)    0      it did not address the issue
audit marked right        2 / 1  send: 2; follow-up: 1 (the follow-up was right)
audit marked wrong        0      send (a follow-up marked wrong without a grade is no label)
audit with a grade        that grade
dismissed                 —      no label
========================  =====  ==========================================

A channel's map is a logistic curve on the logit of the scorer's own (raw) score,
``score = sigmoid(w * logit(raw) + b)`` (``guard.scoring.score_map`` format, backend ``channel``,
feature ``score_logit``), fitted to the targets grade / 2, so that the channel's bands (send at
about 0.7 by default) sit where the labels say. A decision scored under an older map is taken back
to its raw score through that map (its ``scorer_version`` names it), so refits never compound.

*Agreement* is the share of labels whose grade matches what the policy in force does with the
score: send for 2, follow-up for 1, hold (review, escalate) for 0. Before: the scores the guard
gives today; after: each label scored by a map fitted without it (5-fold cross-validation by
decision id). With fewer than ``MIN_LABELS`` labels, or too few on either side, nothing is fitted
and the report says how many more are needed.

The map in force goes into the scorer version (``<scorer version>+cal-<channel>-v<n>-<sha>``), so
it is part of every score's cache key: a score cached under another map is never served.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from guard.channel_book import ChannelBook, bounded
from guard.policies import QUEUED_ACTIONS, Policy, decide
from guard.scoring.base import ScorerError
from guard.scoring.score_map import ScoreMap, fit_logistic, logit, parse_score_map, score_map_json

log = logging.getLogger(__name__)

BACKEND = "channel"
FEATURE = "score_logit"
MIN_LABELS = 30
MIN_EACH_SIDE = 5
"""Labels needed that address the issue (grade 2) and that do not (grade 0 or 1)."""
FOLDS = 5
L2 = 0.5
_MAP_ID = re.compile(r"\+cal-(?P<channel>.+)-v(?P<version>\d+)-(?P<sha>[0-9a-f]{12})$")


@dataclass(frozen=True)
class ChannelMap:
    """A channel's published score map (``version`` counts from 1 per channel)."""

    channel: str
    version: int
    score_map: ScoreMap

    @property
    def id(self) -> str:
        """``cal-<channel>-v<n>-<sha of the document>``: goes into the scorer version and the cache key."""
        return self.score_map.id

    @property
    def weights(self) -> tuple[float, float]:
        m = self.score_map.maps["default"]
        return m.w[0], m.b

    def apply(self, raw: float) -> float:
        """The calibrated score of a raw score in [0, 1]."""
        return self.score_map.score("default", {FEATURE: logit(raw)})

    def invert(self, score: float) -> float:
        """The raw score this map turned into ``score`` (the map is increasing: w > 0)."""
        w, b = self.weights
        z = (logit(score) - b) / w
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def map_version_name(channel: str, version: int | None) -> str:
    return f"{channel}-v{version}" if version is not None else f"{channel}-draft"


def map_document(channel: str, version: int | None, w: float, b: float, note: str = "") -> str:
    """The JSON text of a channel map (the bytes its sha is taken of)."""
    return score_map_json(
        backend=BACKEND,
        version=map_version_name(channel, version),
        maps={"default": ([FEATURE], [w], b)},
        note=note,
    )


def parse_channel_map(channel: str, version: int, document: str) -> ChannelMap:
    """Parse a stored map; raises ScorerError when it is not a valid increasing channel map."""
    parsed = parse_score_map(document.encode("utf-8"), backend=BACKEND, needs={"default": [FEATURE]})
    m = parsed.maps["default"]
    if m.features != (FEATURE,) or not m.w[0] > 0:
        raise ScorerError(f"the score map of {channel} v{version} must be increasing in {FEATURE}")
    return ChannelMap(channel, version, parsed)


def reweight(document: str, channel: str, version: int | None) -> str:
    """The same map with another version name (a draft published as v<n>, an old version rolled back)."""
    doc = parse_score_map(document.encode("utf-8"), backend=BACKEND, needs={"default": [FEATURE]})
    m = doc.maps["default"]
    return map_document(channel, version, m.w[0], m.b, doc.note)


def map_in_scorer_version(scorer_version: str) -> tuple[str, int] | None:
    """(channel, version) of the map named in a recorded scorer version; None when there was none."""
    found = _MAP_ID.search(scorer_version or "")
    return None if found is None else (found["channel"], int(found["version"]))


def scorer_version_with(scorer_version: str, channel_map: ChannelMap | None) -> str:
    return scorer_version if channel_map is None else f"{scorer_version}+{channel_map.id}"


# Labels ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Label:
    decision_id: str
    raw: float
    """The scorer's own score, before any channel map."""
    grade: int
    source: str


def label_grade(kind: str, outcome: str, action: str, verdict: str | None, grade: int | None) -> int | None:
    """The grade one supervisor's word gives the judged reply (see the module's table); None: no label."""
    if kind == "audit":
        if verdict is None:
            return None
        if grade is not None:
            return grade
        if verdict == "right":
            return 2 if action == "send" else 1
        return 0 if action == "send" else None
    return {"approved": 2, "edited": 1, "taken_over": 0}.get(outcome)


def collect_labels(
    rows: Iterable[Any], maps: Mapping[int, ChannelMap], channel: str
) -> tuple[list[Label], int]:
    """Labels of ``channel`` from outcome rows (``guard.admin.records.OutcomeRow``), each taken back to
    its raw score; also how many were skipped (no score, or scored under a map that is gone)."""
    labels: list[Label] = []
    skipped = 0
    for row in rows:
        if row.channel != channel:
            continue
        grade = label_grade(row.kind, row.outcome, row.action, row.audit_verdict, row.audit_grade)
        if grade is None:
            continue
        score = row.score
        if score is None or not math.isfinite(score):
            skipped += 1
            continue
        named = map_in_scorer_version(row.scorer_version)
        raw = float(score)
        if named is not None:
            used = maps.get(named[1]) if named[0] == channel else None
            if used is None:
                skipped += 1
                continue
            raw = used.invert(raw)
        source = f"audit {row.audit_verdict}" if row.kind == "audit" else row.outcome
        labels.append(Label(row.decision_id, raw, grade, source))
    return labels, skipped


# Fitting -----------------------------------------------------------------------------------------


def category(action: str) -> int:
    """The grade an action stands for: send 2, follow-up 1, held 0."""
    if action == "send":
        return 2
    if action == "follow_up":
        return 1
    return 0 if action in QUEUED_ACTIONS else -1


def agreement(labels: Sequence[Label], scores: Sequence[float], policy: Policy) -> tuple[int, int]:
    """(labels whose grade matches what ``policy`` does with the score, labels)."""
    agreed = sum(
        category(decide(policy, s).action) == lab.grade for lab, s in zip(labels, scores, strict=True)
    )
    return agreed, len(labels)


@dataclass(frozen=True)
class FitReport:
    channel: str
    labels: int
    skipped: int
    grades: dict[str, int]
    fitted: bool
    message: str
    needed: int = 0
    """How many more labels the fit needs (0 when it fitted or cannot for another reason)."""
    before: tuple[int, int] = (0, 0)
    """(agreed, labels) with the scores the guard gives today (the map in force)."""
    after: tuple[int, int] = (0, 0)
    """(agreed, labels) with each label scored by a map fitted without it (cross-validation)."""
    w: float | None = None
    b: float | None = None
    folds: int = FOLDS
    base_version: int | None = None
    """The map in force when this was fitted (None: no map)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "labels": self.labels,
            "skipped": self.skipped,
            "grades": dict(self.grades),
            "fitted": self.fitted,
            "message": self.message,
            "needed": self.needed,
            "before": list(self.before),
            "after": list(self.after),
            "w": self.w,
            "b": self.b,
            "folds": self.folds,
            "base_version": self.base_version,
        }

    @staticmethod
    def rate(pair: Sequence[int]) -> float | None:
        return pair[0] / pair[1] if pair and pair[1] else None


@dataclass(frozen=True)
class Fit:
    report: FitReport
    document: str | None = None
    """The draft map's JSON text; None when nothing was fitted."""
    curve: list[tuple[float, float]] = field(default_factory=list)


def _fold(decision_id: str) -> int:
    return int.from_bytes(hashlib.sha256(decision_id.encode("utf-8")).digest()[:4], "big") % FOLDS


def _fit(labels: Sequence[Label]) -> tuple[float, float]:
    x = np.array([[logit(lab.raw)] for lab in labels], dtype=np.float64)
    t = np.array([lab.grade / 2 for lab in labels], dtype=np.float64)
    w, b = fit_logistic(x, t, l2=L2)
    return float(w[0]), b


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def fit_channel(
    channel: str,
    labels: Sequence[Label],
    policy: Policy,
    current: ChannelMap | None,
    *,
    skipped: int = 0,
) -> Fit:
    """Fit ``channel``'s map on ``labels``, or say how many more labels it needs."""
    grades = {str(g): sum(lab.grade == g for lab in labels) for g in (2, 1, 0)}
    good = grades["2"]
    bad = len(labels) - good
    base = current.version if current is not None else None

    def report(fitted: bool, message: str, **more: Any) -> FitReport:
        return FitReport(channel, len(labels), skipped, grades, fitted, message, base_version=base, **more)

    short = max(0, MIN_LABELS - len(labels))
    side = max(0, MIN_EACH_SIDE - good) + max(0, MIN_EACH_SIDE - bad)
    if short or side:
        needed = max(short, side)
        parts = [f"{len(labels)} labels so far; a fit needs at least {MIN_LABELS}"]
        parts.append(
            f"with at least {MIN_EACH_SIDE} that address the issue (has {good}) and {MIN_EACH_SIDE} that "
            f"do not (has {bad})"
        )
        return Fit(report(False, f"Needs {needed} more labels: " + ", ".join(parts) + ".", needed=needed))
    today = [current.apply(lab.raw) if current is not None else lab.raw for lab in labels]
    before = agreement(labels, today, policy)
    held_out: list[float] = [0.0] * len(labels)
    folds = [_fold(lab.decision_id) for lab in labels]
    for k in range(FOLDS):
        train = [lab for lab, f in zip(labels, folds, strict=True) if f != k]
        test = [i for i, f in enumerate(folds) if f == k]
        if not test:
            continue
        w, b = _fit(train) if train else (1.0, 0.0)
        for i in test:
            held_out[i] = _sigmoid(w * logit(labels[i].raw) + b)
    after = agreement(labels, held_out, policy)
    w, b = _fit(labels)
    if not (math.isfinite(w) and math.isfinite(b)) or w <= 0:
        return Fit(
            report(
                False,
                "Not fitted: on these labels a higher score does not mean a better reply "
                f"(slope {w:.3g}); look at the labels before calibrating.",
                before=before,
                after=after,
            )
        )
    note = (
        f"fitted on {len(labels)} labels of channel {channel}; agreement {before[0]}/{before[1]} before, "
        f"{after[0]}/{after[1]} after on held-out labels ({FOLDS}-fold)"
    )
    document = map_document(channel, None, w, b, note)
    curve = [(x / 20, _sigmoid(w * logit(x / 20) + b)) for x in range(21)]
    message = (
        f"Fitted on {len(labels)} labels: agreement on labels it did not fit on "
        f"{after[0]}/{after[1]} ({after[0] / after[1]:.0%}), with today's scores "
        f"{before[0]}/{before[1]} ({before[0] / before[1]:.0%})."
    )
    return Fit(report(True, message, before=before, after=after, w=w, b=b), document, curve)


def draft_map(channel: str, document: str) -> ChannelMap:
    """A draft's document as a map (version 0), for previews."""
    doc = parse_score_map(document.encode("utf-8"), backend=BACKEND, needs={"default": [FEATURE]})
    return ChannelMap(channel, 0, doc)


# The maps in force, per channel, in the serving path -------------------------------------------


class CalibrationBook(ChannelBook["ChannelMap | None"]):
    """The score map in force per channel, read from SQL (guard/channel_book.py, as the policies
    are): a channel's first request waits for it (at most ``timeout_s``); later requests never
    wait; when SQL fails, the last map known stands (none before the first). Without ``load`` (no
    database) no channel has a map."""

    def __init__(
        self,
        load: Callable[[str], ChannelMap | None] | None,
        ttl_s: float = 2.0,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(ttl_s, timeout_s)
        self._load_fn = load

    async def get(self, channel: str) -> ChannelMap | None:
        return None if self._load_fn is None else await super().get(channel)

    def known(self, channel: str) -> tuple[bool, ChannelMap | None]:
        return (True, None) if self._load_fn is None else super().known(channel)

    async def _read(self, channel: str) -> ChannelMap | None:
        assert self._load_fn is not None
        return await bounded(self._timeout, self._load_fn, channel)

    def _fallback(self, channel: str, exc: Exception) -> ChannelMap | None:
        log.warning("could not read the score map of channel %r (%r); using the last one known", channel, exc)
        return self.stale(channel)[1]
