"""The pipeline: cache -> score -> policy -> follow-up -> record. No HTTP in here.

Edges (the check API, the CLI, later the middleware and the proxy) build a CheckRequest
and call ``Pipeline.check``; everything below it (policy, scorer, cache, store) knows nothing
of the edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from guard.breaker import CircuitBreaker
from guard.cache import CachedScore, ScoreCache, score_key
from guard.calibration import CalibrationBook, ChannelMap, scorer_version_with
from guard.channel_book import ChannelBook, bounded
from guard.errors import SpoolUnavailable
from guard.followups import MessageContext, Messages, case_ref
from guard.ids import new_id
from guard.images import DecodedImage, ImageDecoder
from guard.issues import IssueReading, read_issue
from guard.local_copy import PolicyCopy
from guard.metrics import Metrics
from guard.ocr import OcrService, PhotoText
from guard.policies import (
    QUEUED_ACTIONS,
    Action,
    Policy,
    PolicyDecision,
    audit_rate,
    audit_sampled,
    decide,
    default_policy,
)
from guard.records import Candidate, DecisionRecord, DecisionRow
from guard.scoring.base import ScoreInput, Scorer, ScoreResult
from guard.scoring.batching import MicroBatcher
from guard.settings import Settings
from guard.store import Store
from guard.tables import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckRequest:
    question: str
    reply: str
    channel: str = "default"
    conversation_id: str | None = None
    locale: str | None = None
    image: DecodedImage | None = None
    candidates: tuple[str, ...] = ()
    """Alternative drafts: the guard ranks them with ``reply`` and decides on the best."""


@dataclass(frozen=True)
class Scored:
    reply: str
    score: float | None
    inputs_used: tuple[str, ...]
    cached: bool
    instruction_used: bool = False
    """The scorer read the scoring instruction for this score."""


@dataclass(frozen=True)
class CheckResult:
    decision_id: str
    action: Action
    score: float | None
    band: str | None
    reply: str | None
    draft: str
    follow_up: str | None
    queue_item_id: str | None
    holding_message: str | None
    policy: Policy
    scorer_name: str
    scorer_version: str
    cached: bool
    degraded: bool
    reason: str | None
    inputs_used: tuple[str, ...]
    instruction_used: bool
    """The scorer read the policy's scoring instruction (the bundled scorer does not)."""
    locale: str
    issue_phrase: str | None
    issue_kind: str
    """The kind of the customer's issue (guard.issues.lexicon.KINDS, or "other")."""
    uncertain_reason: str | None
    """Why the guard cannot judge this case (e.g. "issue_not_stated"); None when it can."""
    ranked: tuple[Scored, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)
    image_text_status: str | None = None
    """How the photo's text was obtained (guard/ocr.py ``Status``); None without a photo."""
    image_text: str | None = None
    """The text read from the photo, when it was read in time (recorded; not in the API response)."""
    audit_item_id: str | None = None
    """The queue item of an answered decision sampled for audit (the policy's ``audit_sample``):
    copied to the supervisors' queue once recorded; not in the API response (nothing changes for
    the customer)."""
    durable: bool = True
    """The decision was fsync'd in the spool before this answer; False: it waits for SQL in memory
    only (no spool, or the spool could not write: GUARD_SPOOL_ON_ERROR hold or memory)."""

    @property
    def uncertain(self) -> bool:
        return self.uncertain_reason is not None

    def to_json(self) -> dict[str, Any]:
        """The check API's response body (docs/api.md)."""
        body: dict[str, Any] = {
            "decision_id": self.decision_id,
            "action": self.action,
            "score": None if self.score is None else round(self.score, 4),
            "band": self.band,
            "reply": self.reply,
            "follow_up": self.follow_up,
            "escalation_id": self.queue_item_id,
            "holding_message": self.holding_message,
            "policy": {"channel": self.policy.channel, "version": self.policy.version},
            "scorer": {"name": self.scorer_name, "version": self.scorer_version},
            "cached": self.cached,
            "degraded": self.degraded,
            "reason": self.reason,
            "inputs_used": list(self.inputs_used),
            "instruction_used": self.instruction_used,
            "locale": self.locale,
            "issue_phrase": self.issue_phrase,
            "issue_kind": self.issue_kind,
            "uncertain": self.uncertain,
            "uncertain_reason": self.uncertain_reason,
            "timings_ms": self.timings_ms,
            "image_text_status": self.image_text_status,
            "durable": self.durable,
        }
        if len(self.ranked) > 1:
            body["candidates"] = [
                {"reply": s.reply, "score": None if s.score is None else round(s.score, 4)}
                for s in self.ranked
            ]
        return body


