"""The playground: score and re-rank draft replies like the seed tool did, under a channel's policy.

A supervisor, policy owner or admin enters a question, a photo (uploaded, or a queued case's) and one
reply or several separated by a line with ``---``. **Score** puts one reply on the channel's bands;
**Re-rank** orders several exactly as ``POST /v1/rerank`` does. The instruction box starts with the
channel's instruction; when it is edited, the scores under both are shown side by side. A policy owner
can bring a draft policy over from the editor and use its bands and templates.

Nothing here writes a decision or changes a policy: scores come from ``Pipeline.score_texts`` (the
channel's score map in force applied, as in a live check; the score cache, then the scorer in its
worker thread, off the event loop) and verdicts from the pure
``decide`` (through ``decide_case``: a photo that carries an unstated issue makes the case uncertain,
as in the pipeline). Large batches are scored in chunks so that a script can show progress (a stream of
NDJSON lines, see ``static/playground.js``); without the script the form posts and the page comes
back when everything is scored.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from starlette.datastructures import UploadFile
from starlette.responses import HTMLResponse, Response, StreamingResponse

from guard.admin import charts
from guard.admin.base import Ctx, Pages
from guard.admin.forms import SAMPLE_CASE_REF, PolicyForm, field_name, valid_channel
from guard.admin.headers import CSP
from guard.admin.records import QueueFilter
from guard.errors import ImageError, Unavailable
from guard.followups import MessageContext, Messages, case_ref, template_problems
from guard.images import DecodedImage, decode_base64
from guard.pipeline import CaseReading, Pipeline, Scored, Shown, compose, decide_case, uncertainty
from guard.policies import (
    TEMPLATE_KEYS,
    Policy,
    PolicyDecision,
    PolicyError,
    parse_policy,
    policy_document,
)

if TYPE_CHECKING:
    from guard.settings import Settings

log = logging.getLogger(__name__)

MAX_REPLIES = 50
"""Replies one Score or Re-rank takes (POST /v1/rerank takes up to 64 documents)."""
MAX_INSTRUCTION_CHARS = 2000
"""As POST /v1/rerank."""
CHUNK = 10
"""Replies scored per step; the progress indication moves once per step."""
SEPARATOR = re.compile(r"^[ \t]*-{3,}[ \t]*$", re.MULTILINE)
LOCALES = ("auto", "zh", "en")
STREAM_HEADER = "x-playground-stream"
PAGE_CSP = CSP.replace("img-src 'self'", "img-src 'self' data:")
"""The admin CSP, plus data: images so the page can show the uploaded photo it carries."""

Op = Literal["score", "rerank"]
IMAGE_TEXT_LABELS = {
    "empty": "none: the photo holds no text the reader could find",
    "timeout": "not read in time (GUARD_OCR_BUDGET_S ran out): scored without it, as a live check would be",
    "busy": "not read: too many photos were being read at once; scored without it, as a live check would be",
    "error": "not read: the text reader failed (logged); scored without it, as a live check would be",
    "off": "not read: reading text in photos is off (GUARD_OCR=off)",
}
"""Why no text from the photo was used, by guard/ocr.py ``Status``."""


def split_replies(text: str) -> list[str]:
    """The blocks of ``text`` between lines holding only ``---``, stripped. Empty blocks before the
    first and after the last reply are dropped; an empty block between two replies stays (as "")."""
    blocks = [b.strip() for b in SEPARATOR.split(text.replace("\r\n", "\n"))]
    while blocks and not blocks[-1]:
        blocks.pop()
    while blocks and not blocks[0]:
        blocks.pop(0)
    return blocks


def rank_order(scores: Sequence[float | None]) -> list[int]:
    """Indices, best first: the ordering of POST /v1/rerank (no score counts as 0; ties keep the
    order the replies were given in)."""
    return sorted(range(len(scores)), key=lambda i: scores[i] or 0.0, reverse=True)


def editor_fields(policy: Policy, instruction: str) -> list[tuple[str, str]]:
    """The policy editor's fields for ``policy`` with ``instruction`` in place of its own: a form that
    opens the editor with the instruction copied in (nothing is published until the owner does)."""
    fields: list[tuple[str, str]] = []
    for i, b in enumerate(policy.bands):
        fields += [(f"band_lo_{i}", f"{b.lo:g}"), (f"band_hi_{i}", f"{b.hi:g}")]
        fields.append((f"band_action_{i}", b.action))
    fields += [("on_error", policy.on_error), ("uncertain_action", policy.uncertain_action)]
    fields += [("instruction", instruction), ("op", "preview")]
    fields += [(field_name(k), policy.templates.get(k, "")) for k in TEMPLATE_KEYS]
    return fields


@dataclass
class TrialForm:
    """The form as typed, so that a page with errors comes back as it was sent."""

    channel: str = "default"
    question: str = ""
    replies: str = ""
    instruction: str = ""
    locale: str = "auto"
    case_id: str = ""
    photo_data: str = ""
    """Base64 of the last photo uploaded and accepted, carried from one post to the next."""
    draft: str = ""
    """A draft policy from the editor, as its JSON document."""
    use_draft: bool = False
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Trial:
    """A valid request to score."""

    op: Op
    question: str
    image: DecodedImage | None
    replies: tuple[str, ...]
    instruction: str
    channel_instruction: str
    policy: Policy
    draft: bool
    locale: str | None
    channel: str = "default"
    """The channel tried: its score map (guard/calibration.py) applies, as in a live check."""

    @property
    def compare(self) -> bool:
        return self.instruction != self.channel_instruction


@dataclass(frozen=True)
class Row:
    rank: int
    index: int
    reply: str
    score: float | None
    verdict: PolicyDecision
    follow_up: str | None
    holding: str | None
    inputs_used: tuple[str, ...]
    bar: charts.Chart
    best: bool
    base_score: float | None = None
    """The score under the channel's instruction, when the instruction was edited."""
    base_verdict: PolicyDecision | None = None
    base_rank: int | None = None


