"""Audit items: a sampled decision that was sent (send, follow-up), marked right or wrong by a
supervisor with one key (``y``/``n``) and an optional corrected grade. The customer already had
the reply; the mark only measures the guard (the outcomes page, calibration, the webhook)."""

from __future__ import annotations

import logging

from starlette.background import BackgroundTask
from starlette.responses import RedirectResponse, Response

from guard.admin import charts
from guard.admin.base import PREFIX, Ctx, Pages
from guard.admin.records import Case
from guard.followups import case_ref
from guard.runtime import OutcomeHook
from guard.tables import AUDIT_GRADES, AUDIT_VERDICTS, utcnow

log = logging.getLogger(__name__)


class AuditViews(Pages):
    """The audit item page and marking it."""

    async def audit_view(
        self, ctx: Ctx, case: Case, status: int = 200, message: str | None = None
    ) -> Response:
        decision = case.decision
        policy = await self._policy_of(decision.policy_channel, decision.policy_version)
        next_id = await self.db(self.queries.next_audit, case.item.id)
        last = len(policy.bands) - 1
        sample = next(
            (b.audit_rate for i, b in enumerate(policy.bands) if b.label(top=i == last) == decision.band),
            None,
        )
        return self.render(
            ctx.request,
            "audit_case.html",
            ctx.user,
            status,
            case=case,
            policy=policy,
            bar=charts.score_bar(policy, decision.score, decision.band),
            case_ref=case_ref(decision.id),
            waiting_s=case.waiting_s(utcnow()),
            grades=AUDIT_GRADES,
            sample=sample,
            next_id=next_id,
            message=message,
        )

    async def mark(self, ctx: Ctx) -> Response:
        queue_item_id = ctx.request.path_params["queue_item_id"]
        case = await self.db(self.queries.case, queue_item_id)
        if case is None or case.item.kind != "audit":
            return self.error(ctx.request, ctx.user, 404, "There is no such audit item.")
        verdict = str(ctx.form.get("verdict") or "")
        if verdict not in AUDIT_VERDICTS:
            return await self.audit_view(ctx, case, 422, "Mark the reply right (y) or wrong (n).")
        raw = str(ctx.form.get("grade") or "").strip()
        grade: int | None = None
        if raw:
            if raw not in ("0", "1", "2"):
                return await self.audit_view(ctx, case, 422, f"Unknown grade {raw!r}.")
            grade = int(raw)
        note = str(ctx.form.get("note") or "").strip()[:2000] or None
        done = await self.db(self.queries.mark_audit, queue_item_id, verdict, grade, ctx.user.username, note)
        if done is None:
            return await self.audit_view(
                ctx, case, 409, "This audit item is already marked; nothing was changed."
            )
        task = BackgroundTask(_deliver, self.rt.on_outcome, done.decision_id)
        next_id = await self.db(self.queries.next_audit, queue_item_id)
        target = f"{PREFIX}/cases/{next_id}" if next_id else f"{PREFIX}/queue"
        return RedirectResponse(f"{target}?notice=audit_done", status_code=303, background=task)


async def _deliver(hook: OutcomeHook, decision_id: str) -> None:
    try:
        await hook(decision_id)
    except Exception:
        log.exception("on_outcome hook failed for decision %s", decision_id)
