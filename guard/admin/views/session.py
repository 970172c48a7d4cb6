"""Signing in and out, the home redirect and the dashboard."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from guard.admin import auth, charts, traffic
from guard.admin.base import PREFIX, Ctx, Pages, fmt_duration
from guard.body import read_form
from guard.errors import RequestError
from guard.tables import utcnow


def safe_next(target: str | None) -> str:
    """Only a path inside the admin pages: never another site."""
    if target and target.startswith(PREFIX + "/") and "//" not in target and "\\" not in target:
        return target
    return PREFIX + "/"


class SessionViews(Pages):
    """Sign-in, sign-out, home and the dashboard."""

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
        try:
            form = await read_form(request, self.rt.settings.body_timeout_s, max_files=0, max_fields=20)
        except RequestError as exc:
            return self._login_form(request, exc.message, exc.status)
        expected = self.signer.unsign("login", request.cookies.get(auth.LOGIN_CSRF_COOKIE))
        given = form.get("csrf_token")
        if not auth.same_token(expected, given if isinstance(given, str) else None):
            return self._login_form(request, "The sign-in form expired. Please try again.", 403)
        username = str(form.get("username") or "")[:100]
        password = str(form.get("password") or "")[:1000]
        ip = request.client.host if request.client else "unknown"
        keys = [auth.user_throttle_key(username, ip), auth.address_throttle_key(ip)]
        queries = self.queries
        locked = await self.db(queries.login_locked_until, keys)
        if locked is not None:
            wait = fmt_duration((locked - utcnow()).total_seconds() + 59)
            return self._login_form(request, f"Too many failed sign-ins. Try again in {wait}.", 429)
        user = await self.db(queries.user_by_name, username)
        ok = await self.db(auth.verify_password, user.password_hash if user else None, password)
        if not ok or user is None or not user.active:
            limits = {keys[0]: auth.USER_FAILURE_LIMIT, keys[1]: auth.IP_FAILURE_LIMIT}
            window_s, lock_s = auth.FAILURE_WINDOW_S, auth.LOCK_S
            for key, limit in limits.items():
                await self.db(queries.login_failed, [key], limit=limit, window_s=window_s, lock_s=lock_s)
            return self._login_form(request, "Wrong username or password.", 401)
        await self.db(queries.login_succeeded, [keys[0]])
        token, csrf = auth.new_token(), auth.new_token()
        ttl = self.rt.settings.session_ttl_s
        await self.db(queries.create_session, auth.token_hash(token), user.id, csrf, ttl)
        await self.db(queries.record_login, user.id)
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
        await self.db(self.queries.end_session, ctx.user.token_hash)
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
        rows = await self.db(self.queries.traffic_rows, now - span)
        data = traffic.dashboard(rows, now, span)
        queue_len, oldest = await self.db(self.queries.queue_summary)
        audits = await self.db(self.queries.audits_pending)
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
            audits_pending=audits,
            oldest_wait=None if oldest is None else (now - oldest).total_seconds(),
            health=health,
        )

    async def health(self) -> list[tuple[str, bool | None, str]]:
        """(part, ok, detail): None means not configured."""
        out: list[tuple[str, bool | None, str]] = []
        try:
            sql = await asyncio.wait_for(self.db(self.rt.store.ping), 2.0)
        except Exception as exc:
            out.append(("SQL", False, type(exc).__name__))
        else:
            out.append(("SQL", sql, "reachable" if sql else "not reachable"))
        guard = self.rt.pipeline
        if guard.cache.name == "redis":
            ok = await guard.cache.ping()
            out.append(("Redis", ok, "answering" if ok else "not answering: scores are not cached"))
        else:
            out.append(("Redis", None, f"not configured: {guard.cache.name} cache in this process"))
        scorer = guard.scoring.scorer
        errors = int(self.rt.metrics.total("guard_scorer_errors_total"))
        detail = f"{scorer.name} {scorer.version}; {errors} errors since start"
        out.append(("Scorer", errors == 0, detail))
        return out
