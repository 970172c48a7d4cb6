"""The supervisors' pages: the queue, a case, its photo, acting on it, and who has a case open.

A supervisor works the queue under filters (channel, action, state, order). The filters travel in
the query string from the list to each case, to its previous and next cases, and to the next
waiting case that opens after an action."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from urllib.parse import urlencode

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, RedirectResponse, Response

from guard.admin import charts
from guard.admin.base import PREFIX, STATE_LABELS, Ctx
from guard.admin.records import Case, QueueFilter, Viewer
from guard.admin.views.audits import AuditViews
from guard.followups import MessageContext, case_ref
from guard.runtime import OutcomeHook
from guard.tables import utcnow

log = logging.getLogger(__name__)

IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif"}
CASE_OPS = {"approve": "approved", "edit": "edited", "take_over": "taken_over", "dismiss": "dismissed"}
PAGE_SIZE = 50
"""Cases per page of the queue."""
PRESENCE_TTL_S = 40.0
"""A case counts as open by someone whose page refreshed its presence this recently (the page does
every 15 s, see static/admin.js)."""
PHOTO_TEXT_SKIPPED = {
    "image_text_timeout": "it was not read in time",
    "image_text_busy": "the text reader was busy with other photos",
    "image_text_error": "the text reader failed on this photo",
}
"""Why the text in a photo was not used for the score, by the decision's reason."""
FILTER_KEYS = ("channel", "action", "state", "sort")

_UNITS = (
    (re.compile(r"(\d+(?:\.\d+)?)\s*(?:d|days?|天)", re.I), 86400.0),
    (re.compile(r"(\d+(?:\.\d+)?)\s*(?:h|hrs?|hours?|小时|个小时|钟头)", re.I), 3600.0),
    (re.compile(r"(\d+(?:\.\d+)?)\s*(?:m|mins?|minutes?|分钟)", re.I), 60.0),
)


def promise_seconds(text: str) -> float | None:
    """The response time a follow-up promises ("2 hours", "2小时", "30 min", "1 day"), in seconds;
    None when the text names no duration."""
    total = 0.0
    for pattern, unit in _UNITS:
        total += sum(float(n) * unit for n in pattern.findall(text))
    return total or None


def wait_state(waited_s: float, promised_s: float | None) -> str:
    """How a waiting case stands against the promised response time: "ok" (under half of it),
    "soon" (past half), "late" (past it), or "unknown" (nothing promised)."""
    if promised_s is None or not math.isfinite(waited_s):
        return "unknown"
    if waited_s >= promised_s:
        return "late"
    return "soon" if waited_s >= promised_s / 2 else "ok"


def read_filters(params: Mapping[str, str]) -> tuple[QueueFilter, dict[str, str]]:
    """The queue's filters from a query string: the filter, and the values as the form shows them."""
    channel = params.get("channel") or None
    kind = params.get("action") if params.get("action") in ("escalate", "review", "audit") else None
    state = params.get("state") or "pending"
    if state != "all" and state not in STATE_LABELS:
        state = "pending"
    states = tuple(STATE_LABELS) if state == "all" else (state,)
    newest = params.get("sort") == "newest"
    shown = {
        "channel": channel or "",
        "action": kind or "",
        "state": state,
        "sort": "newest" if newest else "oldest",
    }
    return QueueFilter(states, channel, kind, newest), shown


def filter_query(shown: Mapping[str, str], **extra: str | int) -> str:
    """The filters (those not at their default) and ``extra`` as a query string, "" when none."""
    defaults = {"channel": "", "action": "", "state": "pending", "sort": "oldest"}
    pairs = [(k, shown[k]) for k in FILTER_KEYS if shown.get(k, defaults[k]) != defaults[k]]
    pairs += [(k, str(v)) for k, v in extra.items()]
    return f"?{urlencode(pairs)}" if pairs else ""


