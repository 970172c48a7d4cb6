"""Handoff webhooks: signed, retried, recorded in SQL, never slowing the customer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from guard.handoff import sign, verify
from guard.stored import Delivery
from tests.apptools import guard_client, make_users, queries_of, runtime_of, signed_in
from tests.serving import closed_port, serve

SECRET = "s3cret-for-tests"


def test_signatures_verify_and_tampering_or_replays_do_not() -> None:
    body = b'{"event":"case.escalate"}'
    ts = str(int(time.time()))
    sig = sign(SECRET, ts, body)
    assert sig.startswith("v1=") and verify(SECRET, ts, sig, body)
    assert not verify(SECRET, ts, sig, body + b" ")
    assert not verify("other", ts, sig, body)
    assert not verify(SECRET, str(int(ts) - 1), sig, body)
    assert not verify(SECRET, ts, sig, body, now=int(ts) + 301), "an old delivery is a replay"
    assert not verify(SECRET, "soon", sig, body)


class Receiver:
    """A helpdesk's webhook endpoint: answers 500 to the first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append((dict(request.headers), body))
            failing = len(self.received) <= self.fail_first
        return Response(status_code=500 if failing else 204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])


def wait_until(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver(fail_first=1)
    with serve(rec.app()) as base:
        yield rec, base + "/hook"


def _post(client: TestClient, score: float, conversation: str) -> dict[str, Any]:
    resp = client.post(
        "/v1/guard",
        json={
            "conversation_id": conversation,
            "question": "My parcel never came",
            "reply": f"ok [score={score}]",
        },
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.mark.integration
def test_escalations_and_reviews_reach_the_webhook_signed_and_retried(
    pg_url: str, redis_url: str, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    with guard_client(
        pg_url,
        redis_url=redis_url,
        webhook_url=url,
        webhook_secret=SECRET,
        webhook_backoff_s=0.05,
        admin_case_url="https://guard.example/admin/cases/{escalation_id}",
    ) as client:
        held = {a: _post(client, s, f"c-{a}") for a, s in (("escalate", 0.2), ("review", 0.45))}
        _post(client, 0.9, "c-send")
        _post(client, 0.55, "c-follow")
        app = runtime_of(client)

        def delivered() -> list[Delivery]:
            rows = [d for h in held.values() for d in app.store.deliveries(h["decision_id"])]
            return rows if len(rows) == 2 and all(r.state == "delivered" for r in rows) else []

        rows = wait_until(delivered)
        assert sorted(r.attempts for r in rows) == [1, 2], "the first answer was a 500: retried"
        events = {}
        for headers, body in rec.received:
            assert verify(SECRET, headers["x-guard-timestamp"], headers["x-guard-signature"], body)
            doc = json.loads(body)
            assert (
                headers["x-guard-event"] == doc["event"] and headers["x-guard-delivery"] == doc["delivery_id"]
            )
            events[doc["event"]] = doc
        assert set(events) == {"case.escalate", "case.review"}, "send and follow_up are not handed off"
        case = events["case.review"]
        assert case["decision_id"] == held["review"]["decision_id"]
        assert case["escalation_id"] == held["review"]["escalation_id"]
        assert (case["conversation_id"], case["channel"], case["question"]) == (
            "c-review",
            "default",
            "My parcel never came",
        )
        assert case["reply"] == "ok [score=0.45]" and case["score"] == 0.45
        decided = {
            k: held["review"][k] for k in ("issue_kind", "uncertain", "uncertain_reason", "instruction_used")
        }
        assert {k: case[k] for k in decided} == decided, "the webhook carries what the decision says"
        assert case["case_url"] == f"https://guard.example/admin/cases/{held['review']['escalation_id']}"

        # A supervisor edits the reviewed draft: the final reply goes out the same way and is pollable.
        queue_item_id = held["review"]["escalation_id"]
        resolved = wait_until(
            lambda: (
                app.store.get_decision(held["review"]["decision_id"])
                and queries_of(client).resolve_case(
                    queue_item_id, "edited", "sam", final_reply="We resent it today.", note=None
                )
            )
        )
        assert resolved.state == "edited"
        assert client.portal is not None and app.on_outcome is not None
        client.portal.call(app.on_outcome, held["review"]["decision_id"])
        outcome = wait_until(
            lambda: [json.loads(b) for _h, b in rec.received if json.loads(b)["event"] == "case.outcome"]
        )[0]
        assert (outcome["state"], outcome["final_reply"], outcome["resolved_by"]) == (
            "edited",
            "We resent it today.",
            "sam",
        )
        polled = client.get(f"/v1/decisions/{held['review']['decision_id']}").json()
        assert (polled["state"], polled["reply"]) == ("edited", "We resent it today.")


def test_a_dead_webhook_receiver_costs_the_customer_nothing(sqlite_url: str) -> None:
    with guard_client(
        sqlite_url,
        webhook_url=f"http://127.0.0.1:{closed_port()}/hook",
        webhook_secret=SECRET,
        webhook_backoff_s=0.05,
        webhook_max_attempts=2,
    ) as client:
        started = time.monotonic()
        held = _post(client, 0.2, "c-dead")
        assert time.monotonic() - started < 1.0
        app = runtime_of(client)

        def failed() -> list[Delivery]:
            rows = app.store.deliveries(held["decision_id"])
            return rows if rows and rows[0].state == "failed" else []

        (row,) = wait_until(failed)
        assert row.attempts == 2 and row.last_error and row.delivered_at is None

        # Supervisors see the delivery state on the case page.
        make_users(queries_of(client))
        signed_in(client, "sup")
        page = client.get(f"/admin/cases/{held['escalation_id']}")
        assert page.status_code == 200
        table = page.text[page.text.index('id="deliveries"') :]
        assert "failed" in table[: table.index("</table>")] and "not yet" in table


def test_a_webhook_url_needs_a_secret(sqlite_url: str) -> None:
    with pytest.raises(Exception, match="GUARD_WEBHOOK_SECRET"):  # noqa: SIM117
        with guard_client(sqlite_url, webhook_url="http://127.0.0.1:9/hook"):
            pass


def test_the_default_case_url_opens_the_case_page() -> None:
    from guard.admin.routes import PREFIX
    from guard.settings import Settings

    path = Settings().admin_case_url.split("8000", 1)[1]
    assert path.startswith(PREFIX + "/cases/"), "webhooks link to the admin page's case route"
