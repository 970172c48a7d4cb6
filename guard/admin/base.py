"""What every admin page shares: the request context, the runtime, rendering, and the policy
a channel is under. A page module (``routes``, ``playground``) only adds its handlers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from guard import resources
from guard.admin import auth, charts
from guard.admin.auth import CurrentUser
from guard.admin.forms import valid_channel
from guard.admin.queries import AdminQueries
from guard.followups import Messages
from guard.issues.text import detect_locale
from guard.policies import ACTIONS, UNCERTAIN_ACTIONS, Policy, default_policy
from guard.runtime import Runtime

TEMPLATE_DIR = resources.admin_templates()
STATIC_DIR = resources.admin_static()
PREFIX = "/admin"
STATE_LABELS = {
    "pending": "waiting",
    "approved": "approved and sent",
    "edited": "edited and sent",
    "taken_over": "taken over",
    "dismissed": "dismissed",
    "audited": "audited (sent, marked)",
}
UNCERTAIN_LABELS = {
    "issue_not_stated": "neither the question nor the text in the photo states the issue, "
    "and the scorer cannot see the photo",
}
"""Why the guard could not judge a case, as the case page says it."""
NOTICES = {
    "published": "Published: the new version is in force.",
    "rolled_back": "Rolled back: the old version is published again as a new version.",
    "unchanged": "Nothing to publish: the draft is the policy in force.",
    "case_done": "Done: the case is resolved, and the chatbot is told where handoff delivery is set up.",
    "case_done_next": "Done: the case is resolved, and the chatbot is told where handoff delivery is set "
    "up. This is the next waiting case.",
    "user_created": "User created.",
    "user_updated": "User updated.",
    "user_refused": "Not changed: that would leave no active admin.",
    "audit_done": "Marked: the audit counts on the outcomes page.",
    "map_drafted": "Fitted: the new score map is a draft. Preview it, then publish it.",
    "map_published": "Published: the new score map is in force; scores of the old map are not reused.",
    "map_rolled_back": "Rolled back: the old score map is published again as a new version.",
    "map_off": "Switched off: this channel's scores are the scorer's own again (as a new version).",
    "map_discarded": "Draft discarded.",
    "unlocked": "Unlocked: sign-ins are accepted again.",
}
PROBLEM_NOTICES = frozenset({"user_refused"})
"""Notices that say something was refused: shown as a problem, not as a success."""


P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Ctx:
    request: Request
    user: CurrentUser
    form: Mapping[str, Any]


Handler = Callable[[Ctx], Awaitable[Response]]


class PageError(Exception):
    """What a handler raises to answer with the error page instead (``Admin.guarded`` renders it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def fmt_time(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def pretty_json(value: Any) -> str:
    """Plain text (autoescaped by the template), unlike Jinja's tojson which returns markup."""
    if value is None:
        return "—"
    return json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True, default=str)


def text_lang(text: str | None) -> str:
    """The language tag of customer text ("zh" or "en", by its script), for a ``lang`` attribute."""
    return detect_locale(text or "")


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def fmt_pct1(value: float | None) -> str:
    """A small share: one decimal (0.4%)."""
    return "—" if value is None else f"{value * 100:.1f}%"


class Pages:
    """The admin pages of one running guard: its runtime, the admin's queries over the runtime's
    database, and the templates they render."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.queries = AdminQueries(rt.store.engine)
        self._signer: auth.Signer | None = None
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
            autoescape=True,  # every admin template; customer text is never marked safe
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            duration=fmt_duration,
            time=fmt_time,
            ms=fmt_ms,
            pct=fmt_pct,
            pct1=fmt_pct1,
            pretty_json=pretty_json,
            action=charts.ACTION_LABELS.get,
            lang=text_lang,
        )
        self.env.globals.update(
            prefix=PREFIX,
            state_labels=STATE_LABELS,
            role_labels=auth.ROLE_LABELS,
            actions=ACTIONS,
            uncertain_actions=UNCERTAIN_ACTIONS,
            uncertain_labels=UNCERTAIN_LABELS,
            action_labels=charts.ACTION_LABELS,
        )

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def page(self, request: Request, name: str, user: CurrentUser | None, **context: Any) -> str:
        """The HTML of the template ``name`` with what every page gets: the signed-in user and the
        CSRF token its forms carry, the path, and the notice the query names."""
        key = request.query_params.get("notice", "")
        return self.env.get_template(name).render(
            user=user,
            csrf=user.csrf if user is not None else None,
            request_path=request.url.path,
            notice=NOTICES.get(key),
            notice_problem=key in PROBLEM_NOTICES,
            **context,
        )

    def render(
        self,
        request: Request,
        name: str,
        user: CurrentUser | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        return HTMLResponse(self.page(request, name, user, **context), status_code=status)

    def error(self, request: Request, user: CurrentUser | None, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", user, status, code=status, message=message)

    def messages(self) -> Messages:
        """The follow-up and holding-message templates the pipeline renders with."""
        return self.rt.pipeline.messages

    @property
    def signer(self) -> auth.Signer:
        if self._signer is None:
            self._signer = auth.Signer(auth.load_secret_key(self.rt.settings.secret_key))
        return self._signer

    def channel_of(self, ctx: Ctx) -> str:
        """The ``{channel}`` of the path; a 404 page (``PageError``) when it is not a channel's name."""
        channel = str(ctx.request.path_params["channel"])
        if not valid_channel(channel):
            raise PageError(404, "No such channel.")
        return channel

    def channel_search(self, ctx: Ctx, section: str) -> Response | None:
        """The answer to a channel named in the query (``?channel=``, the index pages' search): to
        ``/admin/{section}/{channel}``, or a 422 page for a name no channel can have; None when the
        query names none."""
        wanted = ctx.request.query_params.get("channel")
        if wanted is None:
            return None
        if valid_channel(wanted):
            return RedirectResponse(f"{PREFIX}/{section}/{wanted}", status_code=303)
        return self.error(ctx.request, ctx.user, 422, "A channel name is 1-100 letters, digits or _ . -")

    async def _policy_of(self, channel: str, version: int) -> Policy:
        found = await self.db(self.queries.policy_at, channel, version) if version else None
        if found is None:
            found = await self.db(self.rt.store.active_policy, channel)
        return found or default_policy(channel)

    async def in_force(self, channel: str) -> tuple[Policy, bool]:
        """(the policy in force for ``channel``, whether it is the channel's own)."""
        return await self.db(self.rt.store.policy_in_force, channel)
