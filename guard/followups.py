"""Follow-ups and holding messages, rendered from sandboxed, bounded Jinja2 templates.

Defaults live in ``templates/followups/<kind>.<locale>.j2``; a policy may override any of
them by key (``followup.zh``, ``holding.escalate.en``, ...). Policy owners write these
templates, so they run in a tight sandbox: Jinja2's immutable sandbox, a short list of
filters, ``range`` of at most :data:`MAX_RANGE` items (and :data:`MAX_RANGE_TOTAL` a render),
no string formatting, ``*``/``+``/``**`` refused when the result would be large, loops nested
at most :data:`MAX_LOOP_DEPTH` deep, a render budget of :data:`RENDER_BUDGET_S` (CPU time) and an
output of at most :data:`MAX_MESSAGE_CHARS`. A template that breaks any of these, renders
``None``, an empty message or markup is refused when a policy is validated or published
(:func:`template_problems`); at run time it falls back to the default, and the default to a
fixed sentence, so a customer always gets a message and the process never stalls.

The output is plain chat text (not HTML): autoescape is off here, and whatever shows it in a
page escapes it there. The issue phrase is plain text already (guard.issues.text).
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment

from guard import resources
from guard.policies import Action

log = logging.getLogger(__name__)

TEMPLATE_DIR = resources.followup_templates()

MAX_TEMPLATE_CHARS = 4000
MAX_MESSAGE_CHARS = 1000
RENDER_BUDGET_S = 0.05
"""CPU time a render may take, counted on the rendering thread's own clock: a template that loops
is stopped, a busy machine that merely pre-empts the thread does not make a good one fail."""
MAX_RANGE = 1000
MAX_RANGE_TOTAL = 10_000
MAX_SEQUENCE = 500
"""Longest string or list that ``*`` or ``+`` may make."""
MAX_LOOP_DEPTH = 2
MAX_LITERAL_ITEMS = 100
"""Longest literal list, or literal string looped over, in a template."""

SAMPLE_ISSUES = {"zh": "口袋开线", "en": "open seam on your jeans"}
SAMPLE_CASE_REF = "RG-SAMPLE1"
SAMPLE_RESPONSE_TIME = {"zh": "2小时", "en": "2 hours"}

FALLBACK = {
    "followup": {
        "zh": "已为您登记这个问题，专员将尽快联系您（工单号 {case_ref}）。",
        "en": "We have logged your issue; a specialist will contact you soon (case {case_ref}).",
    },
    "holding": {
        "zh": "您的问题已转给客服专员，我们会尽快回复您（工单号 {case_ref}）。",
        "en": "We have passed your message to our team and will reply shortly (case {case_ref}).",
    },
}
"""What the customer gets when neither the policy's template nor the default renders."""

_SAFE_FILTERS = (
    *("upper", "lower", "title", "capitalize", "trim", "striptags", "truncate", "default", "d"),
    *("length", "count", "string", "first", "last", "replace", "join", "round", "int", "float"),
    *("abs", "wordcount", "e", "escape"),
)
_SAFE_STR_METHODS = frozenset(
    {"upper", "lower", "strip", "lstrip", "rstrip", "title", "capitalize", "startswith", "endswith"}
)
_MARKUP = re.compile(r"<\s*/?\s*[A-Za-z!][^>]*>|\{\{|\}\}|\{%|%\}|\{#|#\}")
_NONE_WORD = re.compile(r"\b(?:None|null|undefined)\b")


class TemplateError(ValueError):
    """A template does not compile, does not render, or renders something a customer must not get."""


@dataclass(frozen=True, slots=True)
class MessageContext:
    locale: str
    """"zh" or "en"."""
    issue: str | None
    """The customer's issue as a phrase, or None when it could not be found."""
    case_ref: str
    response_time: str


@dataclass
class _Budget:
    deadline: float
    range_left: int = MAX_RANGE_TOTAL


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("template_budget", default=None)


def _tick() -> _Budget | None:
    budget = _BUDGET.get()
    if budget is not None and time.thread_time() > budget.deadline:
        raise SecurityError(
            f"the template took more than {RENDER_BUDGET_S * 1000:.0f} ms of CPU time to render"
        )
    return budget


def _bounded_range(*args: int) -> range:
    items = range(*args)
    if len(items) > MAX_RANGE:
        raise SecurityError(f"range() of {len(items)} items: at most {MAX_RANGE}")
    budget = _tick()
    if budget is not None:
        budget.range_left -= len(items)
        if budget.range_left < 0:
            raise SecurityError(f"the ranges of one render add up to more than {MAX_RANGE_TOTAL} items")
    return items