class CaseViews(AuditViews):
    """The queue and its cases."""

    def _promise(self, locale: str) -> float | None:
        return promise_seconds(self.rt.settings.response_time(locale))

    def _wait_state(self, case: Case, now_s: float) -> str:
        if case.item.state != "pending":
            return "done"
        if case.item.kind == "audit":  # sent already: no customer waits on it
            return "unknown"
        return wait_state(now_s, self._promise(case.decision.locale))

    async def queue(self, ctx: Ctx) -> Response:
        q = ctx.request.query_params
        f, shown = read_filters(q)
        try:
            page = max(int(q.get("page", "1")), 1)
        except ValueError:
            page = 1
        total = await self.db(self.queries.queue_count, f)
        pages = max(math.ceil(total / PAGE_SIZE), 1)
        page = min(page, pages)
        items = await self.db(self.queries.queue_page, f, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        channels = await self.db(self.queries.queue_channels)
        counts = await self.db(self.queries.queue_state_counts, f)
        viewers = await self.db(
            self.queries.viewers, [it.item.id for it in items], PRESENCE_TTL_S, except_user=ctx.user.username
        )
        now = utcnow()
        rows = [(it, self._wait_state(it, it.waiting_s(now)), viewers.get(it.item.id, [])) for it in items]
        return self.render(
            ctx.request,
            "queue.html",
            ctx.user,
            rows=rows,
            now=now,
            channels=channels,
            filters=shown,
            counts=counts,
            count_all=sum(counts.values()),
            total=total,
            page=page,
            pages=pages,
            first=(page - 1) * PAGE_SIZE + 1,
            last=(page - 1) * PAGE_SIZE + len(items),
            page_query=lambda n: filter_query(shown, page=n),
            case_query=filter_query(shown),
            promise=self.rt.settings.response_times(),
        )

    async def _case_view(
        self, ctx: Ctx, queue_item_id: str, status: int = 200, message: str | None = None
    ) -> Response:
        case = await self.db(self.queries.case, queue_item_id)
        if case is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such case.")
        if case.item.kind == "audit":  # sent already: marked on its own page (views/audits.py)
            return await self.audit_view(ctx, case, status, message)
        f, shown = read_filters(ctx.request.query_params)
        decision = case.decision
        policy = await self._policy_of(decision.policy_channel, decision.policy_version)
        locale = decision.locale if decision.locale in ("zh", "en") else "en"
        settings = self.rt.settings
        ctx_msg = MessageContext(
            locale,
            decision.issue_phrase,
            case_ref(decision.id),
            settings.response_time(locale),
        )
        follow_up = self.messages().follow_up(ctx_msg, policy.templates)
        deliveries = await self.db(self.rt.store.deliveries, decision.id)
        neighbours = await self.db(self.queries.queue_neighbours, queue_item_id, f)
        others = await self._seen(ctx, case)
        waited = case.waiting_s(utcnow())
        skipped = None
        if decision.reason in PHOTO_TEXT_SKIPPED and "image_text" not in decision.inputs_used:
            skipped = PHOTO_TEXT_SKIPPED[decision.reason]
        query = filter_query(shown)
        return self.render(
            ctx.request,
            "case.html",
            ctx.user,
            status,
            case=case,
            policy=policy,
            bar=charts.score_bar(policy, decision.score, decision.band),
            follow_up=follow_up,
            deliveries=deliveries,
            case_ref=case_ref(decision.id),
            waiting_s=waited,
            wait=self._wait_state(case, waited),
            promise=settings.response_time(locale),
            message=message,
            primary="take_over" if case.item.kind == "escalate" else "approve",
            photo_text_skipped=skipped,
            neighbours=neighbours,
            others=others,
            presence_ttl=PRESENCE_TTL_S,
            query=query,
            filters=shown,
        )

    async def _seen(self, ctx: Ctx, case: Case) -> list[Viewer]:
        """Record that this supervisor has ``case`` open, while it waits; the others who have it
        open (none once it is resolved)."""
        if case.item.state != "pending":
            return []
        return await self.db(self.queries.touch_viewer, case.item.id, ctx.user.username, PRESENCE_TTL_S)

    async def case(self, ctx: Ctx) -> Response:
        return await self._case_view(ctx, ctx.request.path_params["queue_item_id"])

    async def photo(self, ctx: Ctx) -> Response:
        case = await self.db(self.queries.case, ctx.request.path_params["queue_item_id"])
        sha = case.decision.image_sha256 if case else None
        found = await self.db(self.rt.store.get_image, sha) if sha else None
        if found is None:
            return Response("no photo", status_code=404, media_type="text/plain")
        mime, data = found
        return Response(
            data,
            media_type=mime if mime in IMAGE_TYPES else "application/octet-stream",
            headers={
                "Content-Security-Policy": "sandbox; default-src 'none'",
                "Content-Disposition": "inline" if mime in IMAGE_TYPES else "attachment",
                # Never kept by the browser: a customer's photo is not viewable after sign-out.
                "Cache-Control": "no-store",
            },
        )

    async def presence(self, ctx: Ctx) -> Response:
        """The case page's heartbeat (POST, CSRF-checked): records that this supervisor still has
        the case open and answers who else has; ``op=leave`` (sent as the page closes) removes it."""
        queue_item_id = ctx.request.path_params["queue_item_id"]
        if ctx.form.get("op") == "leave":
            await self.db(self.queries.leave_case, queue_item_id, ctx.user.username)
            return JSONResponse({"others": []})
        case = await self.db(self.queries.case, queue_item_id)
        if case is None:
            return JSONResponse({"error": {"code": "not_found", "message": "There is no such case."}}, 404)
        others = await self._seen(ctx, case)
        return JSONResponse(
            {
                "others": [v.username for v in others],
                "state": case.item.state,
                "resolved_by": case.item.resolved_by,
            }
        )

    async def act(self, ctx: Ctx) -> Response:
        queue_item_id = ctx.request.path_params["queue_item_id"]
        op = str(ctx.form.get("op") or "")
        state = CASE_OPS.get(op)
        if state is None:
            return await self._case_view(ctx, queue_item_id, 422, f"Unknown action {op!r}.")
        case = await self.db(self.queries.case, queue_item_id)
        if case is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such case.")
        if case.item.kind == "audit":
            message = "This reply was sent already: mark it right or wrong."
            return await self.audit_view(ctx, case, 409, message)
        reply = str(ctx.form.get("reply") or "").replace("\r\n", "\n").strip()
        reason = str(ctx.form.get("reason") or "").strip()[:2000]
        final: str | None = None
        if op == "approve":
            final = case.decision.draft
        elif op == "edit":
            if not reply:
                return await self._case_view(ctx, queue_item_id, 422, "Write the reply to send.")
            if len(reply) > self.rt.settings.max_reply_chars:
                return await self._case_view(
                    ctx,
                    queue_item_id,
                    422,
                    f"The reply is longer than {self.rt.settings.max_reply_chars} characters.",
                )
            final = reply
        elif op == "dismiss" and not reason:
            return await self._case_view(ctx, queue_item_id, 422, "Give a reason for dismissing the case.")
        done = await self.db(
            self.queries.resolve_case,
            queue_item_id,
            state,
            ctx.user.username,
            final_reply=final,
            note=reason or None,
        )
        if done is None:
            return await self._case_view(
                ctx, queue_item_id, 409, await self._already_done(queue_item_id, ctx)
            )
        await self.db(self.queries.leave_case, queue_item_id, ctx.user.username)
        task = BackgroundTask(self._deliver, self.rt.on_outcome, done.decision_id)
        return RedirectResponse(await self._after(ctx, queue_item_id), status_code=303, background=task)

    async def _already_done(self, queue_item_id: str, ctx: Ctx) -> str:
        """Why acting on a case that is no longer waiting changed nothing, naming who resolved it."""
        case = await self.db(self.queries.case, queue_item_id)
        item = case.item if case is not None else None
        if item is None or item.resolved_by is None:
            return "Another supervisor has already acted on this case; nothing was changed."
        what = STATE_LABELS.get(item.state, item.state)
        when = item.resolved_at.strftime("%H:%M:%S UTC") if item.resolved_at else "earlier"
        if item.resolved_by == ctx.user.username:
            return f"You already resolved this case ({what} at {when}); nothing was changed."
        return (
            f"Another supervisor ({item.resolved_by}) has already acted on this case ({what} at {when}); "
            "nothing was changed."
        )

    async def _after(self, ctx: Ctx, queue_item_id: str) -> str:
        """Where a supervisor goes after acting: the next waiting case under the same filters (one
        nobody else has open, if there is one), else the queue."""
        f, shown = read_filters(ctx.request.query_params)
        following = await self.db(
            self.queries.next_waiting, f, viewer=ctx.user.username, ttl_s=PRESENCE_TTL_S
        )
        if following is not None and following != queue_item_id:
            return f"{PREFIX}/cases/{following}" + filter_query(
                shown, notice="case_done_next", done=queue_item_id
            )
        return f"{PREFIX}/queue" + filter_query(shown, notice="case_done", done=queue_item_id)

    @staticmethod
    async def _deliver(hook: OutcomeHook, decision_id: str) -> None:
        try:
            await hook(decision_id)
        except Exception:
            log.exception("on_outcome hook failed for decision %s", decision_id)