@dataclass(frozen=True)
class CaseReading:
    """What the guard reads of a case before scoring: the photo's text (within its budget) and the
    customer's issue from the question and that text. The check and the playground both take it
    from ``Pipeline.read_case``, so that they score and judge a case from the same inputs."""

    photo: PhotoText | None
    """How the photo's text was obtained; None without a photo."""
    issue: IssueReading

    @property
    def image_text(self) -> str | None:
        return self.photo.text if self.photo is not None else None


class DecisionSink(Protocol):
    async def put(self, record: DecisionRecord, *, or_memory: bool | None = None) -> bool:
        """True once the decision is durable; False when it waits in memory only (allowed by
        ``or_memory``, else by the sink's own rule); SpoolUnavailable when it cannot be kept so."""
        ...


class PolicyBook(ChannelBook[Policy]):
    """The policy in force per channel, read from SQL and re-read in the background.

    A channel's first request waits for its policy (at most ``timeout_s``); after that requests
    never wait for SQL. While started (:meth:`start`, the runtime does), every channel known is
    re-read every ``ttl_s`` whether requests come or not, so a version published anywhere (another
    replica, another worker, ``guard policy publish``) is in force in this process within
    ``ttl_s`` plus one read. A policy older than ``ttl_s`` (not started, or the refresh is late)
    also makes the next request start one re-read (shared by every request meanwhile); it is
    answered with the policy known. When SQL fails or does not answer in time, the last policy
    read stands; before the first, the local copy's (``copy``, guard/local_copy.py: what a previous
    guard read while SQL answered), else the built-in default. A channel with no policy of its own
    uses the default channel's; with no database (``guard check``) the built-in default policy is
    used. Whenever a policy is read that the copy does not hold (the first read, a publish), the
    copy is rewritten from SQL.
    """

    def __init__(
        self,
        store: Store | None,
        ttl_s: float = 2.0,
        timeout_s: float = 2.0,
        *,
        copy: PolicyCopy | None = None,
    ) -> None:
        super().__init__(ttl_s, timeout_s)
        self._store = store
        self._copy = copy if store is not None else None
        self._copying: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._store is not None:
            super().start()

    async def stop(self) -> None:
        """End the background re-read, and let a rewrite of the copy under way finish (bounded by
        the SQL timeout)."""
        await super().stop()
        if self._copying is not None and not self._copying.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._copying), self._timeout + 1)

    async def _read(self, channel: str) -> Policy:
        if self._store is None:
            return default_policy()
        policy, _own = await bounded(self._timeout, self._store.policy_in_force, channel)
        return policy

    def _was_read(self, value: Policy) -> None:
        if self._copy is not None and not self._copy.holds(value):
            self._refresh_copy()

    def _fallback(self, channel: str, exc: Exception) -> Policy:
        """The policy when SQL cannot be read: the last one read, else the local copy's, else the default."""
        read, last = self.stale(channel)
        if read and last is not None:
            log.warning("could not read the policy of %r (%r); the last one read stands", channel, exc)
            return last
        copied = None if self._copy is None else self._copy.policy_for(channel)
        if copied is not None:
            log.warning(
                "could not read the policy of channel %r (%r); using the local copy's (%s v%d)",
                channel,
                exc,
                copied.channel,
                copied.version,
            )
            return copied
        log.warning("could not read the policy of channel %r (%r); using the built-in default", channel, exc)
        return default_policy()

    def _refresh_copy(self) -> None:
        """Rewrite the local copy from SQL in the background (one rewrite at a time)."""
        if self._copying is None or self._copying.done():
            self._copying = asyncio.get_running_loop().create_task(self._save_copy(), name="policy-copy")

    async def _save_copy(self) -> None:
        assert self._store is not None and self._copy is not None
        try:
            policies = await bounded(self._timeout, self._store.active_policies)
            await asyncio.to_thread(self._copy.save, policies)
        except Exception as exc:
            log.warning("policies: the local copy was not refreshed (%r)", exc)


