"""The policy editor's form: raw fields <-> policy document, with every problem explained."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guard.followups import MessageContext, Messages, TemplateError, template_problems
from guard.policies import ACTIONS, TEMPLATE_KEYS, UNCERTAIN_ACTIONS, Policy, PolicyError, parse_policy

MAX_BANDS = 12
TEMPLATE_LABELS = {
    "followup.zh": "Follow-up (zh)",
    "followup.en": "Follow-up (en)",
    "holding.escalate.zh": "Holding message, escalate (zh)",
    "holding.escalate.en": "Holding message, escalate (en)",
    "holding.review.zh": "Holding message, review (zh)",
    "holding.review.en": "Holding message, review (en)",
}
SAMPLE_ISSUE = {"zh": "口袋开线", "en": "open seam on the pocket"}
SAMPLE_CASE_REF = "RG-SAMPLE1"
CHANNEL_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def valid_channel(name: str) -> bool:
    return 0 < len(name) <= 100 and set(name) <= CHANNEL_CHARS


def field_name(template_key: str) -> str:
    return "tpl_" + template_key.replace(".", "_")


Row = tuple[str, str, str]
"""One row of the bands table as typed: (lower edge, upper edge, action)."""
BAND_OPS = ("split", "merge", "remove")


@dataclass
class PolicyForm:
    """What the editor shows: the raw values as typed (so a rejected form comes back as it was)."""

    channel: str
    rows: list[Row]
    """The bands table as shown, in order; a row whose edges are both empty stays in its place (it
    is left out of the policy), so that "row 3" in a message is the third row on the page."""
    on_error: str
    uncertain_action: str
    """The least cautious action for a case the guard cannot judge (one of UNCERTAIN_ACTIONS)."""
    instruction: str
    templates: dict[str, str]
    problems: list[str] = field(default_factory=list)
    bad_rows: set[int] = field(default_factory=set)
    """Rows (0-based) a problem names."""
    audits: list[str] = field(default_factory=list)
    """Each row's audit sample in percent as typed (parallel to ``rows``; "" for the default)."""
    policy: Policy | None = None
    """The parsed policy when the form is valid."""

    @property
    def bands(self) -> list[Row]:
        """The rows that are bands (not emptied)."""
        return [r for r in self.rows if r[0] or r[1]]

    @classmethod
    def from_policy(cls, channel: str, policy: Policy) -> PolicyForm:
        return cls(
            channel=channel,
            rows=[(f"{b.lo:g}", f"{b.hi:g}", b.action) for b in policy.bands],
            audits=["" if b.audit_sample is None else f"{b.audit_sample * 100:g}" for b in policy.bands],
            on_error=policy.on_error,
            uncertain_action=policy.uncertain_action,
            instruction=policy.instruction,
            templates={k: policy.templates.get(k, "") for k in TEMPLATE_KEYS},
            policy=Policy(
                channel=channel,
                bands=policy.bands,
                on_error=policy.on_error,
                uncertain_action=policy.uncertain_action,
                instruction=policy.instruction,
                templates=dict(policy.templates),
            ),
        )

    @classmethod
    def from_form(cls, channel: str, form: Mapping[str, Any], messages: Messages) -> PolicyForm:
        rows: list[Row] = []
        audits: list[str] = []
        for i in range(MAX_BANDS):
            lo, hi = _text(form, f"band_lo_{i}"), _text(form, f"band_hi_{i}")
            rows.append((lo, hi, _text(form, f"band_action_{i}")))
            audits.append(_text(form, f"band_audit_{i}"))
        while rows and not rows[-1][0] and not rows[-1][1]:
            rows.pop()  # the unused rows at the end
        del audits[len(rows) :]
        templates = {k: _text(form, field_name(k)).replace("\r\n", "\n") for k in TEMPLATE_KEYS}
        out = cls(
            channel=channel,
            rows=rows,
            on_error=_text(form, "on_error"),
            uncertain_action=_text(form, "uncertain_action"),
            instruction=_text(form, "instruction").replace("\r\n", "\n"),
            templates=templates,
            audits=audits,
        )
        out.validate(messages)
        return out

    def audit_of(self, row: int) -> str:
        """Row ``row``'s audit sample as typed ("" for the default)."""
        return self.audits[row] if row < len(self.audits) else ""

    def edit_bands(self, op: str, row: int) -> str:
        """Split, merge (with the next band) or remove band ``row`` (0-based), keeping 0 to 1 covered:
        a removed band's range goes to the band below it (the one above, for the first band). The
        table is then renumbered without emptied rows; each band keeps its audit sample (both halves
        of a split one, the lower of two merged ones). Returns what happened, in words."""
        rows = self.bands
        shown = [i for i, r in enumerate(self.rows) if r[0] or r[1]]
        audits = [self.audit_of(i) for i in shown]
        if op not in BAND_OPS or row not in shown:
            return "There is no such band."
        at = shown.index(row)
        lo, hi, action = rows[at]
        name = f"Band {row + 1}"
        if op == "split":
            if len(rows) >= MAX_BANDS:
                return f"{name} was not split: a policy has at most {MAX_BANDS} bands."
            a, b = _number(lo), _number(hi)
            if a is None or b is None or not a < b:
                return f"{name} was not split: its edges must be numbers, the lower below the upper."
            mid = f"{round((a + b) / 2, 4):g}"
            rows[at : at + 1] = [(lo, mid, action), (mid, hi, action)]
            audits.insert(at, audits[at])
            message = (
                f"{name} is split at {mid} into bands {at + 1} and {at + 2}, both "
                f"{action or 'without an action'}: change the new edge or an action, then publish."
            )
        elif op == "merge":
            if at + 1 >= len(rows):
                return f"{name} is the last band: there is no next band to merge it with."
            nxt = rows[at + 1]
            rows[at : at + 2] = [(lo, nxt[1], action)]
            del audits[at + 1]
            message = (
                f"Bands {at + 1} and {at + 2} are merged into band {at + 1}, [{lo}, {nxt[1]}), {action}."
            )
        else:
            if len(rows) == 1:
                return "The only band cannot be removed: the bands must cover 0 to 1."
            del rows[at]
            del audits[at]
            if at > 0:
                below = rows[at - 1]
                rows[at - 1] = (below[0], hi, below[2])
                message = f"{name} is removed; band {at} below it now reaches {hi}."
            else:
                above = rows[0]
                rows[0] = (lo, above[1], above[2])
                message = f"{name} is removed; the next band now starts at {lo}."
        self.rows, self.audits = rows, audits
        return message

    def validate(self, messages: Messages) -> None:
        """Check the form; ``problems`` names bands by the row the user sees ("row 3")."""
        self.problems, self.bad_rows, self.policy = [], set(), None
        problems: list[str] = []
        bands: list[tuple[int, float, float, str]] = []
        shares: dict[int, float] = {}
        for i, (lo, hi, action) in enumerate(self.rows):
            if not lo and not hi:
                continue  # an emptied row is left out
            numbers = []
            for name, raw in (("lower edge", lo), ("upper edge", hi)):
                value = _number(raw)
                if value is None:
                    problems.append(
                        f"row {i + 1}: the {name} is empty"
                        if not raw
                        else f"row {i + 1}: the {name} {raw!r} is not a number"
                    )
                    self.bad_rows.add(i)
                else:
                    numbers.append(value)
            if action not in ACTIONS:
                problems.append(f"row {i + 1}: unknown action {action!r} (known: {', '.join(ACTIONS)})")
                self.bad_rows.add(i)
            share = _audit_share(self.audit_of(i), i, problems)
            if share is not None:
                shares[i] = share
            elif self.audit_of(i).strip():
                self.bad_rows.add(i)
            if len(numbers) == 2:
                bands.append((i, numbers[0], numbers[1], action))
        if not bands and not problems:
            problems.append("there are no bands: they must cover 0 to 1")
        if not problems:
            problems += self._coverage(bands)
        if self.uncertain_action not in UNCERTAIN_ACTIONS:
            problems.append(
                f"when the guard cannot judge a case: {self.uncertain_action or '(nothing chosen)'!r} is not "
                f"one of {', '.join(UNCERTAIN_ACTIONS)} (such a case is never sent as it is)"
            )
        if problems:
            self.problems = problems
            return
        doc = {
            "channel": self.channel,
            "bands": [_band_doc(lo, hi, action, shares.get(i)) for i, lo, hi, action in bands],
            "on_error": self.on_error,
            "uncertain_action": self.uncertain_action,
            "instruction": self.instruction,
            "templates": {k: v for k, v in self.templates.items() if v.strip()},
        }
        try:
            policy = parse_policy(doc, channel=self.channel)
        except PolicyError as exc:
            self.problems = list(exc.problems)
            return
        self.problems = template_problems(policy.templates, messages)
        if not self.problems:
            self.policy = policy

    def _coverage(self, bands: list[tuple[int, float, float, str]]) -> list[str]:
        """Rows from 0 up to 1 in order, each starting where the one before it ends; by row number."""
        problems: list[str] = []
        for i, lo, hi, _action in bands:
            if lo >= hi:
                problems.append(
                    f"row {i + 1}: band [{_fmt(lo)},{_fmt(hi)}) is empty: "
                    "its lower edge must be below its upper edge"
                )
                self.bad_rows.add(i)
            if lo < 0 or hi > 1:
                problems.append(f"row {i + 1}: band [{_fmt(lo)},{_fmt(hi)}) goes outside 0 to 1")
                self.bad_rows.add(i)
        if problems:
            return problems
        first, last = bands[0], bands[-1]
        if first[1] > 0:
            problems.append(
                f"gap: no band covers [0.0,{_fmt(first[1])}): "
                f"row {first[0] + 1}, the first band, must start at 0"
            )
            self.bad_rows.add(first[0])
        for (i, _lo, hi, _a), (j, lo, _hi, _b) in itertools.pairwise(bands):
            if hi < lo:
                problems.append(
                    f"gap: no band covers [{_fmt(hi)},{_fmt(lo)}): row {i + 1} ends at {_fmt(hi)} "
                    f"but row {j + 1} starts at {_fmt(lo)}"
                )
                self.bad_rows |= {i, j}
            elif hi > lo:
                problems.append(
                    f"overlap: row {i + 1} ends at {_fmt(hi)} but row {j + 1} starts at {_fmt(lo)}, "
                    f"so both cover [{_fmt(lo)},{_fmt(hi)}) (the rows go from 0 up to 1 in order)"
                )
                self.bad_rows |= {i, j}
        if last[2] < 1:
            problems.append(
                f"gap: no band covers [{_fmt(last[2])},1.0]: row {last[0] + 1}, the last band, must end at 1"
            )
            self.bad_rows.add(last[0])
        return problems


