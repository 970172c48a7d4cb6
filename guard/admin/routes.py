"""The admin pages' routes. Every route names the area it belongs to; the role check, the session
and the CSRF check happen in ``guarded`` on the server, before any handler runs."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import quote, urlencode

import jinja2
import yaml
from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles

from guard import resources
from guard.admin import auth, charts, traffic
from guard.admin.auth import CurrentUser
from guard.admin.forms import (
    MAX_BANDS,
    TEMPLATE_LABELS,
    PolicyForm,
    field_name,
    render_samples,
    valid_channel,
)
from guard.admin.headers import SecurityHeaders
from guard.admin.playground import Playground
from guard.followups import MessageContext, Messages, case_ref
from guard.policies import ACTIONS, TEMPLATE_KEYS, Policy, default_policy, policy_document
from guard.tables import USER_ROLES, utcnow

if TYPE_CHECKING:
    from guard.app import GuardApp

log = logging.getLogger(__name__)

TEMPLATE_DIR = resources.admin_templates()
STATIC_DIR = resources.admin_static()
PREFIX = "/admin"
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif"}
CASE_OPS = {"approve": "approved", "edit": "edited", "take_over": "taken_over", "dismiss": "dismissed"}
STATE_LABELS = {
    "pending": "waiting",
    "approved": "approved and sent",
    "edited": "edited and sent",
    "taken_over": "taken over",
    "dismissed": "dismissed",
}
NOTICES = {
    "published": "Published: the new version is in force.",
    "rolled_back": "Rolled back: the old version is published again as a new version.",
    "unchanged": "Nothing to publish: the draft is the policy in force.",
    "case_done": "Done: the case is resolved, and the chatbot is told where handoff delivery is set up.",
    "user_created": "User created.",
    "user_updated": "User updated.",
    "user_refused": "Not changed: that would leave no active admin.",
}


class FormRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Ctx:
    request: Request
    user: CurrentUser
    form: Mapping[str, Any]


Handler = Callable[[Ctx], Awaitable[Response]]


def safe_next(target: str | None) -> str:
    """Only a path inside the admin pages: never another site."""
    if target and target.startswith(PREFIX + "/") and "//" not in target and "\\" not in target:
        return target
    return PREFIX + "/"


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


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def policy_diff(older: Mapping[str, Any] | None, newer: Mapping[str, Any]) -> list[str]:
    def dump(doc: Mapping[str, Any] | None) -> list[str]:
        if doc is None:
            return []
        return yaml.safe_dump(dict(doc), allow_unicode=True, sort_keys=False).splitlines()

    if older is None:
        return []  # the first version: nothing to compare with
    return list(difflib.unified_diff(dump(older), dump(newer), "before", "after", lineterm="", n=1))[2:]


class Admin:
    """The admin pages of one guard: templates, the cookie signer and the handlers."""

    def __init__(self, guard_app: GuardApp) -> None:
        self.app = guard_app
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
            pretty_json=pretty_json,
            action=charts.ACTION_LABELS.get,
        )
        self.env.globals.update(
            prefix=PREFIX,
            state_labels=STATE_LABELS,
            role_labels=auth.ROLE_LABELS,
            actions=ACTIONS,
            action_labels=charts.ACTION_LABELS,
        )
        self._signer: auth.Signer | None = None
        self.playground = Playground(self)

    # Plumbing ------------------------------------------------------------------------------------

    @property
    def signer(self) -> auth.Signer:
        if self._signer is None:
            self._signer = auth.Signer(auth.load_secret_key(self.app.settings.secret_key))
        return self._signer

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def render(
        self,
        request: Request,
        name: str,
        user: CurrentUser | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        notice = NOTICES.get(request.query_params.get("notice", ""))
        html = self.env.get_template(name).render(
            user=user, request_path=request.url.path, notice=notice, **context
        )
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, user: CurrentUser | None, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", user, status, code=status, message=message)

    async def current_user(self, request: Request) -> CurrentUser | None:
        token = self.signer.unsign("session", request.cookies.get(auth.SESSION_COOKIE))
        if token is None:
            return None
        digest = auth.token_hash(token)
        found = await self.db(self.app.store.session_user, digest)
        if found is None:
            return None
        return CurrentUser(found["id"], found["username"], found["role"], found["csrf"], digest)

    def guarded(
        self, area: str, handler: Handler, *, upload: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        """Sign-in, role and (for every POST) CSRF checks, on the server, before ``handler`` runs.

        ``upload``: the form may carry a photo (the playground): the body may be three times
        GUARD_MAX_BODY_BYTES plus 2 MiB (a new photo, the last one carried as base64, the text) and a
        text field as large as a base64 photo; beyond that the form is refused unread."""

        async def endpoint(request: Request) -> Response:
            user = await self.current_user(request)
            if user is None:
                if request.method == "GET":
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)
                return self.error(request, None, 401, "Sign in first.")
            if not user.may(area):
                return self.error(
                    request, user, 403, f"The {auth.ROLE_LABELS[user.role]} role may not use this page."
                )
            form: Mapping[str, Any] = {}
            if request.method == "POST":
                try:
                    form = await self._read_form(request, upload)
                except FormRefused as exc:
                    return self.error(request, user, exc.status, exc.message)
                token = form.get("csrf_token") or request.headers.get("x-csrf-token")
                if not auth.same_token(user.csrf, token if isinstance(token, str) else None):
                    return self.error(
                        request,
                        user,
                        403,
                        "This form has expired or did not come from these pages (CSRF check failed). "
                        "Reload the page and try again.",
                    )
            try:
                return await handler(Ctx(request, user, form))
            finally:
                if isinstance(form, FormData):
                    await form.close()  # uploaded files; the handler has read what it needs

        return endpoint

    async def _read_form(self, request: Request, upload: bool) -> Mapping[str, Any]:
        if not upload:
            return await request.form()
        limit = self.app.settings.max_body_bytes
        most = 3 * limit + (2 << 20)  # + the text: 50 replies of 8,000 CJK characters are 1.2 MB
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            raise FormRefused(411, "The form was sent without a Content-Length; send it from the page.")
        if int(declared) > most:
            raise FormRefused(
                413,
                f"The form is {int(declared):,} bytes; the limit is {most:,}. A photo may be at most "
                f"{limit:,} bytes: go back and choose a smaller one.",
            )
        try:
            return await request.form(max_files=2, max_fields=200, max_part_size=limit * 4 // 3 + 4096)
        except HTTPException as exc:  # Starlette's answer to a malformed multipart body
            raise FormRefused(400, f"The form could not be read: {exc.detail}") from None

    # Sign-in ------------------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if request.method == "POST":
            return await self._login(request)
        return self._login_form(request, None, 200)

    def _login_form(self, request: Request, message: str | None, status: int) -> Response:
        token = auth.new_token()
        response = self.render(
            request,
            "login.html",
            None,
            status,
            message=message,
            login_csrf=token,
            next=safe_next(request.query_params.get("next")),
        )
        response.set_cookie(
            auth.LOGIN_CSRF_COOKIE,
            self.signer.sign("login", token),
            max_age=3600,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def _login(self, request: Request) -> Response:
        form = await request.form()
        expected = self.signer.unsign("login", request.cookies.get(auth.LOGIN_CSRF_COOKIE))
        given = form.get("csrf_token")
        if not auth.same_token(expected, given if isinstance(given, str) else None):
            return self._login_form(request, "The sign-in form expired. Please try again.", 403)
        username = str(form.get("username") or "")[:100]
        password = str(form.get("password") or "")[:1000]
        ip = request.client.host if request.client else "unknown"
        keys = [f"user:{username.lower()}", f"ip:{ip}"]
        store = self.app.store
        locked = await self.db(store.login_locked_until, keys)
        if locked is not None:
            wait = fmt_duration((locked - utcnow()).total_seconds() + 59)
            return self._login_form(request, f"Too many failed sign-ins. Try again in {wait}.", 429)
        user = await self.db(store.user_by_name, username)
        ok = await self.db(auth.verify_password, user["password_hash"] if user else None, password)
        if not ok or user is None or not user["active"]:
            await self.db(
                store.login_failed,
                [keys[0]],
                limit=auth.USER_FAILURE_LIMIT,
                window_s=auth.FAILURE_WINDOW_S,
                lock_s=auth.LOCK_S,
            )
            await self.db(
                store.login_failed,
                [keys[1]],
                limit=auth.IP_FAILURE_LIMIT,
                window_s=auth.FAILURE_WINDOW_S,
                lock_s=auth.LOCK_S,
            )
            return self._login_form(request, "Wrong username or password.", 401)
        await self.db(store.login_succeeded, [keys[0]])
        token, csrf = auth.new_token(), auth.new_token()
        ttl = self.app.settings.session_ttl_s
        await self.db(store.create_session, auth.token_hash(token), user["id"], csrf, ttl)
        await self.db(store.record_login, user["id"])
        response = RedirectResponse(safe_next(str(form.get("next") or "")), status_code=303)
        response.set_cookie(
            auth.SESSION_COOKIE,
            self.signer.sign("session", token),
            max_age=ttl,
            path=PREFIX,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(auth.LOGIN_CSRF_COOKIE, path=PREFIX)
        return response

    async def logout(self, ctx: Ctx) -> Response:
        await self.db(self.app.store.end_session, ctx.user.token_hash)
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(auth.SESSION_COOKIE, path=PREFIX, httponly=True, samesite="lax")
        return response

    # Home and dashboard -------------------------------------------------------------------------

    async def home(self, ctx: Ctx) -> Response:
        target = "queue" if ctx.user.role == "supervisor" else "dashboard"
        return RedirectResponse(f"{PREFIX}/{target}", status_code=303)

    async def dashboard(self, ctx: Ctx) -> Response:
        key, span = traffic.window(ctx.request.query_params.get("window"))
        now = utcnow()
        store = self.app.store
        rows = await self.db(store.traffic_rows, now - span)
        data = traffic.dashboard(rows, now, span)
        queue_len, oldest = await self.db(store.queue_summary)
        health = await self.health()
        return self.render(
            ctx.request,
            "dashboard.html",
            ctx.user,
            window=key,
            windows=list(traffic.WINDOWS),
            data=data,
            per_action_chart=charts.stacked_bars(data.buckets),
            score_chart=charts.histogram(data.scores),
            queue_len=queue_len,
            oldest_wait=None if oldest is None else (now - oldest).total_seconds(),
            health=health,
        )

    async def health(self) -> list[tuple[str, bool | None, str]]:
        """(part, ok, detail): None means not configured."""
        out: list[tuple[str, bool | None, str]] = []
        try:
            sql = await asyncio.wait_for(self.db(self.app.store.ping), 2.0)
        except Exception as exc:
            out.append(("SQL", False, type(exc).__name__))
        else:
            out.append(("SQL", sql, "reachable" if sql else "not reachable"))
        try:
            guard = self.app.guard
        except RuntimeError:
            out.append(("Scorer", False, "not loaded"))
            out.append(("Redis", None, "guard not started"))
            return out
        if guard.cache.name == "redis":
            ok = await guard.cache.ping()
            out.append(("Redis", ok, "answering" if ok else "not answering: scores are not cached"))
        else:
            out.append(("Redis", None, f"not configured: {guard.cache.name} cache in this process"))
        scorer = guard.scoring.scorer
        errors = sum(
            n for (name, _), n in self.app.metrics.counters.items() if name == "guard_scorer_errors_total"
        )
        detail = f"{scorer.name} {scorer.version}; {errors} errors since start"
        out.append(("Scorer", errors == 0, detail))
        return out

    # Supervisors: queue and cases ---------------------------------------------------------------

    async def queue(self, ctx: Ctx) -> Response:
        q = ctx.request.query_params
        channel = q.get("channel") or None
        kind = q.get("action") if q.get("action") in ("escalate", "review") else None
        state = q.get("state") or "pending"
        states = list(STATE_LABELS) if state == "all" else [state] if state in STATE_LABELS else ["pending"]
        newest = q.get("sort") == "newest"
        store = self.app.store
        items = await self.db(
            store.queue_page, states=states, channel=channel, kind=kind, newest_first=newest
        )
        channels = await self.db(store.queue_channels)
        now = utcnow()
        for item in items:
            end = item["resolved_at"] or now
            item["waiting_s"] = (end - item["created_at"]).total_seconds()
        return self.render(
            ctx.request,
            "queue.html",
            ctx.user,
            items=items,
            channels=channels,
            filters={
                "channel": channel or "",
                "action": kind or "",
                "state": state,
                "sort": q.get("sort") or "oldest",
            },
        )

    async def _case_view(
        self, ctx: Ctx, item_id: str, status: int = 200, message: str | None = None
    ) -> Response:
        store = self.app.store
        case = await self.db(store.case, item_id)
        if case is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such case.")
        policy = await self._policy_of(case["decision_policy_channel"], case["decision_policy_version"])
        locale = case["decision_locale"] if case["decision_locale"] in ("zh", "en") else "en"
        settings = self.app.settings
        ctx_msg = MessageContext(
            locale,
            case["decision_issue_phrase"],
            case_ref(case["decision_id"]),
            settings.followup_response_time_zh if locale == "zh" else settings.followup_response_time_en,
        )
        follow_up = self._messages().follow_up(ctx_msg, policy.templates)
        deliveries = await self.db(store.deliveries, case["decision_id"])
        return self.render(
            ctx.request,
            "case.html",
            ctx.user,
            status,
            case=case,
            policy=policy,
            bar=charts.score_bar(policy, case["decision_score"], case["decision_band"]),
            follow_up=follow_up,
            deliveries=deliveries,
            case_ref=case_ref(case["decision_id"]),
            waiting_s=((case["resolved_at"] or utcnow()) - case["created_at"]).total_seconds(),
            message=message,
            csrf=ctx.user.csrf,
        )

    async def case(self, ctx: Ctx) -> Response:
        return await self._case_view(ctx, ctx.request.path_params["item_id"])

    async def photo(self, ctx: Ctx) -> Response:
        case = await self.db(self.app.store.case, ctx.request.path_params["item_id"])
        sha = case["decision_image_sha256"] if case else None
        found = await self.db(self.app.store.get_image, sha) if sha else None
        if found is None:
            return Response("no photo", status_code=404, media_type="text/plain")
        mime, data = found
        return Response(
            data,
            media_type=mime if mime in IMAGE_TYPES else "application/octet-stream",
            headers={
                "Content-Security-Policy": "sandbox; default-src 'none'",
                "Content-Disposition": "inline" if mime in IMAGE_TYPES else "attachment",
                "Cache-Control": "private, max-age=3600",
            },
        )

    async def act(self, ctx: Ctx) -> Response:
        item_id = ctx.request.path_params["item_id"]
        op = str(ctx.form.get("op") or "")
        state = CASE_OPS.get(op)
        if state is None:
            return await self._case_view(ctx, item_id, 422, f"Unknown action {op!r}.")
        case = await self.db(self.app.store.case, item_id)
        if case is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such case.")
        reply = str(ctx.form.get("reply") or "").replace("\r\n", "\n").strip()
        reason = str(ctx.form.get("reason") or "").strip()[:2000]
        final: str | None = None
        if op == "approve":
            final = case["decision_reply"]
        elif op == "edit":
            if not reply:
                return await self._case_view(ctx, item_id, 422, "Write the reply to send.")
            if len(reply) > self.app.settings.max_reply_chars:
                return await self._case_view(
                    ctx,
                    item_id,
                    422,
                    f"The reply is longer than {self.app.settings.max_reply_chars} characters.",
                )
            final = reply
        elif op == "dismiss" and not reason:
            return await self._case_view(ctx, item_id, 422, "Give a reason for dismissing the case.")
        done = await self.db(
            self.app.store.resolve_case,
            item_id,
            state,
            ctx.user.username,
            final_reply=final,
            note=reason or None,
        )
        if done is None:
            return await self._case_view(
                ctx, item_id, 409, "Another supervisor has already acted on this case; nothing was changed."
            )
        hook = self.app.on_outcome
        task = BackgroundTask(self._deliver, hook, done["decision_id"]) if hook is not None else None
        query = urlencode({"notice": "case_done", "done": item_id})
        return RedirectResponse(f"{PREFIX}/queue?{query}", status_code=303, background=task)

    @staticmethod
    async def _deliver(hook: Callable[[str], Awaitable[None]], decision_id: str) -> None:
        try:
            await hook(decision_id)
        except Exception:
            log.exception("on_outcome hook failed for decision %s", decision_id)

    # Policy owners --------------------------------------------------------------------------------

    def _messages(self) -> Messages:
        try:
            return self.app.guard.messages
        except RuntimeError:
            return Messages()

    async def _policy_of(self, channel: str, version: int) -> Policy:
        store = self.app.store
        found = await self.db(store.policy_at, channel, version) if version else None
        if found is None:
            found = await self.db(store.active_policy, channel)
        return found or default_policy(channel)

    async def _in_force(self, channel: str) -> tuple[Policy, bool]:
        """(the policy in force for ``channel``, whether it is the channel's own)."""
        store = self.app.store
        own = await self.db(store.active_policy, channel)
        if own is not None:
            return own, True
        fallback = await self.db(store.active_policy, "default")
        return (fallback or default_policy()), False

    async def policies(self, ctx: Ctx) -> Response:
        wanted = ctx.request.query_params.get("channel")
        if wanted is not None:
            if valid_channel(wanted):
                return RedirectResponse(f"{PREFIX}/policies/{wanted}", status_code=303)
            return self.error(ctx.request, ctx.user, 422, "A channel name is 1-100 letters, digits or _ . -")
        store = self.app.store
        channels = await self.db(store.policy_channels)
        rows = []
        for channel in channels:
            history = await self.db(store.policy_history, channel)
            rows.append({"channel": channel, "latest": history[0] if history else None})
        return self.render(ctx.request, "policies.html", ctx.user, rows=rows, csrf=ctx.user.csrf)

    async def policy(self, ctx: Ctx) -> Response:
        channel = ctx.request.path_params["channel"]
        if not valid_channel(channel):
            return self.error(ctx.request, ctx.user, 404, "No such channel.")
        current, own = await self._in_force(channel)
        form = PolicyForm.from_policy(channel, current)
        if ctx.request.method == "POST":
            form = PolicyForm.from_form(channel, ctx.form, self._messages())
            op = ctx.form.get("op")
            if op == "publish" and form.policy is not None:
                if own and policy_document(form.policy) == policy_document(current):
                    return self._redirect_policy(channel, "unchanged")
                await self.db(self.app.store.publish_policy_audited, form.policy, ctx.user.username)
                self._invalidate()
                return self._redirect_policy(channel, "published")
        status = 422 if form.problems else 200
        return await self._policy_page(ctx, channel, form, current, own, status)

    def _redirect_policy(self, channel: str, notice: str) -> Response:
        return RedirectResponse(f"{PREFIX}/policies/{channel}?notice={notice}", status_code=303)

    def _invalidate(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.app.guard.policies.invalidate()

    async def _policy_page(
        self, ctx: Ctx, channel: str, form: PolicyForm, current: Policy, own: bool, status: int
    ) -> Response:
        key = str(ctx.form.get("window") or ctx.request.query_params.get("window") or "24h")
        preview = await self._preview(channel, form, current, key)
        history = await self.db(self.app.store.policy_history, channel)
        for i, entry in enumerate(history):
            older = history[i + 1]["document"] if i + 1 < len(history) else None
            entry["diff"] = policy_diff(older, entry["document"])
        bands = list(form.bands) + [("", "", "")] * (MAX_BANDS - len(form.bands))
        settings = self.app.settings
        samples = render_samples(
            form,
            self._messages(),
            {"zh": settings.followup_response_time_zh, "en": settings.followup_response_time_en},
        )
        return self.render(
            ctx.request,
            "policy.html",
            ctx.user,
            status,
            channel=channel,
            form=form,
            bands=bands,
            own=own,
            current=current,
            history=history,
            preview=preview,
            samples=samples,
            template_keys=TEMPLATE_KEYS,
            template_labels=TEMPLATE_LABELS,
            field_name=field_name,
            csrf=ctx.user.csrf,
            windows=list(traffic.WINDOWS),
        )

    async def _preview(self, channel: str, form: PolicyForm, current: Policy, key: str) -> dict[str, Any]:
        key, span = traffic.window(key)
        rows = await self.db(self.app.store.replay_rows, channel, utcnow() - span)
        draft = form.policy
        result = traffic.replay(rows, draft if draft is not None else current)
        old = traffic.replay(rows, current)  # the recorded actions may predate the policy in force
        return {
            "window": key,
            "valid": draft is not None,
            "problems": form.problems,
            "result": result,
            "recorded": old.old_counts,
            "counts_chart": charts.paired_bars(old.new_counts, result.new_counts),
            "histogram": charts.histogram(
                result.scores,
                old_edges=charts.band_edges(current),
                new_edges=charts.band_edges(draft) if draft is not None else [],
            ),
            "old": old,
        }

    async def preview_fragment(self, ctx: Ctx) -> Response:
        channel = ctx.request.path_params["channel"]
        if not valid_channel(channel):
            return self.error(ctx.request, ctx.user, 404, "No such channel.")
        current, _own = await self._in_force(channel)
        form = PolicyForm.from_form(channel, ctx.form, self._messages())
        preview = await self._preview(channel, form, current, str(ctx.form.get("window") or "24h"))
        html = self.env.get_template("_preview.html").render(preview=preview)
        return HTMLResponse(html, status_code=200)

    async def samples(self, ctx: Ctx) -> Response:
        channel = ctx.request.path_params["channel"]
        form = PolicyForm.from_form(
            channel if valid_channel(channel) else "default", ctx.form, self._messages()
        )
        settings = self.app.settings
        rendered = render_samples(
            form,
            self._messages(),
            {"zh": settings.followup_response_time_zh, "en": settings.followup_response_time_en},
        )
        return JSONResponse({"samples": rendered, "problems": form.problems})

    async def rollback(self, ctx: Ctx) -> Response:
        channel = ctx.request.path_params["channel"]
        try:
            version = int(str(ctx.form.get("version")))
        except ValueError:
            version = 0
        old = await self.db(self.app.store.policy_at, channel, version) if valid_channel(channel) else None
        if old is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such policy version.")
        await self.db(self.app.store.publish_policy_audited, old, ctx.user.username, "policy.rollback")
        self._invalidate()
        return self._redirect_policy(channel, "rolled_back")

    async def outcomes(self, ctx: Ctx) -> Response:
        key, span = traffic.window(ctx.request.query_params.get("window"), "30d")
        rows = await self.db(self.app.store.outcome_rows, None, utcnow() - span)
        return self.render(
            ctx.request,
            "outcomes.html",
            ctx.user,
            groups=traffic.band_outcomes(rows),
            window=key,
            windows=list(traffic.WINDOWS),
            needs_human=traffic.OUTCOME_NEEDS_HUMAN,
        )

    # Admins: users and the audit log ------------------------------------------------------------

    async def users(self, ctx: Ctx) -> Response:
        message = None
        status = 200
        store = self.app.store
        if ctx.request.method == "POST":
            username = str(ctx.form.get("username") or "").strip()
            role = str(ctx.form.get("role") or "")
            password = str(ctx.form.get("password") or "")
            message = (
                auth.username_problem(username) or auth.role_problem(role) or auth.password_problem(password)
            )
            if message is None and await self.db(store.user_by_name, username) is not None:
                message = f"There is already a user {username!r}."
            if message is None:
                pw_hash = await self.db(auth.hash_password, password)
                await self.db(store.create_user, username, pw_hash, role, ctx.user.username)
                return RedirectResponse(f"{PREFIX}/users?notice=user_created", status_code=303)
            status = 422
        users = await self.db(store.users)
        return self.render(
            ctx.request,
            "users.html",
            ctx.user,
            status,
            users=users,
            roles=USER_ROLES,
            message=message,
            csrf=ctx.user.csrf,
        )

    async def user_update(self, ctx: Ctx) -> Response:
        try:
            user_id = int(ctx.request.path_params["user_id"])
        except ValueError:
            return self.error(ctx.request, ctx.user, 404, "No such user.")
        role = str(ctx.form.get("role") or "")
        password = str(ctx.form.get("password") or "")
        problem = auth.role_problem(role) or (auth.password_problem(password) if password else None)
        if problem:
            return self.error(ctx.request, ctx.user, 422, problem)
        pw_hash = await self.db(auth.hash_password, password) if password else None
        ok = await self.db(
            self.app.store.update_user,
            user_id,
            ctx.user.username,
            role=role,
            active=ctx.form.get("active") == "on",
            password_hash=pw_hash,
        )
        notice = "user_updated" if ok else "user_refused"
        return RedirectResponse(f"{PREFIX}/users?notice={notice}", status_code=303)

    async def audit(self, ctx: Ctx) -> Response:
        try:
            page = max(int(ctx.request.query_params.get("page", "0")), 0)
        except ValueError:
            page = 0
        entries = await self.db(self.app.store.audit_entries, 100, page * 100)
        return self.render(ctx.request, "audit.html", ctx.user, entries=entries, page=page)

    # Routes ---------------------------------------------------------------------------------------

    def routes(self) -> Mount:
        g = self.guarded
        router = Router(
            routes=[
                Route("/login", self.login_page, methods=["GET", "POST"]),
                Route("/logout", g("any", self.logout), methods=["POST"]),
                Route("/", g("any", self.home)),
                Route("/dashboard", g("any", self.dashboard)),
                Route("/queue", g("queue", self.queue)),
                Route("/cases/{item_id}", g("queue", self.case)),
                Route("/cases/{item_id}/photo", g("queue", self.photo)),
                Route("/cases/{item_id}/act", g("queue", self.act), methods=["POST"]),
                Route(
                    "/playground",
                    g("playground", self.playground.page, upload=True),
                    methods=["GET", "POST"],
                ),
                Route("/outcomes", g("policies", self.outcomes)),
                Route("/policies", g("policies", self.policies)),
                Route("/policies/{channel}", g("policies", self.policy), methods=["GET", "POST"]),
                Route("/policies/{channel}/preview", g("policies", self.preview_fragment), methods=["POST"]),
                Route("/policies/{channel}/samples", g("policies", self.samples), methods=["POST"]),
                Route("/policies/{channel}/rollback", g("policies", self.rollback), methods=["POST"]),
                Route("/users", g("users", self.users), methods=["GET", "POST"]),
                Route("/users/{user_id}", g("users", self.user_update), methods=["POST"]),
                Route("/audit", g("users", self.audit)),
                Mount("/static", StaticFiles(directory=STATIC_DIR), name="admin-static"),
            ]
        )
        return Mount(PREFIX, app=SecurityHeaders(router))


def admin_mount(guard_app: GuardApp) -> BaseRoute:
    """The admin pages under /admin, for create_app to add to its routes."""
    return Admin(guard_app).routes()
