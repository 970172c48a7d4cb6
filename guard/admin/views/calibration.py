"""The policy owners' calibration pages: fit a channel's score map on its labels, preview the
draft on logged traffic, publish it as the channel's next version, roll back or switch it off."""

from __future__ import annotations

from typing import Any

from starlette.responses import RedirectResponse, Response

from guard.admin import charts, traffic
from guard.admin.base import PREFIX, Ctx, Pages
from guard.admin.calibrate import fit_from_labels, preview_map
from guard.admin.records import ScoreMapRecord
from guard.calibration import FitReport, draft_map, parse_channel_map
from guard.tables import utcnow


class CalibrationViews(Pages):
    """/admin/calibration and /admin/calibration/{channel}."""

    async def calibration_index(self, ctx: Ctx) -> Response:
        if (search := self.channel_search(ctx, "calibration")) is not None:
            return search
        rows = await self.db(self.queries.outcome_rows, None)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.channel] = counts.get(r.channel, 0) + 1
        mapped = await self.db(self.queries.score_map_channels)
        channels = sorted(set(counts) | set(mapped))
        return self.render(ctx.request, "calibration_index.html", ctx.user, channels=channels, counts=counts)

    async def calibration(self, ctx: Ctx, status: int = 200, message: str | None = None) -> Response:
        channel = self.channel_of(ctx)
        history = await self.db(self.queries.score_map_history, channel)
        drafts = [h for h in history if h.state == "draft"]
        published = [h for h in history if h.state == "published"]
        draft = drafts[0] if drafts else None
        current = await self.db(self.rt.store.active_score_map, channel)
        maps = await self.db(self.rt.store.score_maps, channel)
        policy, _own = await self.in_force(channel)
        key, span = traffic.window(ctx.request.query_params.get("window"), "7d")
        preview: dict[str, Any] | None = None
        if draft is not None and draft.document is not None:
            rows = await self.db(self.queries.calibration_rows, channel, utcnow() - span)
            result = preview_map(rows, maps, current, draft_map(channel, draft.document), policy)
            preview = {
                "result": result,
                "chart": charts.paired_bars(result.old_counts, result.new_counts),
            }
        report = FitReport(**_report_fields(draft.report)) if draft is not None and draft.report else None
        return self.render(
            ctx.request,
            "calibration.html",
            ctx.user,
            status,
            channel=channel,
            current=current,
            current_row=published[0] if published else None,
            draft=draft,
            draft_map=draft_map(channel, draft.document) if draft and draft.document else None,
            report=report,
            rate=FitReport.rate,
            preview=preview,
            published=published,
            policy=policy,
            window=key,
            windows=list(traffic.WINDOWS),
            message=message,
            fit_message=ctx.request.query_params.get("fit") or None,
            describe=_describe,
        )

    async def calibration_fit(self, ctx: Ctx) -> Response:
        channel = self.channel_of(ctx)
        fit, _draft_id = await self.db(
            fit_from_labels, self.rt.store, self.queries, channel, ctx.user.username
        )
        if not fit.report.fitted:
            return await self.calibration(ctx, 422, fit.report.message)
        return RedirectResponse(f"{PREFIX}/calibration/{channel}?notice=map_drafted", status_code=303)

    async def calibration_publish(self, ctx: Ctx) -> Response:
        channel = self.channel_of(ctx)
        op = str(ctx.form.get("op") or "")
        note = str(ctx.form.get("note") or "").strip()[:2000] or None
        try:
            number = int(str(ctx.form.get("id") or ctx.form.get("version") or ""))
        except ValueError:
            number = -1
        user = ctx.user.username
        if op == "publish":
            version = await self.db(self.queries.publish_score_map, channel, user, draft_id=number, note=note)
            notice = "map_published"
        elif op == "rollback" and number >= 0:
            version = await self.db(
                self.queries.publish_score_map, channel, user, from_version=number, note=note
            )
            notice = "map_rolled_back" if number else "map_off"
        elif op == "discard":
            done = await self.db(self.queries.discard_score_map_draft, channel, number, user)
            version = 0 if done else None
            notice = "map_discarded"
        else:
            return await self.calibration(ctx, 422, f"Unknown action {op!r}.")
        if version is None:
            return await self.calibration(ctx, 409, "There is no such draft or version; nothing was changed.")
        self.rt.pipeline.calibrations.invalidate()
        return RedirectResponse(f"{PREFIX}/calibration/{channel}?notice={notice}", status_code=303)


def _report_fields(report: Any) -> dict[str, Any]:
    d = dict(report)
    d["before"] = tuple(d.get("before") or (0, 0))
    d["after"] = tuple(d.get("after") or (0, 0))
    d["grades"] = dict(d.get("grades") or {})
    return {k: d[k] for k in FitReport.__dataclass_fields__ if k in d}


def _describe(row: ScoreMapRecord) -> str:
    """One line for a version: its curve, or 'no map'."""
    if row.document is None:
        return "no map: scores as the scorer gives them"
    m = parse_channel_map(row.channel, row.version or 0, row.document)
    w, b = m.weights
    points = ", ".join(f"{x:g}→{m.apply(x):.2f}" for x in (0.2, 0.45, 0.6, 0.8))
    return f"sigmoid({w:.3f}·logit(s) {'+' if b >= 0 else '−'} {abs(b):.3f}): {points}"