def _size(value: Any) -> int | None:
    return len(value) if isinstance(value, str | bytes | list | tuple) else None


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the bounds described in the module docstring."""

    intercepted_binops = frozenset({"*", "+", "**", "%", "//"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % is not available in templates")
        if operator == "**" and not (isinstance(right, int | float) and abs(right) <= 64 and _small(left)):
            raise SecurityError("** is limited to exponents up to 64 of numbers up to 10^6")
        if operator == "*":
            n = next((v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)), None)
            seq = next((s for s in (_size(left), _size(right)) if s is not None), None)
            if seq is not None and n is not None and seq * max(n, 0) > MAX_SEQUENCE:
                raise SecurityError(f"* would make a sequence longer than {MAX_SEQUENCE}")
            if seq is None and not (_small(left) and _small(right)):
                raise SecurityError("* is limited to numbers up to 10^6")
        if operator == "+":
            sizes = (_size(left), _size(right))
            if None not in sizes and sum(s or 0 for s in sizes) > MAX_SEQUENCE:
                raise SecurityError(f"+ would make a sequence longer than {MAX_SEQUENCE}")
        return super().call_binop(context, operator, left, right)

    def is_safe_callable(self, obj: Any) -> bool:
        if obj is _bounded_range or isinstance(obj, Macro):
            return True
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            return getattr(obj, "__name__", "") in _SAFE_STR_METHODS
        if isinstance(owner, LoopContext):
            return getattr(obj, "__name__", "") in {"cycle", "changed"}
        return False

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)


def _small(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= 10**6


def _environment(template_dir: Path) -> _BoundedSandbox:
    env = _BoundedSandbox(
        loader=jinja2.FileSystemLoader(template_dir),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )
    env.filters = {name: env.filters[name] for name in _SAFE_FILTERS}
    env.tests = {name: env.tests[name] for name in ("defined", "undefined", "none", "string", "number", "in")}
    env.globals = {"range": _bounded_range}
    return env


def _static_problems(tree: nodes.Template) -> list[str]:
    """What is refused before a template runs: deep loops and large literals."""
    problems: list[str] = []

    def depth(node: nodes.Node, level: int) -> int:
        here = level + 1 if isinstance(node, nodes.For) else level
        return max([here, *(depth(child, here) for child in node.iter_child_nodes())])

    if depth(tree, 0) > MAX_LOOP_DEPTH:
        problems.append(f"loops are nested more than {MAX_LOOP_DEPTH} deep")
    sizes = [len(n.items) for n in tree.find_all(nodes.List)] + [
        len(n.items) for n in tree.find_all(nodes.Tuple)
    ]
    sizes += [len(n.items) for n in tree.find_all(nodes.Dict)]
    if any(size > MAX_LITERAL_ITEMS for size in sizes):
        problems.append(f"a literal list of more than {MAX_LITERAL_ITEMS} items")
    if any(
        isinstance(loop.iter, nodes.Const) and (_size(loop.iter.value) or 0) > MAX_LITERAL_ITEMS
        for loop in tree.find_all(nodes.For)
    ):
        problems.append(f"a loop over a literal of more than {MAX_LITERAL_ITEMS} items")
    return problems


class Messages:
    """Renders follow-ups and holding messages; compiled templates are kept per source text."""

    def __init__(self, template_dir: Path = TEMPLATE_DIR) -> None:
        self._env = _environment(template_dir)
        self._compiled: dict[str, jinja2.Template] = {}
        self._problems: dict[tuple[str, str], str | None] = {}

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
            # The checks of publishing, once per template text: a policy stored before them still
            # never sends "已为您登记问题" or "None".
            problem = self._problems.get((ctx.locale, source), "")
            if problem == "":
                problem = self._problems[ctx.locale, source] = _problem(source, ctx.locale, self)
                if len(self._problems) > 256:
                    self._problems.clear()
            try:
                text = "" if problem is not None else self._render_source(source, ctx)
                problem = problem or output_problem(text, ctx.issue)
            except TemplateError as exc:
                problem = str(exc)
            if problem is None:
                return text
            log.warning("policy template %s is not used (%s); using the default", key, problem)
        try:
            return self._bounded_render(self._env.get_template(f"{key}.j2"), ctx)
        except (TemplateError, jinja2.TemplateNotFound) as exc:
            log.error("default template %s does not render (%s); using the fixed sentence", key, exc)
            kind = "followup" if key.startswith("followup") else "holding"
            return FALLBACK[kind]["zh" if ctx.locale == "zh" else "en"].format(case_ref=ctx.case_ref)

    def _render_source(self, source: str, ctx: MessageContext) -> str:
        template = self._compiled.get(source)
        if template is None:
            template = self._compile(source)
            if len(self._compiled) > 256:
                self._compiled.clear()
            self._compiled[source] = template
        return self._bounded_render(template, ctx)

    def _compile(self, source: str) -> jinja2.Template:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"the template is longer than {MAX_TEMPLATE_CHARS} characters")
        try:
            problems = _static_problems(self._env.parse(source))
            if problems:
                raise TemplateError("; ".join(problems))
            return self._env.from_string(source)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template does not render (it does not compile): {exc}") from exc
        except (RecursionError, MemoryError, ValueError, TypeError) as exc:
            raise TemplateError(f"template does not render (it does not compile): {exc!r}") from exc

    def _bounded_render(self, template: jinja2.Template, ctx: MessageContext) -> str:
        token = _BUDGET.set(_Budget(deadline=time.thread_time() + RENDER_BUDGET_S))
        try:
            return _collect(template.generate(_variables(ctx))).strip()
        except TemplateError:
            raise
        except Exception as exc:  # whatever a policy owner's template raises makes it a bad template
            raise TemplateError(f"template does not render: {exc}") from exc
        finally:
            _BUDGET.reset(token)


def _collect(chunks: Iterator[str]) -> str:
    out: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_MESSAGE_CHARS:
            raise TemplateError(f"the message is longer than {MAX_MESSAGE_CHARS} characters")
        _tick()
        out.append(chunk)
    return "".join(out)


def _variables(ctx: MessageContext) -> dict[str, str | None]:
    return {"issue": ctx.issue or None, "case_ref": ctx.case_ref, "response_time": ctx.response_time}


def template_problems(overrides: Mapping[str, str], messages: Messages) -> list[str]:
    """Every override that must not be published, with the reason.

    Each is rendered for a sample case with an issue phrase, without one (None) and with an empty
    one; it must render within the bounds, to a message that is not empty, has no markup and no
    ``None``, and reads differently from the phrase-less one only where the phrase goes (a template
    that renders ``已为您登记问题`` / "We have logged the ;" without a phrase is refused).
    """
    problems = []
    for key, source in overrides.items():
        locale = "zh" if key.rsplit(".", 1)[-1] == "zh" else "en"
        problem = _problem(source, locale, messages)
        if problem is not None:
            problems.append(f"template {key!r}: {problem}")
    return problems


def _problem(source: str, locale: str, messages: Messages) -> str | None:
    phrase = SAMPLE_ISSUES[locale]
    rendered: dict[str, str] = {}
    for label, issue in (("with an issue phrase", phrase), ("without one", None), ("with an empty one", "")):
        ctx = MessageContext(locale, issue, SAMPLE_CASE_REF, SAMPLE_RESPONSE_TIME[locale])
        try:
            text = messages.check(source, ctx)
        except TemplateError as exc:
            return f"{exc} ({label})"
        problem = output_problem(text, issue)
        if problem is not None:
            return f"{problem} ({label})"
        rendered[label] = text
    with_phrase, without = rendered["with an issue phrase"], rendered["without one"]
    if phrase in with_phrase and with_phrase.replace(phrase, "") == without:
        return (
            "without an issue phrase it leaves a gap where the phrase goes: give a sentence for that case, "
            "e.g. {% if issue %}…{{ issue }}…{% else %}…{% endif %}"
        )
    return None


def output_problem(text: str, issue: str | None) -> str | None:
    """Why a rendered message must not reach the customer (empty, ``None``, markup), or None when it may.

    The issue phrase itself is plain text already and is left out of the check.
    """
    rest = text.replace(issue, " ") if issue else text
    if not text.strip():
        return "renders an empty message"
    none = _NONE_WORD.search(rest)
    if none is not None:
        return f"renders {none.group(0)!r}"
    markup = _MARKUP.search(rest)
    if markup is not None:
        return f"renders markup {markup.group(0)!r}: messages are plain text"
    return None


def case_ref(decision_id: str) -> str:
    """The short reference a customer can quote: RG- and the first 8 characters of the decision id."""
    return "RG-" + decision_id[:8].upper()