@dataclass(frozen=True)
class Result:
    op: Op
    rows: tuple[Row, ...]
    compare: bool
    instruction: str
    channel_instruction: str
    policy: Policy
    draft: bool
    locale: str
    issue: str | None
    failed: bool
    inputs_used: tuple[str, ...]
    instruction_used: bool
    """The scorer read the instruction for some reply; when False, no instruction can change a score."""
    had_photo: bool
    image_text: str | None
    """The text read from the photo (None: none read; see ``image_text_status``)."""
    image_text_status: str | None
    """How the photo's text was obtained (guard/ocr.py ``Status``); None without a photo."""
    bar: charts.Chart | None
    """The full score bar of a single reply (Score)."""
    customer_reply: str | None


class Run:
    """Scores a trial in chunks of CHUNK replies; ``steps`` yields how many are done."""

    def __init__(self, guard: Pipeline, trial: Trial) -> None:
        self.guard = guard
        self.trial = trial
        self.instructions = [trial.instruction] + ([trial.channel_instruction] if trial.compare else [])
        self.total = len(trial.replies) * len(self.instructions)
        self.scored: list[list[Scored]] = []
        self.failed = False
        self.reading: CaseReading | None = None

    async def steps(self) -> AsyncIterator[int]:
        t = self.trial
        done = 0
        # The photo's text first, as a live check reads it: the same OCR service, cache and budget.
        if t.image is not None:
            self.guard.start_reading(t.image)
        self.reading = reading = await self.guard.read_case(t.question, t.image, t.locale)
        # The channel's score map in force, as a live check on the channel applies it.
        calibration = await self.guard.calibrations.get(t.channel)
        for instruction in self.instructions:
            out: list[Scored] = []
            for start in range(0, len(t.replies), CHUNK):
                part = t.replies[start : start + CHUNK]
                scored, failed = await self.guard.score_texts(
                    t.question,
                    t.image,
                    part,
                    instruction,
                    t.locale,
                    image_text=reading.image_text,
                    calibration=calibration,
                )
                self.failed = self.failed or failed
                out.extend(scored)
                done += len(part)
                yield done
            self.scored.append(out)

    async def finish(self) -> None:
        async for _ in self.steps():
            pass