def _band_doc(lo: float, hi: float, action: str, audit_sample: float | None) -> dict[str, Any]:
    band: dict[str, Any] = {"lo": lo, "hi": hi, "action": action}
    if audit_sample is not None:
        band["audit_sample"] = audit_sample
    return band


def _audit_share(raw: str, i: int, problems: list[str]) -> float | None:
    """Row ``i``'s audit sample typed in percent ("2", "2.5", "2%") as a share; None when left empty
    (or not a number, which adds a problem naming the row)."""
    text = raw.strip().removesuffix("%").strip()
    if not text:
        return None
    value = _number(text)
    if value is None:
        problems.append(f"row {i + 1}: the audit sample {raw!r} is not a percentage")
        return None
    return value / 100


def band_op(value: str) -> tuple[str, int] | None:
    """("split", 2) for a band button's value "split:2"; None for anything else."""
    op, _, row = value.partition(":")
    if op not in BAND_OPS or not row.isdigit() or int(row) >= MAX_BANDS:
        return None
    return op, int(row)


def _number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _fmt(x: float) -> str:
    """0.4 -> "0.4", 1 -> "1.0", as the policy's band labels read."""
    text = f"{x:g}"
    return text if "." in text or "e" in text else text + ".0"


def render_samples(
    form: PolicyForm, messages: Messages, response_time: Mapping[str, str]
) -> dict[str, dict[str, str | None]]:
    """Each template rendered for a sample case: {key: {"text": ..., "error": ...}}."""
    out: dict[str, dict[str, str | None]] = {}
    overrides = {k: v for k, v in form.templates.items() if v.strip()}
    for key in TEMPLATE_KEYS:
        kind, locale = key.rsplit(".", 1)
        ctx = MessageContext(locale, SAMPLE_ISSUE[locale], SAMPLE_CASE_REF, response_time[locale])
        source = overrides.get(key)
        try:
            if source is not None:
                text = messages.check(source, ctx)
            elif kind == "followup":
                text = messages.follow_up(ctx, {})
            else:
                text = messages.holding("escalate" if "escalate" in kind else "review", ctx, {})
            out[key] = {"text": text, "error": None}
        except TemplateError as exc:
            out[key] = {"text": None, "error": str(exc)}
    return out


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return (
        value.strip()
        if isinstance(value, str) and name.startswith("band_")
        else (value if isinstance(value, str) else "")
    )
