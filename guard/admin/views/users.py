"""The admins' pages: users and the audit log."""

from __future__ import annotations

from starlette.responses import RedirectResponse, Response

from guard.admin import auth
from guard.admin.base import PREFIX, Ctx, Pages
from guard.tables import USER_ROLES


class UserViews(Pages):
    """Users and the audit log."""

    async def users(self, ctx: Ctx) -> Response:
        message = None
        status = 200
        queries = self.queries
        if ctx.request.method == "POST":
            username = str(ctx.form.get("username") or "").strip()
            role = str(ctx.form.get("role") or "")
            password = str(ctx.form.get("password") or "")
            message = (
                auth.username_problem(username) or auth.role_problem(role) or auth.password_problem(password)
            )
            if message is None and await self.db(queries.user_by_name, username) is not None:
                message = f"There is already a user {username!r}."
            if message is None:
                pw_hash = await self.db(auth.hash_password, password)
                await self.db(queries.create_user, username, pw_hash, role, ctx.user.username)
                return RedirectResponse(f"{PREFIX}/users?notice=user_created", status_code=303)
            status = 422
        users = await self.db(queries.users)
        return self.render(
            ctx.request,
            "users.html",
            ctx.user,
            status,
            users=users,
            roles=USER_ROLES,
            message=message,
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
            self.queries.update_user,
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
        entries = await self.db(self.queries.audit_entries, 100, page * 100)
        return self.render(ctx.request, "audit.html", ctx.user, entries=entries, page=page)