def build_result(trial: Trial, run: Run, messages: Messages, response_time: Mapping[str, str]) -> Result:
    """Rows in ranking order with their verdicts and messages. Pure apart from template rendering."""
    policy = trial.policy
    has_photo = trial.image is not None
    assert run.reading is not None, "build_result runs after the run's steps"
    issue = run.reading.issue
    locale = issue.locale
    ctx = MessageContext(locale, issue.phrase, SAMPLE_CASE_REF, response_time[locale])

    def judge(s: Scored) -> PolicyDecision:
        doubt = uncertainty(issue, has_photo=has_photo, inputs_used=s.inputs_used)
        return decide_case(policy, s.score, doubt)

    main = run.scored[0]
    base = run.scored[1] if trial.compare else None
    scores = [s.score for s in main]
    order = rank_order(scores)
    base_rank = {i: r for r, i in enumerate(rank_order([s.score for s in base]), 1)} if base else {}
    rows = []
    shown_in_order: list[Shown] = []
    for rank, i in enumerate(order, 1):
        s = main[i]
        verdict = judge(s)
        shown = compose(verdict.action, s.reply, ctx, messages, policy)
        shown_in_order.append(shown)
        rows.append(
            Row(
                rank=rank,
                index=i,
                reply=s.reply,
                score=s.score,
                verdict=verdict,
                follow_up=shown.follow_up,
                holding=shown.holding,
                inputs_used=s.inputs_used,
                bar=charts.mini_bar(policy, s.score),
                best=rank == 1 and len(order) > 1,
                base_score=base[i].score if base else None,
                base_verdict=judge(base[i]) if base else None,
                base_rank=base_rank.get(i),
            )
        )
    used: list[str] = []
    for s in main:
        used += [x for x in s.inputs_used if x not in used]
    top = rows[0]
    customer_reply = shown_in_order[0].text if trial.op == "score" else None
    return Result(
        op=trial.op,
        rows=tuple(rows),
        compare=trial.compare,
        instruction=trial.instruction,
        channel_instruction=trial.channel_instruction,
        policy=policy,
        draft=trial.draft,
        locale=locale,
        issue=issue.phrase,
        failed=run.failed,
        inputs_used=tuple(used),
        instruction_used=any(s.instruction_used for s in main),
        had_photo=trial.image is not None,
        image_text=run.reading.image_text,
        image_text_status=run.reading.photo.status if run.reading.photo is not None else None,
        bar=charts.score_bar(policy, top.score, top.verdict.band) if trial.op == "score" else None,
        customer_reply=customer_reply,
    )


