"""The supervisors' pages: the queue, a case, its photo, acting on it."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from starlette.background import BackgroundTask
from starlette.responses import RedirectResponse, Response

from guard.admin import charts
from guard.admin.base import PREFIX, STATE_LABELS, Ctx, Pages
from guard.followups import MessageContext, case_ref
from guard.runtime import OutcomeHook
from guard.tables import utcnow

log = logging.getLogger(__name__)

IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif"}
CASE_OPS = {"approve": "approved", "edit": "edited", "take_over": "taken_over", "dismiss": "dismissed"}


class CaseViews(Pages):
    """The queue and its cases."""

    async def queue(self, ctx: Ctx) -> Response:
        q = ctx.request.query_params
        channel = q.get("channel") or None
        kind = q.get("action") if q.get("action") in ("escalate", "review") else None
        state = q.get("state") or "pending"
        states = list(STATE_LABELS) if state == "all" else [state] if state in STATE_LABELS else ["pending"]
        newest = q.get("sort") == "newest"
        items = await self.db(
            self.queries.queue_page, states=states, channel=channel, kind=kind, newest_first=newest
        )
        channels = await self.db(self.queries.queue_channels)
        return self.render(
            ctx.request,
            "queue.html",
            ctx.user,
            items=items,
            now=utcnow(),
            channels=channels,
            filters={
                "channel": channel or "",
                "action": kind or "",
                "state": state,
                "sort": q.get("sort") or "oldest",
            },
        )

    async def _case_view(
        self, ctx: Ctx, queue_item_id: str, status: int = 200, message: str | None = None
    ) -> Response:
        case = await self.db(self.queries.case, queue_item_id)
        if case is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such case.")
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
            waiting_s=case.waiting_s(utcnow()),
            message=message,
            csrf=ctx.user.csrf,
        )

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

    async def act(self, ctx: Ctx) -> Response:
        queue_item_id = ctx.request.path_params["queue_item_id"]
        op = str(ctx.form.get("op") or "")
        state = CASE_OPS.get(op)
        if state is None:
            return await self._case_view(ctx, queue_item_id, 422, f"Unknown action {op!r}.")
        case = await self.db(self.queries.case, queue_item_id)
        if case is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such case.")
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
                ctx,
                queue_item_id,
                409,
                "Another supervisor has already acted on this case; nothing was changed.",
            )
        task = BackgroundTask(self._deliver, self.rt.on_outcome, done.decision_id)
        query = urlencode({"notice": "case_done", "done": queue_item_id})
        return RedirectResponse(f"{PREFIX}/queue?{query}", status_code=303, background=task)

    @staticmethod
    async def _deliver(hook: OutcomeHook, decision_id: str) -> None:
        try:
            await hook(decision_id)
        except Exception:
            log.exception("on_outcome hook failed for decision %s", decision_id)
