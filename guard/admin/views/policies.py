"""The policy owners' pages: policies, editing with a preview, samples, rollback, outcomes."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from guard.admin import charts, diffs, traffic
from guard.admin.base import PREFIX, Ctx, Pages
from guard.admin.forms import (
    TEMPLATE_LABELS,
    PolicyForm,
    band_op,
    field_name,
    render_samples,
    valid_channel,
)
from guard.admin.records import ReplayRow
from guard.pipeline import decide_case
from guard.policies import DEFAULT_AUDIT_SAMPLE, TEMPLATE_KEYS, Policy, policy_document
from guard.tables import utcnow

MAX_NOTE_CHARS = 1000


def policy_digest(policy: Policy) -> str:
    """A fingerprint of what would be published: the confirmation is for this policy and no other."""
    doc = json.dumps(policy_document(policy), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def move_summary(replay: traffic.Replay, window: str) -> str:
    """What publishing would change on logged traffic, in one sentence:
    "9 cases move from review to escalate; 2 from send to follow-up (of 120 decisions logged)"."""
    labels = charts.ACTION_LABELS
    if not replay.total:
        return f"no decision was logged in the last {window}, so nothing can be compared."
    if not replay.changed:
        return f"none of the {replay.total} decisions logged would be decided differently."
    parts = []
    for k, (a, b, n) in enumerate(replay.transitions):
        noun = ("case moves" if n == 1 else "cases move") if k == 0 else ""
        parts.append(f"{n} {noun + ' ' if noun else ''}from {labels[a]} to {labels[b]}")
    return "; ".join(parts) + f" (of {replay.total} decisions logged)."


def as_decided(rows: Sequence[ReplayRow], policy: Policy) -> list[ReplayRow]:
    """The logged decisions with the action ``policy`` gives them (a replay of these under a draft
    counts what publishing the draft changes, whatever policy made the recorded decisions)."""
    out = []
    for row in rows:
        score = float(row.score) if row.score is not None and math.isfinite(row.score) else None
        out.append(replace(row, action=decide_case(policy, score, row.uncertain_reason).action))
    return out


def note_problem(note: str) -> str | None:
    if not note:
        return "Write a change note: why this change? It is kept with the version and in the audit log."
    if len(note) > MAX_NOTE_CHARS:
        return f"The change note is {len(note):,} characters; the limit is {MAX_NOTE_CHARS:,}."
    return None


def _change_note(ctx: Ctx) -> tuple[str, str | None]:
    """The change note a confirmation form carries, and what is wrong with it (None: nothing)."""
    note = str(ctx.form.get("change_note") or "").strip()
    return note, note_problem(note)


class PolicyViews(Pages):
    """Policies and their outcomes."""

    async def policies(self, ctx: Ctx) -> Response:
        if (search := self.channel_search(ctx, "policies")) is not None:
            return search
        channels = await self.db(self.queries.policy_channels)
        rows = []
        for channel in channels:
            history = await self.db(self.rt.store.policy_versions, channel, newest_first=True)
            rows.append({"channel": channel, "latest": history[0] if history else None})
        return self.render(ctx.request, "policies.html", ctx.user, rows=rows)

    async def policy(self, ctx: Ctx) -> Response:
        channel = self.channel_of(ctx)
        current, own = await self.in_force(channel)
        form = PolicyForm.from_policy(channel, current)
        if ctx.request.method != "POST":
            return await self._policy_page(ctx, channel, form, current, own, 200)
        form = PolicyForm.from_form(channel, ctx.form, self.messages())
        op = str(ctx.form.get("op") or "")
        edit = band_op(op)
        if edit is not None:  # a band's Split / Merge / Remove button: edit the draft, publish nothing
            message = form.edit_bands(*edit)
            form.validate(self.messages())
            return await self._policy_page(ctx, channel, form, current, own, 200, band_message=message)
        confirm: dict[str, Any] | None = None
        if op in ("publish", "confirm_publish") and form.policy is not None:
            if own and policy_document(form.policy) == policy_document(current):
                return self._redirect_policy(channel, "unchanged")
            confirm = {"kind": "publish", "note": "", "error": None}
            if op == "confirm_publish":
                note, problem = _change_note(ctx)
                if ctx.form.get("confirm_digest") != policy_digest(form.policy):
                    problem = "The draft changed after you asked to publish it: check the summary again."
                if problem is None:
                    return await self._publish(ctx, form, current, form.policy, note, "published")
                confirm.update(note=note, error=problem)
        status = 422 if form.problems or (confirm and confirm["error"]) else 200
        return await self._policy_page(ctx, channel, form, current, own, status, confirm=confirm)

    async def _publish(
        self,
        ctx: Ctx,
        form: PolicyForm,
        current: Policy,
        policy: Policy,
        note: str,
        notice: str,
        *,
        action: str = "policy.publish",
        rollback_of: int | None = None,
    ) -> Response:
        """Publish ``policy`` (what ``form`` shows) over ``current`` with its change note and the
        preview's summary of what it moves, audited as ``action``; back to the policy page, which
        says ``notice``."""
        preview = await self._preview(policy.channel, form, current, self._window(ctx))
        await self.db(
            self.queries.publish_policy_audited,
            policy,
            ctx.user.username,
            action,
            note=note,
            summary=move_summary(preview["moves"], preview["window"]),
            rollback_of=rollback_of,
        )
        self._invalidate()
        return self._redirect_policy(policy.channel, notice)

    def _window(self, ctx: Ctx) -> str:
        return str(ctx.form.get("window") or ctx.request.query_params.get("window") or "24h")

    def _redirect_policy(self, channel: str, notice: str) -> Response:
        return RedirectResponse(f"{PREFIX}/policies/{channel}?notice={notice}", status_code=303)

    def _invalidate(self) -> None:
        self.rt.pipeline.policies.invalidate()

    async def _policy_page(
        self,
        ctx: Ctx,
        channel: str,
        form: PolicyForm,
        current: Policy,
        own: bool,
        status: int,
        *,
        confirm: dict[str, Any] | None = None,
        band_message: str | None = None,
    ) -> Response:
        preview = await self._preview(channel, form, current, self._window(ctx))
        versions = await self.db(self.rt.store.policy_versions, channel, newest_first=True)
        history = [
            {
                "version": entry,
                "first": i + 1 == len(versions),
                "changes": diffs.policy_changes(versions[i + 1].document, entry.document)
                if i + 1 < len(versions)
                else [],
            }
            for i, entry in enumerate(versions)
        ]
        if confirm is not None:
            target = form.policy if confirm["kind"] == "publish" else confirm["policy"]
            assert isinstance(target, Policy), "a confirmation is for a valid policy"
            before = policy_document(current) if own else None
            confirm = {
                **confirm,
                "next_version": (versions[0].version if versions else 0) + 1,
                "summary": move_summary(preview["moves"], preview["window"]),
                "changes": diffs.policy_changes(before, policy_document(target)) if before else [],
                "digest": policy_digest(target),
            }
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
            rows=form.rows,
            own=own,
            current=current,
            history=history,
            preview=preview,
            samples=samples,
            confirm=confirm,
            band_message=band_message,
            max_note=MAX_NOTE_CHARS,
            template_keys=TEMPLATE_KEYS,
            template_labels=TEMPLATE_LABELS,
            field_name=field_name,
            windows=list(traffic.WINDOWS),
            audit_defaults=DEFAULT_AUDIT_SAMPLE,
        )

    async def _preview(self, channel: str, form: PolicyForm, current: Policy, key: str) -> dict[str, Any]:
        key, span = traffic.window(key)
        rows = await self.db(self.queries.replay_rows, channel, utcnow() - span)
        draft = form.policy
        result = traffic.replay(rows, draft if draft is not None else current)
        old = traffic.replay(rows, current)  # the recorded actions may predate the policy in force
        return {
            "moves": traffic.replay(as_decided(rows, current), draft if draft is not None else current),
            "window": key,
            "valid": draft is not None,
            "problems": form.problems,
            "bad_rows": sorted(form.bad_rows),
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
        channel = self.channel_of(ctx)
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
        """Roll back to an old version: first the editor with that version, its preview and a
        confirmation asking for a change note; on confirmation the stored version is published again
        as a new version, labelled a rollback."""
        channel = ctx.request.path_params["channel"]
        try:
            version = int(str(ctx.form.get("version")))
        except ValueError:
            version = 0
        old = await self.db(self.queries.policy_at, channel, version) if valid_channel(channel) else None
        if old is None:
            return self.error(ctx.request, ctx.user, 404, "There is no such policy version.")
        current, own = await self.in_force(channel)
        form = PolicyForm.from_policy(channel, old)
        note, problem = "", None
        if ctx.form.get("op") == "confirm_rollback":
            note, problem = _change_note(ctx)
            if problem is None:
                return await self._publish(
                    ctx,
                    form,
                    current,
                    old,
                    note,
                    "rolled_back",
                    action="policy.rollback",
                    rollback_of=version,
                )
        confirm = {"kind": "rollback", "version": version, "policy": old, "note": note, "error": problem}
        return await self._policy_page(
            ctx, channel, form, current, own, 422 if problem else 200, confirm=confirm
        )

    async def outcomes(self, ctx: Ctx) -> Response:
        q = ctx.request.query_params
        key, span = traffic.window(q.get("window"), "30d")
        wanted = q.get("channel") or ""
        since = utcnow() - span
        rows = await self.db(self.queries.outcome_rows, None, since)
        per_day = await self.db(self.queries.answered_per_day, since)
        channels = sorted({r.channel for r in rows} | {c for _, c, _, _ in per_day})
        channel = wanted if wanted in channels else ""
        groups = traffic.band_outcomes(rows)
        days = traffic.wrong_send_days(rows, per_day, channel)
        chart = charts.rate_per_day(
            [
                (
                    d.day,
                    d.share,
                    d.interval,
                    f"{d.day}: {d.wrong} of {d.audited} audited sends wrong; "
                    f"{d.sends} of {d.decisions} customers got a send",
                )
                for d in days
            ],
            title="share of customers who got a wrong send, per day",
        )
        return self.render(
            ctx.request,
            "outcomes.html",
            ctx.user,
            groups=[g for g in groups if not channel or g.channel == channel],
            days=days,
            wrong_chart=chart,
            window=key,
            windows=list(traffic.WINDOWS),
            channel=channel,
            channels=channels,
            needs_human=traffic.OUTCOME_NEEDS_HUMAN,
        )
