"""The admin pages' routes. Every route names the area it belongs to; the role check, the session
and the CSRF check happen in ``guarded`` on the server, before any handler runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from guard.admin import auth
from guard.admin.auth import CurrentUser
from guard.admin.base import PREFIX, STATIC_DIR, Ctx, Handler, PageError
from guard.admin.headers import SecurityHeaders
from guard.admin.playground import Playground
from guard.admin.views.calibration import CalibrationViews
from guard.admin.views.cases import CaseViews
from guard.admin.views.policies import PolicyViews
from guard.admin.views.session import SessionViews
from guard.admin.views.users import UserViews
from guard.body import read_form
from guard.errors import BodyTooLarge, LengthRequired, RequestError
from guard.runtime import Runtime


class Admin(SessionViews, CaseViews, PolicyViews, CalibrationViews, UserViews):
    """The admin pages of one guard: the sign-in, role and CSRF checks, and the routes."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.playground = Playground(self)
        self.asgi = self.routes()

    # Plumbing ------------------------------------------------------------------------------------

    async def current_user(self, request: Request) -> CurrentUser | None:
        token = self.signer.unsign("session", request.cookies.get(auth.SESSION_COOKIE))
        if token is None:
            return None
        digest = auth.token_hash(token)
        found = await self.db(self.queries.session_user, digest)
        if found is None:
            return None
        return CurrentUser(found.id, found.username, found.role, found.csrf, digest)

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
                except RequestError as exc:
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
            except PageError as exc:
                return self.error(request, user, exc.status, exc.message)
            finally:
                if isinstance(form, FormData):
                    await form.close()  # uploaded files; the handler has read what it needs

        return endpoint

    async def _read_form(self, request: Request, upload: bool) -> Mapping[str, Any]:
        timeout = self.rt.settings.body_timeout_s
        if not upload:
            return await read_form(request, timeout)
        limit = self.rt.settings.max_body_bytes
        most = 3 * limit + (2 << 20)  # + the text: 50 replies of 8,000 CJK characters are 1.2 MB
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            raise LengthRequired(
                "length_required", "The form was sent without a Content-Length; send it from the page."
            )
        if int(declared) > most:
            raise BodyTooLarge(
                "body_too_large",
                f"The form is {int(declared):,} bytes; the limit is {most:,}. A photo may be at most "
                f"{limit:,} bytes: go back and choose a smaller one.",
            )
        return await read_form(
            request, timeout, max_files=2, max_fields=200, max_part_size=limit * 4 // 3 + 4096
        )

    # Routes ---------------------------------------------------------------------------------------

    def routes(self) -> ASGIApp:
        """The pages (paths below /admin), with their security headers."""
        g = self.guarded
        router = Router(
            routes=[
                Route("/login", self.login_page, methods=["GET", "POST"]),
                Route("/logout", g("any", self.logout), methods=["POST"]),
                Route("/", g("any", self.home)),
                Route("/dashboard", g("any", self.dashboard)),
                Route("/queue", g("queue", self.queue)),
                Route("/cases/{queue_item_id}", g("queue", self.case)),
                Route("/cases/{queue_item_id}/photo", g("queue", self.photo)),
                Route("/cases/{queue_item_id}/act", g("queue", self.act), methods=["POST"]),
                Route("/cases/{queue_item_id}/presence", g("queue", self.presence), methods=["POST"]),
                Route("/cases/{queue_item_id}/mark", g("queue", self.mark), methods=["POST"]),
                Route(
                    "/playground",
                    g("playground", self.playground.page, upload=True),
                    methods=["GET", "POST"],
                ),
                Route("/outcomes", g("policies", self.outcomes)),
                Route("/calibration", g("policies", self.calibration_index)),
                Route("/calibration/{channel}", g("policies", self.calibration)),
                Route("/calibration/{channel}/fit", g("policies", self.calibration_fit), methods=["POST"]),
                Route(
                    "/calibration/{channel}/publish",
                    g("policies", self.calibration_publish),
                    methods=["POST"],
                ),
                Route("/policies", g("policies", self.policies)),
                Route("/policies/{channel}", g("policies", self.policy), methods=["GET", "POST"]),
                Route("/policies/{channel}/preview", g("policies", self.preview_fragment), methods=["POST"]),
                Route("/policies/{channel}/samples", g("policies", self.samples), methods=["POST"]),
                Route("/policies/{channel}/rollback", g("policies", self.rollback), methods=["POST"]),
                Route("/users", g("users", self.users), methods=["GET", "POST"]),
                Route("/users/unlock", g("users", self.unlock), methods=["POST"]),
                Route("/users/{user_id}", g("users", self.user_update), methods=["POST"]),
                Route("/audit", g("users", self.audit)),
                Mount("/static", StaticFiles(directory=STATIC_DIR), name="admin-static"),
            ]
        )
        return SecurityHeaders(router)


def admin_mount() -> BaseRoute:
    """The admin pages under /admin: each request goes to the ``Admin`` of the running guard, which
    the app's lifespan builds over its runtime and yields as ``state["admin"]``."""

    async def pages(scope: Scope, receive: Receive, send: Send) -> None:
        admin = scope.get("state", {}).get("admin")
        if not isinstance(admin, Admin):
            raise RuntimeError("no admin pages in the request's state: the app's lifespan did not run")
        await admin.asgi(scope, receive, send)

    return Mount(PREFIX, app=pages)
