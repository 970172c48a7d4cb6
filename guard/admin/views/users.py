"""The admins' pages: users and the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response

from guard.admin import auth, diffs
from guard.admin.base import PREFIX, Ctx, Pages
from guard.admin.records import AuditFilter
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
        locked_users, locked_addresses = _locks(await self.db(queries.login_locks))
        return self.render(
            ctx.request,
            "users.html",
            ctx.user,
            status,
            users=users,
            roles=USER_ROLES,
            message=message,
            locked_users=locked_users,
            locked_addresses=locked_addresses,
        )

    async def unlock(self, ctx: Ctx) -> Response:
        """Lift the sign-in locks of a user (from every address) or of one address."""
        username = str(ctx.form.get("username") or "")
        address = str(ctx.form.get("address") or "")
        if username:
            match, target = auth.user_throttle_prefix(username), f"user {username}"
        elif address:
            match, target = auth.address_throttle_key(address), f"address {address}"
        else:
            return self.error(ctx.request, ctx.user, 422, "Name a user or an address to unlock.")
        await self.db(self.queries.unlock_login, match, ctx.user.username, target)
        return RedirectResponse(f"{PREFIX}/users?notice=unlocked", status_code=303)

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
        q = ctx.request.query_params
        try:
            page = max(int(q.get("page", "0")), 0)
        except ValueError:
            page = 0
        wanted = {k: (q.get(k) or "").strip() for k in ("actor", "action", "channel", "from", "to")}
        problems = []
        days: dict[str, datetime | None] = {}
        for key in ("from", "to"):
            days[key] = None
            if wanted[key]:
                try:
                    days[key] = datetime.strptime(wanted[key], "%Y-%m-%d").replace(tzinfo=UTC)
                except ValueError:
                    problems.append(f"The date {wanted[key]!r} is not a date (YYYY-MM-DD).")
        until = days["to"] + timedelta(days=1) if days["to"] is not None else None
        where = AuditFilter(
            actor=wanted["actor"] or None,
            action=wanted["action"] or None,
            channel=wanted["channel"] or None,
            since=days["from"],
            until=until,
        )
        entries = await self.db(self.queries.audit_entries, 100, page * 100, where)
        actors, actions, channels = await self.db(self.queries.audit_facets)
        rows = [{"entry": e, "changes": diffs.changes(e.before, e.after)} for e in entries]
        query = urlencode({k: v for k, v in wanted.items() if v})
        return self.render(
            ctx.request,
            "audit.html",
            ctx.user,
            422 if problems else 200,
            rows=rows,
            page=page,
            wanted=wanted,
            problems=problems,
            actors=actors,
            audit_actions=actions,
            channels=channels,
            query=query,
        )


def _locks(locks: list[tuple[str, datetime]]) -> tuple[dict[str, LockInfo], dict[str, datetime]]:
    """The locks now, as {username (lower case): (addresses, until)} and {address: until}."""
    users: dict[str, LockInfo] = {}
    addresses: dict[str, datetime] = {}
    for key, until in locks:
        if key.startswith("user:") and "|ip:" in key:
            name, address = key[len("user:") :].split("|ip:", 1)
            found = users.setdefault(name, LockInfo([], until))
            found.addresses.append(address)
            found.until = max(found.until, until)
        elif key.startswith("ip:"):
            addresses[key[len("ip:") :]] = until
    return users, addresses


@dataclass
class LockInfo:
    addresses: list[str]
    until: datetime
