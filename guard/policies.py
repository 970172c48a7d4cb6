"""Policies: score bands -> actions. Pure functions over frozen dataclasses; no I/O.

A policy covers [0, 1] exactly with half-open bands ``[lo, hi)``; the top band also
includes 1.0. A score that is NaN, infinite, outside [0, 1] or missing (the scorer
failed) never falls through a band: it takes the policy's ``on_error`` action and the
verdict is flagged ``degraded``. A score the guard cannot stand behind (``uncertain``: the
customer's words state no issue, so the photo carries it) takes at least the policy's
``uncertain_action`` (default ``review``; never ``send``).

Each band may carry an ``audit_sample``: the share of the decisions it *answers* (send,
follow-up) that are copied into the supervisors' queue as ``audit`` items after they were sent
(default 2% of ``send``, 5% of ``follow_up``; always 0 for the held bands, whose cases a
supervisor sees anyway). Which decisions are sampled depends on the decision id only
(:func:`audit_sampled`), so it can be tested and reproduced.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from guard.scoring.base import DEFAULT_INSTRUCTION

Action = Literal["send", "follow_up", "review", "escalate"]
ACTIONS: tuple[Action, ...] = get_args(Action)
QUEUED_ACTIONS: frozenset[Action] = frozenset({"review", "escalate"})
"""Actions that hold the draft back and put the case in the supervisors' queue."""
CAUTION: tuple[Action, ...] = ("send", "follow_up", "review", "escalate")
"""Actions from the least to the most cautious."""
UNCERTAIN_ACTIONS: tuple[Action, ...] = ("follow_up", "review", "escalate")
"""What a policy may do with an uncertain case: anything but send the draft as it is."""
DEFAULT_UNCERTAIN_ACTION: Action = "review"

TEMPLATE_KEYS = (
    "followup.zh",
    "followup.en",
    "holding.escalate.zh",
    "holding.escalate.en",
    "holding.review.zh",
    "holding.review.en",
)
"""Keys a policy may use to override the default follow-up and holding-message templates."""


BAND_KEYS = frozenset({"lo", "hi", "action", "audit_sample"})


class PolicyError(ValueError):
    """A policy document is invalid; ``problems`` lists every reason, each saying where."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


DEFAULT_AUDIT_SAMPLE: Mapping[str, float] = {"send": 0.02, "follow_up": 0.05, "review": 0.0, "escalate": 0.0}
"""The share of a band's answered decisions sampled for audit when the band does not say."""


@dataclass(frozen=True, slots=True)
class Band:
    lo: float
    hi: float
    action: Action
    audit_sample: float | None = None
    """Share of this band's answered decisions copied to the queue for audit; None: the default."""

    @property
    def audit_rate(self) -> float:
        """The share in force: ``audit_sample``, else DEFAULT_AUDIT_SAMPLE for the band's action."""
        if self.action in QUEUED_ACTIONS:
            return 0.0
        return DEFAULT_AUDIT_SAMPLE[self.action] if self.audit_sample is None else self.audit_sample

    def label(self, *, top: bool) -> str:
        close = "]" if top else ")"
        return f"[{_fmt(self.lo)},{_fmt(self.hi)}{close}"


@dataclass(frozen=True)
class Policy:
    channel: str
    bands: tuple[Band, ...]
    on_error: Action = "escalate"
    instruction: str = DEFAULT_INSTRUCTION
    templates: Mapping[str, str] = field(default_factory=dict)
    """Overrides of the default templates, keyed by TEMPLATE_KEYS."""
    version: int = 0
    """0 for a policy not (yet) stored; stored versions count from 1 per channel."""
    uncertain_action: Action = DEFAULT_UNCERTAIN_ACTION
    """The least cautious action for a case the guard cannot judge (one of UNCERTAIN_ACTIONS)."""


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """What a policy decides for one score (the guard's answer to a client is ``checkers.Verdict``)."""

    action: Action
    band: str | None
    """The band's label, e.g. "[0.5,0.6)"; None when the score was unusable."""
    degraded: bool = False
    reason: str | None = None
    uncertain: bool = False
    """The case was uncertain; ``action`` is then at least the policy's uncertain_action."""


DEFAULT_BANDS: tuple[Band, ...] = (
    Band(0.0, 0.4, "escalate"),
    Band(0.4, 0.5, "review"),
    Band(0.5, 0.6, "follow_up"),
    Band(0.6, 0.7, "follow_up"),
    Band(0.7, 1.0, "send"),
)


def default_policy(channel: str = "default") -> Policy:
    """The default bands: escalate < 0.4 <= review < 0.5 <= follow_up < 0.7 <= send."""
    return Policy(channel=channel, bands=DEFAULT_BANDS)


