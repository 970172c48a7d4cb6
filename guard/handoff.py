"""Handoff webhooks: tell the helpdesk about escalations and reviews, and later about outcomes.

Every delivery is a row in ``webhook_deliveries`` (the outbox): created when the decision is
made (``case.escalate`` / ``case.review``) or when a supervisor resolves the case
(``case.outcome``, through :func:`enqueue_outcome` or :meth:`Handoff.deliver_outcome`), then
sent by a background task: POST with a JSON body, signed with HMAC-SHA256 over
``"<timestamp>." + body``, retried with exponential backoff until the receiver answers 2xx or
``GUARD_WEBHOOK_MAX_ATTEMPTS`` attempts have failed. The customer's request only hands the case
to an in-memory queue: a receiver that is down or slow never slows it. Replicas share the outbox:
a sender leases the rows it claims (``FOR UPDATE SKIP LOCKED`` on PostgreSQL).

Headers of every delivery::

    X-Guard-Event: case.escalate | case.review | case.outcome
    X-Guard-Delivery: <delivery id; the same on every retry: deduplicate on it>
    X-Guard-Timestamp: <unix seconds of this attempt>
    X-Guard-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from datetime import timedelta
from typing import Any

import httpx2

from guard.ids import new_id
from guard.metrics import Metrics
from guard.pipeline import DecisionSink
from guard.policies import QUEUED_ACTIONS
from guard.records import DecisionRecord
from guard.settings import Settings
from guard.store import Store
from guard.stored import Delivery
from guard.tables import utcnow

log = logging.getLogger(__name__)

SIGNATURE_VERSION = "v1"
MAX_BACKOFF_S = 3600.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Guard-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: str,
    signature: str,
    body: bytes,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent (no replays)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def case_url(settings: Settings, decision_id: str, queue_item_id: str | None) -> str:
    return settings.admin_case_url.replace("{decision_id}", decision_id).replace(
        "{escalation_id}", queue_item_id or ""
    )


def case_payload(settings: Settings, record: DecisionRecord, delivery_id: str) -> dict[str, Any]:
    d = record.row
    return {
        "event": f"case.{d.action}",
        "delivery_id": delivery_id,
        "decision_id": d.id,
        "escalation_id": record.queue_item_id,
        "conversation_id": d.conversation_id,
        "channel": d.channel,
        "action": d.action,
        "question": d.question,
        "reply": d.draft,
        "holding_message": d.holding_message,
        "score": d.score,
        "band": d.band,
        "degraded": d.degraded,
        "reason": d.reason,
        "locale": d.locale,
        "issue_phrase": d.issue_phrase,
        "issue_kind": d.issue_kind,
        "uncertain": d.uncertain,
        "uncertain_reason": d.uncertain_reason,
        "instruction_used": d.instruction_used,
        "image_sha256": d.image_sha256,
        "case_url": case_url(settings, d.id, record.queue_item_id),
        "created_at": d.created_at.isoformat(),
    }


def enqueue_outcome(store: Store, settings: Settings, decision_id: str) -> str | None:
    """Queue a ``case.outcome`` delivery for a resolved case (blocking; call it off the event loop).

    For the admin pages: call it after a supervisor approves, edits, takes over or dismisses a
    case. Returns the delivery id, or None when no webhook is configured or the case is not
    resolved yet.
    """
    if not settings.webhook_url:
        return None
    found = store.get_decision(decision_id)
    item = None if found is None else found.queue_item
    if found is None or item is None or item.state == "pending":
        return None
    row = found.row
    delivery_id = new_id()
    resolved = item.resolved_at
    payload = {
        "event": "case.outcome",
        "delivery_id": delivery_id,
        "decision_id": decision_id,
        "escalation_id": item.id,
        "conversation_id": row.conversation_id,
        "channel": row.channel,
        "action": row.action,
        "state": item.state,
        "final_reply": item.final_reply,
        "resolved_by": item.resolved_by,
        "resolved_at": None if resolved is None else resolved.isoformat(),
        "case_url": case_url(settings, decision_id, item.id),
        "kind": item.kind,
        "audit": item.audit_json(),
    }
    if item.is_audit:  # the customer had the reply when it was sent; the audit says how good it was
        payload["final_reply"] = row.final_reply
    store.add_delivery(delivery_id, decision_id, "case.outcome", settings.webhook_url, _dump(payload))
    return delivery_id


def _dump(payload: dict[str, Any]) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


class Handoff:
    """The outbox sender of one guard process (started and stopped in the app's lifespan)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        max_pending: int = 10_000,
    ) -> None:
        self.settings = settings
        self.enabled = bool(settings.webhook_url)
        self._store = store
        self._metrics = metrics or Metrics()
        self._transport = transport
        self._cases: asyncio.Queue[DecisionRecord] = asyncio.Queue(maxsize=max_pending)
        self._wake = asyncio.Event()
        self._poll_s = min(1.0, settings.webhook_backoff_s)
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx2.AsyncClient | None = None

    def start(self) -> None:
        if not self.enabled:
            return
        self._client = httpx2.AsyncClient(
            transport=self._transport,
            trust_env=False,
            follow_redirects=False,
            timeout=self.settings.webhook_timeout_s,
        )
        self._tasks = [
            asyncio.create_task(self._record_cases(), name="handoff-outbox"),
            asyncio.create_task(self._send_loop(), name="handoff-sender"),
        ]

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cases.join(), timeout_s)
        # Cancelled until they have ended: Python 3.11's asyncio.wait_for (the sender's wait for
        # work) can swallow a cancellation that meets its wake-up, and the loop would go on.
        while pending := [task for task in self._tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        for task in self._tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("handoff: %s ended: %r", task.get_name(), task.exception())
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def notify(self, record: DecisionRecord) -> None:
        """Hand a held decision over for a webhook; never waits."""
        if not self.enabled or record.queue_item_id is None or record.row.action not in QUEUED_ACTIONS:
            return  # sent (an audit item is no case for the helpdesk until it is marked)
        try:
            self._cases.put_nowait(record)
        except asyncio.QueueFull:
            self._metrics.webhook_dropped.inc()
            log.error(
                "handoff: %d cases waiting; the webhook of %s is dropped",
                self._cases.qsize(),
                record.row.id,
            )

    async def deliver_outcome(self, decision_id: str) -> str | None:
        """Queue the final reply of a resolved case for the webhook and send it soon."""
        delivery_id = await asyncio.to_thread(enqueue_outcome, self._store, self.settings, decision_id)
        if delivery_id is not None:
            self._wake.set()
        return delivery_id

    async def flush(self) -> None:
        """Wait until every case handed over so far is in the outbox (for tests and shutdown)."""
        await self._cases.join()

    async def _record_cases(self) -> None:
        url = self.settings.webhook_url
        assert url is not None
        while True:
            record = await self._cases.get()
            delay = 0.05
            try:
                while True:
                    delivery_id = new_id()
                    body = _dump(case_payload(self.settings, record, delivery_id))
                    try:
                        await asyncio.to_thread(
                            self._store.add_delivery,
                            delivery_id,
                            record.row.id,
                            f"case.{record.row.action}",
                            url,
                            body,
                        )
                        break
                    except Exception:
                        log.exception("handoff: could not store a delivery; retrying in %.2fs", delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                self._wake.set()
            finally:
                self._cases.task_done()

    async def _send_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()
            try:
                due = await asyncio.to_thread(
                    self._store.claim_deliveries, 20, self.settings.webhook_timeout_s + 30
                )
            except Exception:
                log.exception("handoff: could not read the outbox")
                continue
            if due:
                await asyncio.gather(*(self._attempt(d) for d in due))
                self._wake.set()  # there may be more

    async def _attempt(self, delivery: Delivery) -> None:
        s = self.settings
        assert self._client is not None and s.webhook_secret is not None
        body = delivery.body.encode()
        timestamp = str(int(time.time()))
        status: int | None = None
        error: str | None = None
        try:
            response = await self._client.post(
                delivery.url,
                content=body,
                headers={
                    "content-type": "application/json",
                    "user-agent": "reply-guard-webhook/1",
                    "x-guard-event": delivery.event,
                    "x-guard-delivery": delivery.id,
                    "x-guard-timestamp": timestamp,
                    "x-guard-signature": sign(s.webhook_secret, timestamp, body),
                },
            )
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}: {response.text[:200]}"
        except httpx2.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        attempts = delivery.attempts + 1
        if error is None:
            state, retry_at = "delivered", None
        elif attempts >= s.webhook_max_attempts:
            state, retry_at = "failed", None
            log.error("handoff: delivery %s failed %d times; giving up: %s", delivery.id, attempts, error)
        else:
            backoff = min(s.webhook_backoff_s * 2 ** (attempts - 1), MAX_BACKOFF_S)
            state, retry_at = "pending", utcnow() + timedelta(seconds=backoff * random.uniform(0.8, 1.2))
        self._metrics.webhook_attempts.labels(result="ok" if error is None else "error").inc()
        try:
            await asyncio.to_thread(
                self._store.finish_attempt,
                delivery.id,
                state=state,
                status=status,
                error=error,
                retry_at=retry_at,
            )
        except Exception:  # the lease runs out and the delivery is tried again
            log.exception("handoff: could not record the attempt of %s", delivery.id)


class HandoffSink:
    """The guard's decision sink: the decision log, then the webhook for held decisions."""

    def __init__(self, log_sink: DecisionSink, handoff: Handoff) -> None:
        self._log = log_sink
        self._handoff = handoff

    async def put(self, record: DecisionRecord, *, or_memory: bool | None = None) -> bool:
        durable = await self._log.put(record, or_memory=or_memory)
        self._handoff.notify(record)
        return durable