@dataclass(frozen=True)
class Shown:
    """What the customer is shown for one decision."""

    reply: str | None
    """Sent now: the draft (``send``) or the draft and the follow-up (``follow_up``); None when held."""
    follow_up: str | None
    holding: str | None
    """The message shown while a held draft waits for a supervisor (``review``, ``escalate``)."""

    @property
    def text(self) -> str:
        return self.reply if self.reply is not None else self.holding or ""


def compose(action: Action, draft: str, ctx: MessageContext, messages: Messages, policy: Policy) -> Shown:
    """What the customer sees for ``action``: the one rule, for the pipeline and the playground."""
    if action == "send":
        return Shown(draft, None, None)
    if action == "follow_up":
        follow_up = messages.follow_up(ctx, policy.templates)
        return Shown(f"{draft}\n\n{follow_up}", follow_up, None)
    return Shown(None, None, messages.holding(action, ctx, policy.templates))


UNCERTAIN_NOT_STATED = "issue_not_stated"
SPOOL_HELD_REASON = "spool_unavailable"
"""The reason of a reply held because its decision could not be made durable (GUARD_SPOOL_ON_ERROR=hold)."""


def uncertainty(issue: IssueReading, *, has_photo: bool, inputs_used: Sequence[str]) -> str | None:
    """Why the score cannot be trusted to send, or None: the photo carries the issue (no text states
    one) and the scorer did not see the photo."""
    if has_photo and not issue.stated and "image" not in inputs_used:
        return UNCERTAIN_NOT_STATED
    return None


def decide_case(policy: Policy, score: float | None, doubt: str | None) -> PolicyDecision:
    """The policy's verdict on ``score``, at least its uncertain_action when ``doubt`` names a reason."""
    return decide(policy, score, uncertain=doubt is not None, uncertain_reason=doubt or UNCERTAIN_NOT_STATED)