def decide(
    policy: Policy,
    score: float | None,
    *,
    error_reason: str = "scorer_unavailable",
    uncertain: bool = False,
    uncertain_reason: str = "issue_not_stated",
) -> PolicyDecision:
    """The action for ``score`` under ``policy``. ``score=None`` means the scorer failed.

    ``uncertain`` says the score cannot be trusted to send (the issue is not stated in any text
    the scorer reads). The band's action then stands only when it is at least as cautious as the
    policy's ``uncertain_action``; otherwise that action is taken with ``uncertain_reason``. So a
    low score still escalates, and missing information alone never does (by default).
    """
    verdict = _band_verdict(policy, score, error_reason)
    if not uncertain:
        return verdict
    if verdict.degraded or CAUTION.index(verdict.action) >= CAUTION.index(policy.uncertain_action):
        return PolicyDecision(verdict.action, verdict.band, verdict.degraded, verdict.reason, uncertain=True)
    return PolicyDecision(policy.uncertain_action, verdict.band, reason=uncertain_reason, uncertain=True)


def audit_rate(policy: Policy, verdict: PolicyDecision) -> float:
    """The share of decisions like ``verdict`` to sample for audit: its band's, when the band's action
    was taken; the default for the action otherwise (an uncertain case sent with a follow-up); 0 for
    a held or degraded decision."""
    if verdict.degraded or verdict.action in QUEUED_ACTIONS:
        return 0.0
    last = len(policy.bands) - 1
    for i, band in enumerate(policy.bands):
        if band.label(top=i == last) == verdict.band and band.action == verdict.action:
            return band.audit_rate
    return DEFAULT_AUDIT_SAMPLE.get(verdict.action, 0.0)


