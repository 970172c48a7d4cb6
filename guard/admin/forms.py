"""The policy editor's form: raw fields <-> policy document, with every problem explained."""

from __future__ import annotations

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


@dataclass
class PolicyForm:
    """What the editor shows: the raw values as typed (so a rejected form comes back as it was)."""

    channel: str
    bands: list[tuple[str, str, str]]
    on_error: str
    uncertain_action: str
    """The least cautious action for a case the guard cannot judge (one of UNCERTAIN_ACTIONS)."""
    instruction: str
    templates: dict[str, str]
    problems: list[str] = field(default_factory=list)
    audits: list[str] = field(default_factory=list)
    """Each band's audit sample in percent as typed (parallel to ``bands``; "" for the default)."""
    policy: Policy | None = None
    """The parsed policy when the form is valid."""

    @classmethod
    def from_policy(cls, channel: str, policy: Policy) -> PolicyForm:
        return cls(
            channel=channel,
            bands=[(f"{b.lo:g}", f"{b.hi:g}", b.action) for b in policy.bands],
            on_error=policy.on_error,
            uncertain_action=policy.uncertain_action,
            instruction=policy.instruction,
            templates={k: policy.templates.get(k, "") for k in TEMPLATE_KEYS},
            audits=["" if b.audit_sample is None else f"{b.audit_sample * 100:g}" for b in policy.bands],
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
        bands: list[tuple[str, str, str]] = []
        audits: list[str] = []
        for i in range(MAX_BANDS):
            lo, hi = _text(form, f"band_lo_{i}"), _text(form, f"band_hi_{i}")
            action = _text(form, f"band_action_{i}")
            if lo or hi:
                bands.append((lo, hi, action))
                audits.append(_text(form, f"band_audit_{i}"))
        templates = {k: _text(form, field_name(k)).replace("\r\n", "\n") for k in TEMPLATE_KEYS}
        out = cls(
            channel=channel,
            bands=bands,
            on_error=_text(form, "on_error"),
            uncertain_action=_text(form, "uncertain_action"),
            instruction=_text(form, "instruction").replace("\r\n", "\n"),
            templates=templates,
            audits=audits,
        )
        out._validate(messages)
        return out

    def _validate(self, messages: Messages) -> None:
        problems: list[str] = []
        doc_bands: list[dict[str, Any]] = []
        for i, (lo, hi, action) in enumerate(self.bands, 1):
            numbers = []
            for name, raw in (("lower edge", lo), ("upper edge", hi)):
                try:
                    value = float(raw)
                    if not math.isfinite(value):
                        raise ValueError
                    numbers.append(value)
                except ValueError:
                    problems.append(f"band #{i}: the {name} {raw!r} is not a number")
            if action not in ACTIONS:
                problems.append(f"band #{i}: unknown action {action!r} (known: {', '.join(ACTIONS)})")
            share = _audit_share(self.audits[i - 1] if i - 1 < len(self.audits) else "", i, problems)
            if len(numbers) == 2:
                band: dict[str, Any] = {"lo": numbers[0], "hi": numbers[1], "action": action}
                if share is not None:
                    band["audit_sample"] = share
                doc_bands.append(band)
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
            "bands": doc_bands,
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


def _audit_share(raw: str, i: int, problems: list[str]) -> float | None:
    """A band's audit sample typed in percent ("2", "2.5", "2%") as a share; None when left empty."""
    text = raw.strip().removesuffix("%").strip()
    if not text:
        return None
    try:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError
    except ValueError:
        problems.append(f"band #{i}: the audit sample {raw!r} is not a percentage")
        return None
    return value / 100


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