class ScoringService:
    """Runs the blocking scorer in its own worker thread, under a deadline.

    Concurrent requests are micro-batched into one ``score_batch`` call (guard/scoring/batching.py):
    at most ``batch_max_items`` pairs, waiting at most ``batch_wait_s`` for company.
    """

    def __init__(
        self,
        scorer: Scorer,
        timeout_s: float,
        *,
        batch_max_items: int = 32,
        batch_wait_s: float = 0.003,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.scorer = scorer
        self._timeout = timeout_s
        self.breaker = breaker or CircuitBreaker("the scorer")
        """Refuses at once (BreakerOpen) after repeated failures (guard/breaker.py)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
        self.batcher = MicroBatcher(
            scorer, self._executor, max_items=batch_max_items, max_wait_s=batch_wait_s
        )

    async def score(self, items: Sequence[ScoreInput]) -> list[CachedScore | None]:
        """A score with what it used per item; None when the scorer failed or gave no number."""
        with self.breaker.attempt() as attempt:
            results = await asyncio.wait_for(self.batcher.score(list(items)), self._timeout)
            if len(results) != len(items):
                raise RuntimeError(f"scorer returned {len(results)} results for {len(items)} items")
            scores = [_usable(r) for r in results]
            attempt.ok = all(score is not None for score in scores)
            return scores

    def close(self) -> None:
        self.batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


class Pipeline:
    """One decision per check: photo text, score (cached), policy, message, record to the sink."""

    def __init__(
        self,
        settings: Settings,
        scoring: ScoringService,
        cache: ScoreCache,
        policies: PolicyBook,
        sink: DecisionSink | None,
        metrics: Metrics | None = None,
        messages: Messages | None = None,
        ocr: OcrService | None = None,
        calibrations: CalibrationBook | None = None,
        images: ImageDecoder | None = None,
    ) -> None:
        self.settings = settings
        self.calibrations = calibrations or CalibrationBook(None)
        """The score map in force per channel (fitted on its labels, guard/calibration.py)."""
        self.images = images or ImageDecoder.from_settings(settings)
        """Decodes photos in its own bounded pool, under a deadline (guard/images.py)."""
        self.ocr = ocr
        """Reads the text in photos; None when OCR is off."""
        self.scoring = scoring
        self.cache = cache
        self.policies = policies
        self.sink = sink
        self.metrics = metrics or Metrics()
        self.messages = messages or Messages()

    async def channel_rules(self, channel: str) -> tuple[Policy, ChannelMap | None]:
        """The channel's policy and its score map in force (None: the scorer's scores as they are),
        as every score on the channel uses them (``check``, ``POST /v1/rerank``)."""
        known, channel_map = self.calibrations.known(channel)
        if known:  # the usual case: no task, no wait
            return await self.policies.get(channel), channel_map
        # a channel's first request: read its policy and its map together
        return await asyncio.gather(self.policies.get(channel), self.calibrations.get(channel))

    async def check(self, req: CheckRequest) -> CheckResult:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        if req.image is not None:
            self.start_reading(req.image)  # overlaps the policy lookup (and the earlier /v1/images)
        policy, channel_map = await self.channel_rules(req.channel)
        drafts = (req.reply, *req.candidates)
        reading = await self.read_case(req.question, req.image, req.locale)
        photo, issue, image_text = reading.photo, reading.issue, reading.image_text
        if photo is not None and photo.status != "off":
            timings["ocr"] = photo.ms
        locale = issue.locale

        t = time.perf_counter()
        scored, error = await self.score_texts(
            req.question,
            req.image,
            drafts,
            policy.instruction,
            req.locale,
            image_text=image_text,
            calibration=channel_map,
        )
        timings["score"] = _ms(t)

        best = max(scored, key=lambda s: -1.0 if s.score is None else s.score) if not error else scored[0]
        doubt = uncertainty(issue, has_photo=req.image is not None, inputs_used=best.inputs_used)
        verdict = decide_case(policy, None if error else best.score, doubt)
        decision_id = new_id()
        ctx = MessageContext(locale, issue.phrase, case_ref(decision_id), self.settings.response_time(locale))
        shown = compose(verdict.action, best.reply, ctx, self.messages, policy)
        queue_item_id = new_id() if verdict.action in QUEUED_ACTIONS else None
        audit = queue_item_id is None and audit_sampled(decision_id, audit_rate(policy, verdict))
        timings["total"] = _ms(started)

        result = CheckResult(
            decision_id=decision_id,
            action=verdict.action,
            score=None if error else best.score,
            band=verdict.band,
            reply=shown.reply,
            draft=best.reply,
            follow_up=shown.follow_up,
            queue_item_id=queue_item_id,
            holding_message=shown.holding,
            policy=policy,
            scorer_name=self.scoring.scorer.name,
            scorer_version=scorer_version_with(self.scoring.scorer.version, channel_map),
            cached=all(s.cached for s in scored),
            degraded=verdict.degraded,
            reason=verdict.reason or _photo_reason(photo),
            inputs_used=best.inputs_used,
            instruction_used=best.instruction_used,
            locale=locale,
            issue_phrase=issue.phrase,
            issue_kind=issue.kind,
            uncertain_reason=doubt,
            ranked=tuple(sorted(scored, key=lambda s: -1.0 if s.score is None else s.score, reverse=True)),
            timings_ms=timings,
            image_text_status=None if photo is None else photo.status,
            image_text=image_text,
            audit_item_id=new_id() if audit else None,
        )
        if self.sink is not None:
            result = await self._hand_over(req, result, policy, ctx)
        m = self.metrics
        m.decisions.labels(action=result.action, channel=policy.channel).inc()
        if result.audit_item_id is not None:
            m.audit_sampled.labels(action=result.action).inc()
        if result.degraded:
            m.degraded.labels(reason=result.reason or "unknown").inc()
        elif result.score is not None:
            m.score.labels(channel=policy.channel).observe(result.score)
        m.decision_latency.observe(timings["total"] / 1000)
        return result

    async def _hand_over(
        self, req: CheckRequest, result: CheckResult, policy: Policy, ctx: MessageContext
    ) -> CheckResult:
        """Give the decision to the sink; the result as answered (held, or marked not durable)."""
        assert self.sink is not None
        try:
            durable = await self.sink.put(self._record(req, result))
        except SpoolUnavailable:
            if self.settings.spool_on_error != "hold":
                raise  # 503: nothing is answered that is not durable
            result = self._held(result, policy, ctx)
            durable = await self.sink.put(self._record(req, result), or_memory=True)
        return result if durable else dataclasses.replace(result, durable=False)

    def _held(self, result: CheckResult, policy: Policy, ctx: MessageContext) -> CheckResult:
        """The decision when the spool cannot write and GUARD_SPOOL_ON_ERROR=hold: the draft is held
        with the policy's on_error action (escalate when that would not hold it) and its message."""
        action: Action = policy.on_error if policy.on_error in QUEUED_ACTIONS else "escalate"
        shown = compose(action, result.draft, ctx, self.messages, policy)
        return dataclasses.replace(
            result,
            action=action,
            reply=shown.reply,
            follow_up=shown.follow_up,
            holding_message=shown.holding,
            queue_item_id=result.queue_item_id or new_id(),
            degraded=True,
            reason=SPOOL_HELD_REASON,
            audit_item_id=None,  # held, not sent: nothing to audit
        )

    async def score_texts(
        self,
        question: str,
        image: DecodedImage | None,
        replies: Sequence[str],
        instruction: str,
        locale: str | None = None,
        *,
        image_text: str | None = None,
        calibration: ChannelMap | None = None,
    ) -> tuple[list[Scored], bool]:
        """Score each reply against (question, image): cached where possible. Returns (scored, failed).

        ``calibration``: the channel's score map, applied to the scorer's scores before they are
        cached; its id is part of the cache key, so a score of another map is never served."""
        scorer = self.scoring.scorer
        version = scorer_version_with(scorer.version, calibration)
        keys = [
            score_key(
                scorer=scorer.name,
                version=version,
                instruction=instruction,
                image_sha256=image.sha256 if image else None,
                question=question,
                reply=reply,
                image_text=image_text,
            )
            for reply in replies
        ]
        hits: list[CachedScore | None] = [await self.cache.get(k) for k in keys]
        self.metrics.cache_hits.inc(sum(h is not None for h in hits))
        self.metrics.cache_misses.inc(sum(h is None for h in hits))
        misses = [i for i, h in enumerate(hits) if h is None]
        fresh: dict[int, CachedScore | None] = {}
        failed = False
        if misses:
            items = [
                ScoreInput(
                    question=question,
                    reply=replies[i],
                    instruction=instruction,
                    image_text=image_text,
                    has_image=image is not None,
                    locale=locale,
                    image=image.rgb if image is not None else None,
                )
                for i in misses
            ]
            t = time.perf_counter()
            try:
                results = await self.scoring.score(items)
            except Exception as exc:
                self.metrics.scorer_errors.labels(kind=type(exc).__name__).inc()
                log.warning("scorer failed: %r", exc)
                results = [None for _ in misses]
            self.metrics.scorer_latency.observe(time.perf_counter() - t)
            for i, res in zip(misses, results, strict=True):
                fresh[i] = res
                if res is None:
                    failed = True
                    continue
                if calibration is not None:
                    res = CachedScore(calibration.apply(res.score), res.inputs_used, res.instruction_used)
                    fresh[i] = res
                await self.cache.set(keys[i], res)
        scored = []
        for i, reply in enumerate(replies):
            hit = hits[i]
            got, cached = (hit, True) if hit is not None else (fresh[i], False)
            if got is None:
                scored.append(Scored(reply, None, (), cached=False))
            else:
                scored.append(Scored(reply, got.score, got.inputs_used, cached, got.instruction_used))
        return scored, failed

    async def read_case(self, question: str, image: DecodedImage | None, locale: str | None) -> CaseReading:
        """The photo's text (the OCR service: its cache, shared reads and budget) and the issue read
        from the question and that text. Call ``start_reading`` first to overlap other work."""
        photo = await self.photo_text(image)
        image_text = photo.text if photo is not None else None
        return CaseReading(photo, read_issue(question, image_text, locale, has_photo=image is not None))

    def start_reading(self, image: DecodedImage) -> None:
        """Start reading the photo's text now (as soon as it arrives), so that it overlaps other work."""
        if self.ocr is not None:
            self.ocr.start(image)

    async def photo_text(self, image: DecodedImage | None) -> PhotoText | None:
        """The photo's text within its budget; None without a photo, status "off" when OCR is off."""
        if image is None:
            return None
        if self.ocr is None:
            return PhotoText(None, "off")
        photo = await self.ocr.text(image)
        self.metrics.ocr.labels(status=photo.status).inc()
        return photo

    def _record(self, req: CheckRequest, result: CheckResult) -> DecisionRecord:
        image = req.image
        queued = result.action in QUEUED_ACTIONS or result.audit_item_id is not None
        return DecisionRecord(
            row=DecisionRow(
                id=result.decision_id,
                created_at=utcnow(),
                conversation_id=req.conversation_id,
                channel=req.channel,
                locale=result.locale,
                question=req.question,
                image_sha256=image.sha256 if image else None,
                draft=result.draft,
                candidates=(
                    tuple(Candidate(s.reply, s.score) for s in result.ranked) if req.candidates else None
                ),
                score=result.score,
                band=result.band,
                action=result.action,
                final_reply=result.reply,
                follow_up=result.follow_up,
                holding_message=result.holding_message,
                issue_phrase=result.issue_phrase,
                issue_kind=result.issue_kind,
                uncertain=result.uncertain,
                uncertain_reason=result.uncertain_reason,
                image_text=result.image_text,
                policy_channel=result.policy.channel,
                policy_version=result.policy.version,
                scorer_name=result.scorer_name,
                scorer_version=result.scorer_version,
                inputs_used=tuple(result.inputs_used),
                instruction_used=result.instruction_used,
                cached=result.cached,
                degraded=result.degraded,
                reason=result.reason,
                latency_ms=result.timings_ms["total"],
                timings_ms=result.timings_ms,
                durable=True,  # the sink marks it False when it keeps it in memory only
            ),
            queue_item_id=result.queue_item_id or result.audit_item_id,
            image=(
                (image.sha256, image.mime_type, image.width, image.height, image.data)
                if image is not None and queued
                else None
            ),
        )


def _photo_reason(photo: PhotoText | None) -> str | None:
    """Why a photo's text was not used, when it should have been (e.g. "image_text_timeout")."""
    if photo is None or photo.status not in ("timeout", "error", "busy"):
        return None
    return f"image_text_{photo.status}"


def _usable(result: ScoreResult) -> CachedScore | None:
    """The result as it is cached, or None when its score is not a number in [0, 1]."""
    score = result.score
    if not isinstance(score, float | int) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
        return None
    return CachedScore(float(score), result.inputs_used, result.instruction_used)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