def audit_sampled(decision_id: str, rate: float) -> bool:
    """Whether decision ``decision_id`` is in a ``rate`` sample: the same answer every time for an id
    (the first 8 bytes of its SHA-256 as a fraction of 2**64, below ``rate``)."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(decision_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < rate


def _band_verdict(policy: Policy, score: float | None, error_reason: str) -> PolicyDecision:
    if score is None:
        return PolicyDecision(policy.on_error, None, degraded=True, reason=error_reason)
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        return PolicyDecision(policy.on_error, None, degraded=True, reason="invalid_score")
    last = len(policy.bands) - 1
    for i, band in enumerate(policy.bands):
        if band.lo <= score < band.hi or (i == last and score == band.hi):
            return PolicyDecision(band.action, band.label(top=i == last))
    # Unreachable for a validated policy; an unvalidated one still never falls through.
    return PolicyDecision(policy.on_error, None, degraded=True, reason="no_band")


def validate(bands: tuple[Band, ...]) -> list[str]:
    """Every problem with ``bands``, each naming where it is; empty when they cover [0, 1] exactly."""
    if not bands:
        return ["the policy has no bands: it must cover [0, 1]"]
    problems: list[str] = []
    for band in bands:
        if not (math.isfinite(band.lo) and math.isfinite(band.hi)):
            problems.append(f"band {band.lo}..{band.hi} has a bound that is not a finite number")
        elif band.lo >= band.hi:
            problems.append(f"band [{_fmt(band.lo)},{_fmt(band.hi)}) is empty: lo must be below hi")
        if band.action not in ACTIONS:
            problems.append(f"band [{_fmt(band.lo)},{_fmt(band.hi)}) has unknown action {band.action!r}")
        problems.extend(_audit_problems(band))
    if problems:
        return problems
    ordered = sorted(bands, key=lambda b: (b.lo, b.hi))
    if ordered[0].lo > 0.0:
        problems.append(f"gap: no band covers [0.0,{_fmt(ordered[0].lo)})")
    if ordered[0].lo < 0.0:
        problems.append(f"band [{_fmt(ordered[0].lo)},{_fmt(ordered[0].hi)}) starts below 0")
    for prev, nxt in itertools.pairwise(ordered):
        if prev.hi < nxt.lo:
            problems.append(f"gap: no band covers [{_fmt(prev.hi)},{_fmt(nxt.lo)})")
        elif prev.hi > nxt.lo:
            problems.append(
                f"overlap: [{_fmt(prev.lo)},{_fmt(prev.hi)}) and [{_fmt(nxt.lo)},{_fmt(nxt.hi)}) "
                f"both cover [{_fmt(nxt.lo)},{_fmt(min(prev.hi, nxt.hi))})"
            )
    top = max(b.hi for b in ordered)
    if top < 1.0:
        problems.append(f"gap: no band covers [{_fmt(top)},1.0]")
    elif top > 1.0:
        problems.append(f"a band ends at {_fmt(top)}, above 1")
    return problems


def _audit_problems(band: Band) -> list[str]:
    share = band.audit_sample
    if share is None:
        return []
    where = f"band [{_fmt(band.lo)},{_fmt(band.hi)})"
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        return [f"{where}: audit_sample {share!r} must be a share between 0 and 1 (0.02 is 2%)"]
    if band.action in QUEUED_ACTIONS and share != 0.0:
        return [
            f"{where}: audit_sample must be 0 for a {band.action} band "
            "(its cases are held for a supervisor anyway)"
        ]
    return []


def parse_policy(doc: Any, *, channel: str | None = None, version: int = 0) -> Policy:
    """Build a validated Policy from a parsed YAML/JSON document; raises PolicyError listing every problem."""
    if not isinstance(doc, Mapping):
        raise PolicyError(["a policy must be a mapping with 'bands' (and optionally 'on_error', ...)"])
    problems: list[str] = []
    known = {"channel", "bands", "on_error", "uncertain_action", "instruction", "templates", "version"}
    for key in doc:
        if key not in known:
            problems.append(f"unknown key {key!r} (known: {', '.join(sorted(known))})")
    name = channel if channel is not None else doc.get("channel", "default")
    if not isinstance(name, str) or not name.strip():
        problems.append("'channel' must be a non-empty string")
        name = "default"
    on_error = doc.get("on_error", "escalate")
    if on_error not in ACTIONS:
        problems.append(f"on_error {on_error!r} is not one of {', '.join(ACTIONS)}")
    uncertain_action = doc.get("uncertain_action", DEFAULT_UNCERTAIN_ACTION)
    if uncertain_action not in UNCERTAIN_ACTIONS:
        problems.append(
            f"uncertain_action {uncertain_action!r} is not one of {', '.join(UNCERTAIN_ACTIONS)}"
            + (
                " (a case the guard cannot judge is never sent as it is)"
                if uncertain_action == "send"
                else ""
            )
        )
    instruction = doc.get("instruction", DEFAULT_INSTRUCTION)
    if not isinstance(instruction, str) or not instruction.strip():
        problems.append("'instruction' must be a non-empty string")
    templates = doc.get("templates", {}) or {}
    if not isinstance(templates, Mapping):
        problems.append("'templates' must be a mapping of template key to Jinja2 text")
        templates = {}
    for key, text in templates.items():
        if key not in TEMPLATE_KEYS:
            problems.append(f"unknown template {key!r} (known: {', '.join(TEMPLATE_KEYS)})")
        elif not isinstance(text, str):
            problems.append(f"template {key!r} must be a string")
    bands = _parse_bands(doc.get("bands"), problems)
    if bands is not None:
        problems.extend(validate(bands))
    if problems or bands is None:
        raise PolicyError(problems)
    return Policy(
        channel=name,
        bands=tuple(sorted(bands, key=lambda b: b.lo)),
        on_error=cast(Action, on_error),
        uncertain_action=cast(Action, uncertain_action),
        instruction=cast(str, instruction),
        templates=dict(templates),
        version=version,
    )


def policy_document(policy: Policy) -> dict[str, Any]:
    """The stored/printed form of a policy; parse_policy(policy_document(p)) == p."""
    doc: dict[str, Any] = {
        "channel": policy.channel,
        "on_error": policy.on_error,
        "uncertain_action": policy.uncertain_action,
        "instruction": policy.instruction,
        "bands": [_band_document(b) for b in policy.bands],
    }
    if policy.templates:
        doc["templates"] = dict(policy.templates)
    return doc


def _band_document(band: Band) -> dict[str, Any]:
    doc: dict[str, Any] = {"lo": band.lo, "hi": band.hi, "action": band.action}
    if band.audit_sample is not None:
        doc["audit_sample"] = band.audit_sample
    return doc


def _parse_bands(raw: Any, problems: list[str]) -> tuple[Band, ...] | None:
    if not isinstance(raw, list) or not raw:
        problems.append("'bands' must be a non-empty list of {lo, hi, action}")
        return None
    bands: list[Band] = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not {"lo", "hi", "action"} <= set(item) <= BAND_KEYS:
            problems.append(
                f"band #{i + 1} must have the keys lo, hi and action (and optionally audit_sample)"
            )
            continue
        lo, hi, action = item["lo"], item["hi"], item["action"]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)):
            problems.append(f"band #{i + 1}: lo and hi must be numbers")
            continue
        try:
            lo, hi = float(lo), float(hi)
        except OverflowError:  # an integer too large for a float, e.g. 1 followed by 400 zeros
            problems.append(f"band #{i + 1}: lo and hi must be numbers between 0 and 1")
            continue
        if action not in ACTIONS:
            problems.append(f"band #{i + 1} [{_fmt(lo)},{_fmt(hi)}): unknown action {action!r}")
            continue
        share = item.get("audit_sample")
        if share is not None and (not isinstance(share, int | float) or isinstance(share, bool)):
            problems.append(
                f"band #{i + 1} [{_fmt(lo)},{_fmt(hi)}): audit_sample must be a number from 0 to 1"
            )
            continue
        try:
            audit = None if share is None else float(share)
        except OverflowError:
            problems.append(
                f"band #{i + 1} [{_fmt(lo)},{_fmt(hi)}): audit_sample must be a number from 0 to 1"
            )
            continue
        bands.append(Band(lo, hi, cast(Action, action), audit))
    return tuple(bands) if len(bands) == len(raw) else None


def _fmt(x: float) -> str:
    """0.4 -> "0.4", 1 -> "1.0": band labels read like the policy table."""
    if not math.isfinite(x):
        return str(x)
    text = f"{x:g}"
    return text if "." in text or "e" in text else text + ".0"