def _text(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.replace("\r\n", "\n") if isinstance(value, str) else ""


class Playground:
    """The playground page of one admin: GET shows the form, POST scores."""

    def __init__(self, admin: Pages) -> None:
        self.admin = admin

    @property
    def settings(self) -> Settings:
        return self.admin.rt.settings

    async def page(self, ctx: Ctx) -> Response:
        if ctx.request.method == "GET":
            return await self._show(ctx, await self._from_query(ctx), None, 200)
        op = str(ctx.form.get("op") or "")
        if op == "draft":
            return await self._show(ctx, await self._from_editor(ctx), None, 200)
        if op not in ("score", "rerank"):
            form = TrialForm(channel=_text(ctx.form, "channel") or "default")
            form.errors["op"] = "Press Score or Re-rank."
            return await self._show(ctx, form, None, 422)
        form, trial = await self._validate(ctx, "score" if op == "score" else "rerank")
        if trial is None:
            return await self._show(ctx, form, None, 422)
        run = Run(self.admin.rt.pipeline, trial)
        if ctx.request.headers.get(STREAM_HEADER) == "1":
            return StreamingResponse(
                self._stream(ctx, form, trial, run),
                media_type="application/x-ndjson",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        await run.finish()
        return await self._show(ctx, form, self._result(trial, run), 200)

    async def _stream(self, ctx: Ctx, form: TrialForm, trial: Trial, run: Run) -> AsyncIterator[bytes]:
        def line(doc: dict[str, Any]) -> bytes:
            return (json.dumps(doc, ensure_ascii=False) + "\n").encode()

        yield line({"progress": [0, run.total]})
        try:
            async for done in run.steps():
                yield line({"progress": [done, run.total]})
            html = await self._html(ctx, form, self._result(trial, run))
        except Exception:
            log.exception("playground scoring failed")
            yield line({"error": "Scoring failed; the error is logged. Try again."})
            return
        yield line({"html": html})

    def _result(self, trial: Trial, run: Run) -> Result:
        return build_result(trial, run, self.admin.messages(), self.settings.response_times())

    # Input ----------------------------------------------------------------------------------------

    async def _from_query(self, ctx: Ctx) -> TrialForm:
        """An empty form, or (``?case=<id>``, for the queue's roles) one filled from a case."""
        q = ctx.request.query_params
        channel = q.get("channel") or "default"
        form = TrialForm(channel=channel if valid_channel(channel) else "default")
        item = q.get("case")
        if item and ctx.user.may("queue"):
            case = await self.admin.db(self.admin.queries.case, item)
            if case is not None:
                form.channel = case.item.channel if valid_channel(case.item.channel) else "default"
                form.question = case.decision.question or ""
                form.replies = case.decision.draft or ""
                form.case_id = item if case.decision.image_sha256 else ""
        published, _own = await self.admin.in_force(form.channel)
        form.instruction = published.instruction
        return form

    async def _from_editor(self, ctx: Ctx) -> TrialForm:
        """The policy editor's "Try in the playground": its draft comes along in a hidden field."""
        channel = ctx.request.query_params.get("channel") or _text(ctx.form, "channel") or "default"
        form = TrialForm(channel=channel if valid_channel(channel) else "default")
        published, _own = await self.admin.in_force(form.channel)
        form.instruction = published.instruction
        if not ctx.user.may("policies"):
            form.errors["draft"] = "Only policy owners and admins may try a draft policy."
            return form
        draft = PolicyForm.from_form(form.channel, ctx.form, self.admin.messages())
        if draft.policy is None:
            form.errors["draft"] = "The draft is not valid, so the published policy is used: " + "; ".join(
                draft.problems
            )
            return form
        form.draft = json.dumps(policy_document(draft.policy), ensure_ascii=False)
        form.use_draft = True
        form.instruction = draft.policy.instruction
        return form

    async def _validate(self, ctx: Ctx, op: Op) -> tuple[TrialForm, Trial | None]:
        s = self.settings
        f = ctx.form
        form = TrialForm(
            channel=_text(f, "channel").strip() or "default",
            question=_text(f, "question"),
            replies=_text(f, "replies"),
            instruction=_text(f, "instruction"),
            locale=_text(f, "locale") if _text(f, "locale") in LOCALES else "auto",
            case_id=_text(f, "case_id").strip(),
            photo_data=_text(f, "photo_data").strip(),
            draft=_text(f, "draft"),
            use_draft=f.get("use_draft") == "on",
        )
        errors = form.errors
        if not valid_channel(form.channel):
            errors["channel"] = "A channel name is 1-100 letters, digits or _ . -"
            published, _own = await self.admin.in_force("default")
        else:
            published, _own = await self.admin.in_force(form.channel)

        # The instruction: empty or as prefilled means the channel's (so changing the channel brings its own).
        shown = _text(f, "channel_instruction")
        if not form.instruction.strip() or form.instruction == shown:
            form.instruction = published.instruction
        if len(form.instruction) > MAX_INSTRUCTION_CHARS:
            errors["instruction"] = (
                f"The instruction is {len(form.instruction):,} characters; "
                f"the limit is {MAX_INSTRUCTION_CHARS:,}."
            )

        policy, draft = published, False
        if form.use_draft:
            found = self._draft(ctx, form)
            if isinstance(found, str):
                errors["draft"] = found
            else:
                policy, draft = found, True

        if len(form.question) > s.max_question_chars:
            errors["question"] = (
                f"The question is {len(form.question):,} characters; the limit is {s.max_question_chars:,}."
            )

        replies = split_replies(form.replies)
        empty = [i for i, r in enumerate(replies, 1) if not r]
        long = [i for i, r in enumerate(replies, 1) if len(r) > s.max_reply_chars]
        if not replies:
            errors["replies"] = (
                "There is no reply to score: paste one, or several separated by a line with ---."
            )
        elif len(replies) > MAX_REPLIES:
            errors["replies"] = f"There are {len(replies)} replies; at most {MAX_REPLIES} are allowed."
        elif empty:
            errors["replies"] = f"Reply #{empty[0]} is empty: there is nothing between two --- lines."
        elif long:
            errors["replies"] = f"Reply #{long[0]} is over {s.max_reply_chars:,} characters."
        elif op == "score" and len(replies) > 1:
            errors["replies"] = (
                f"Score takes one reply and there are {len(replies)}; press Re-rank to order them."
            )

        image = await self._photo(ctx, form)
        if not form.question.strip() and image is None and "photo" not in errors and "case" not in errors:
            errors["question"] = "The question may be empty only when a photo is given."

        if errors:
            return form, None
        return form, Trial(
            op=op,
            question=form.question,
            image=image,
            replies=tuple(replies),
            instruction=form.instruction,
            channel_instruction=published.instruction,
            policy=policy,
            draft=draft,
            locale=None if form.locale == "auto" else form.locale,
            channel=form.channel,
        )

    def _draft(self, ctx: Ctx, form: TrialForm) -> Policy | str:
        """The draft policy carried in the form, or what is wrong with it."""
        if not ctx.user.may("policies"):
            return "Only policy owners and admins may try a draft policy."
        try:
            doc = json.loads(form.draft)
            policy = parse_policy(doc)
        except ValueError as exc:  # PolicyError is a ValueError, and so is a JSON error
            problems = exc.problems if isinstance(exc, PolicyError) else [str(exc)]
            return "The draft is not valid: " + "; ".join(problems)
        if policy.channel != form.channel:
            return f"The draft is for channel {policy.channel!r}: choose that channel, or untick the draft."
        problems = template_problems(policy.templates, self.admin.messages())
        return "The draft is not valid: " + "; ".join(problems) if problems else policy

    async def _photo(self, ctx: Ctx, form: TrialForm) -> DecodedImage | None:
        """The photo to score with: a new upload, else a case's from the queue, else the one carried
        over from the last post. Errors go to ``form.errors`` under "photo" or "case"."""
        s = self.settings
        upload = ctx.form.get("photo")
        if ctx.form.get("no_photo") == "on":
            form.photo_data = form.case_id = ""
            return None
        if isinstance(upload, UploadFile) and (upload.filename or upload.size):
            form.case_id = form.photo_data = ""
            data = await upload.read()
            image = await self._decode(form, data)
            if image is not None:
                form.photo_data = base64.b64encode(data).decode()
            return image
        if form.case_id:
            form.photo_data = ""
            if not ctx.user.may("queue"):
                form.errors["case"] = "Only supervisors and admins may use photos from the queue."
                return None
            case = await self.admin.db(self.admin.queries.case, form.case_id)
            sha = case.decision.image_sha256 if case else None
            found = await self.admin.db(self.admin.rt.store.get_image, sha) if sha else None
            if found is None:
                form.errors["case"] = "That case has no photo (or there is no such case)."
                return None
            return await self._decode(form, found[1], "case")
        if form.photo_data:
            try:
                data = decode_base64(form.photo_data, max_bytes=s.max_body_bytes)
            except (ImageError, binascii.Error) as exc:
                form.photo_data = ""
                form.errors["photo"] = exc.message if isinstance(exc, ImageError) else str(exc)
                return None
            image = await self._decode(form, data)
            if image is None:
                form.photo_data = ""
            return image
        return None

    async def _decode(self, form: TrialForm, data: bytes, key: str = "photo") -> DecodedImage | None:
        """The photo decoded as the check API decodes it: the guard's own bounded decoder pool,
        with its limits and deadline (never the default thread pool)."""
        try:
            return await self.admin.rt.pipeline.images.decode(data)
        except (ImageError, Unavailable) as exc:  # the API's own messages: too large, busy, ...
            form.errors[key] = exc.message
            return None

    # Output -----------------------------------------------------------------------------------------

    async def _context(self, ctx: Ctx, form: TrialForm, result: Result | None) -> dict[str, Any]:
        admin = self.admin
        queries = admin.queries
        published, own = await admin.in_force(form.channel)
        channels = await admin.db(queries.policy_channels)
        cases: list[dict[str, Any]] = []
        if ctx.user.may("queue"):
            items = await admin.db(queries.queue_page, QueueFilter(newest_first=True), limit=100)
            cases = [
                {
                    "id": it.item.id,
                    "ref": case_ref(it.decision.id),
                    "channel": it.item.channel,
                    "question": it.decision.question or "(photo only)",
                }
                for it in items
                if it.decision.image_sha256
            ][:50]
        photo: dict[str, str] | None = None  # {"src": data URL} or {"case": item id}
        if form.photo_data and "photo" not in form.errors:
            mime = _sniff_mime(form.photo_data)
            if mime is not None:
                photo = {"src": f"data:{mime};base64,{form.photo_data}", "label": "the uploaded photo"}
        elif form.case_id and "case" not in form.errors and ctx.user.may("queue"):
            photo = {"case": form.case_id, "label": "the case's photo"}
        draft_channel = None
        if form.draft:
            try:
                draft_channel = str(json.loads(form.draft).get("channel"))
            except (ValueError, AttributeError):
                draft_channel = None
        in_use = result.policy if result is not None else published
        try:
            scorer = admin.rt.pipeline.scoring.scorer
            scorer_name = f"{scorer.name} {scorer.version}"
        except RuntimeError:
            scorer_name = "not loaded"
        return {
            "form": form,
            "errors": form.errors,
            "result": result,
            "published": published,
            "own": own,
            "channels": sorted({*channels, form.channel}),
            "cases": cases,
            "photo": photo,
            "draft_channel": draft_channel,
            "locales": LOCALES,
            "max_replies": MAX_REPLIES,
            "reply_count": len(split_replies(form.replies)),
            "editor_fields": editor_fields(in_use, form.instruction) if ctx.user.may("policies") else [],
            "scorer_name": scorer_name,
            "image_text_labels": IMAGE_TEXT_LABELS,
        }

    async def _html(self, ctx: Ctx, form: TrialForm, result: Result | None) -> str:
        context = await self._context(ctx, form, result)
        return self.admin.page(ctx.request, "playground.html", ctx.user, **context)

    async def _show(self, ctx: Ctx, form: TrialForm, result: Result | None, status: int) -> Response:
        html = await self._html(ctx, form, result)
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": PAGE_CSP})


_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)


def _sniff_mime(b64: str) -> str | None:
    """The image type of base64 data that decode_image accepted (only these four can get here)."""
    try:
        head = base64.b64decode(b64[:16])
    except (binascii.Error, ValueError):
        return None
    return next((mime for magic, mime in _MAGIC if head.startswith(magic)), None)
