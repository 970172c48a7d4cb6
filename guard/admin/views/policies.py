"""The policy owners' pages: policies, editing with a preview, samples, rollback, outcomes."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import yaml
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from guard.admin import charts, traffic
from guard.admin.base import PREFIX, Ctx, Pages
from guard.admin.forms import (
    MAX_BANDS,
    TEMPLATE_LABELS,
    PolicyForm,
    field_name,
    render_samples,
    valid_channel,
)
from guard.policies import TEMPLATE_KEYS, Policy, policy_document
from guard.tables import utcnow


def policy_diff(older: Mapping[str, Any] | None, newer: Mapping[str, Any]) -> list[str]:
    def dump(doc: Mapping[str, Any] | None) -> list[str]:
        if doc is None:
            return []
        return yaml.safe_dump(dict(doc), allow_unicode=True, sort_keys=False).splitlines()

    if older is None:
        return []  # the first version: nothing to compare with
    return list(difflib.unified_diff(dump(older), dump(newer), "before", "after", lineterm="", n=1))[2:]


class PolicyViews(Pages):
    """Policies and their outcomes."""

    async def policies(self, ctx: Ctx) -> Response:
        wanted = ctx.request.query_params.get("channel")
        if wanted is not None:
            if valid_channel(wanted):
                return RedirectResponse(f"{PREFIX}/policies/{wanted}", status_code=303)
            return self.error(ctx.request, ctx.user, 422, "A channel name is 1-100 letters, digits or _ . -")
        channels = await self.db(self.queries.policy_channels)
        rows = []
        for channel in channels:
            history = await self.db(self.rt.store.policy_versions, channel, newest_first=True)
            rows.append({"channel": channel, "latest": history[0] if history else None})
        return self.render(ctx.request, "policies.html", ctx.user, rows=rows)

    async def policy(self, ctx: Ctx) -> Response:
        channel = ctx.request.path_params["channel"]
        if not valid_channel(channel):
            return self.error(ctx.request, ctx.user, 404, "No such channel.")
        current, own = await self.in_force(channel)
        form = PolicyForm.from_policy(channel, current)
        if ctx.request.method == "POST":
            form = PolicyForm.from_form(channel, ctx.form, self.messages())
            op = ctx.form.get("op")
            if op == "publish" and form.policy is not None:
                if own and policy_document(form.policy) == policy_document(current):
                    return self._redirect_policy(channel, "unchanged")
                await self.db(self.queries.publish_policy_audited, form.policy, ctx.user.username)
                self._invalidate()
                return self._redirect_policy(channel, "published")
        status = 422 if form.problems else 200
        return await self._policy_page(ctx, channel, form, current, own, status)

    def _redirect_policy(self, channel: str, notice: str) -> Response:
        return RedirectResponse(f"{PREFIX}/policies/{channel}?notice={notice}", status_code=303)

    def _invalidate(self) -> None:
        self.rt.pipeline.policies.invalidate()

    async def _policy_page(
        self, ctx: Ctx, channel: str, form: PolicyForm, current: Policy, own: bool, status: int
    ) -> Response:
        key = str(ctx.form.get("window") or ctx.request.query_params.get("window") or "24h")
        preview = await self._preview(channel, form, current, key)
        versions = await self.db(self.rt.store.policy_versions, channel, newest_first=True)
        history = [
            (entry, policy_diff(versions[i + 1].document if i + 1 < len(versions) else None, entry.document))
            for i, entry in enumerate(versions)
        ]
        bands = list(form.bands) + [("", "", "")] * (MAX_BANDS - len(form.bands))
        settings = self.rt.settings
        samples = render_samples(
            form,
            self.messages(),
            settings.response_times(),
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
            windows=list(traffic.WINDOWS),
        )

    async def _preview(self, channel: str, form: PolicyForm, current: Policy, key: str) -> dict[str, Any]:
        key, span = traffic.window(key)
        rows = await self.db(self.queries.replay_rows, channel, utcnow() - span)
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
        current, _own = await self.in_force(channel)
        form = PolicyForm.from_form(channel, ctx.form, self.messages())
        preview = await self._preview(channel, form, current, str(ctx.form.get("window") or "24h"))
        html = self.env.get_template("_preview.html").render(preview=preview)
        return HTMLResponse(html, status_code=200)

    async def samples(self, ctx: Ctx) -> Response:
        channel = ctx.request.path_params["channel"]
        form = PolicyForm.from_form(
            channel if valid_channel(channel) else "default", ctx.form, self.messages()
        )
        settings = self.rt.settings
        rendered = render_samples(
            form,
            self.messages(),
            settings.response_times(),
        )
        return JSONResponse({"samples": rendered, "problems": form.problems})

    async def rollback(self, ctx: Ctx) -> Response:
        channel = ctx.request.path_params["channel"]
        try:
            version = int(str(ctx.form.get("version")))
        except ValueError:
            version = 0
        old = await self.db(self.queries.policy_at, channel, version) if valid_channel(channel) else None
        if old is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such policy version.")
        await self.db(self.queries.publish_policy_audited, old, ctx.user.username, "policy.rollback")
        self._invalidate()
        return self._redirect_policy(channel, "rolled_back")

    async def outcomes(self, ctx: Ctx) -> Response:
        key, span = traffic.window(ctx.request.query_params.get("window"), "30d")
        rows = await self.db(self.queries.outcome_rows, None, utcnow() - span)
        return self.render(
            ctx.request,
            "outcomes.html",
            ctx.user,
            groups=traffic.band_outcomes(rows),
            window=key,
            windows=list(traffic.WINDOWS),
            needs_human=traffic.OUTCOME_NEEDS_HUMAN,
        )
