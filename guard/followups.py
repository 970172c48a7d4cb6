"""Follow-ups and holding messages, rendered from sandboxed Jinja2 templates.

Defaults live in ``templates/followups/<kind>.<locale>.j2``; a policy may override any of
them by key (``followup.zh``, ``holding.escalate.en``, ...). Policy owners write these
templates, so they run in Jinja2's immutable sandbox. The output is plain chat text (not
HTML): autoescape is off here, and whatever shows it in a page escapes it there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from guard import resources
from guard.policies import Action

log = logging.getLogger(__name__)

TEMPLATE_DIR = resources.followup_templates()


class TemplateError(ValueError):
    """A template does not compile or does not render."""


@dataclass(frozen=True, slots=True)
class MessageContext:
    locale: str
    """"zh" or "en"."""
    issue: str | None
    """The customer's issue as a phrase, or None when it could not be found."""
    case_ref: str
    response_time: str


class Messages:
    """Renders follow-ups and holding messages; compiled templates are kept per source text."""

    def __init__(self, template_dir: Path = TEMPLATE_DIR) -> None:
        self._env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(template_dir),
            autoescape=False,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        self._compiled: dict[str, jinja2.Template] = {}

    def follow_up(self, ctx: MessageContext, overrides: Mapping[str, str]) -> str:
        return self._render(f"followup.{ctx.locale}", ctx, overrides)

    def holding(self, action: Action, ctx: MessageContext, overrides: Mapping[str, str]) -> str:
        return self._render(f"holding.{action}.{ctx.locale}", ctx, overrides)

    def check(self, source: str, ctx: MessageContext) -> str:
        """Render ``source`` for a sample case: how the policy editor validates a template."""
        return self._render_source(source, ctx)

    def _render(self, key: str, ctx: MessageContext, overrides: Mapping[str, str]) -> str:
        source = overrides.get(key)
        if source is not None:
            try:
                return self._render_source(source, ctx)
            except TemplateError:
                log.exception("policy template %s does not render; using the default", key)
        template = self._env.get_template(f"{key}.j2")
        return template.render(_variables(ctx)).strip()

    def _render_source(self, source: str, ctx: MessageContext) -> str:
        template = self._compiled.get(source)
        try:
            if template is None:
                template = self._env.from_string(source)
                if len(self._compiled) > 256:
                    self._compiled.clear()
                self._compiled[source] = template
            return template.render(_variables(ctx)).strip()
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template does not render: {exc}") from exc


def _variables(ctx: MessageContext) -> dict[str, str | None]:
    return {"issue": ctx.issue, "case_ref": ctx.case_ref, "response_time": ctx.response_time}


def template_problems(overrides: Mapping[str, str], messages: Messages) -> list[str]:
    """Every override that does not render for a sample case, with the reason."""
    problems = []
    for key, source in overrides.items():
        locale = key.rsplit(".", 1)[-1]
        for issue in ("open seam", None):
            try:
                messages.check(source, MessageContext(locale, issue, "RG-SAMPLE1", "2 hours"))
            except TemplateError as exc:
                problems.append(f"template {key!r}: {exc}")
                break
    return problems


def case_ref(decision_id: str) -> str:
    """The short reference a customer can quote: RG- and the first 8 characters of the decision id."""
    return "RG-" + decision_id[:8].upper()
