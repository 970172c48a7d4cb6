"""Audit sampling end to end through TestClient (SQLite): a sampled send is copied to the queue as
an ``audit`` item after it was answered, marked right or wrong with an optional grade, and shows on
the outcomes page (by the decision's channel), in GET /v1/decisions/{id} and in case.outcome."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from guard.admin.queries import AdminQueries
from guard.admin.records import QueueFilter
from guard.handoff import enqueue_outcome
from guard.policies import audit_sampled, default_policy, parse_policy, policy_document
from tests.apptools import flush, queries_of, runtime_of, signed_in
from tests.test_admin import client as client  # fixture: the guard with sup, owner and boss
from tests.test_admin import outcomes as outcomes  # fixture: the decisions the outcome hook was told of

pytestmark = pytest.mark.usefixtures("cheap_hashes")  # test-sized argon2 (conftest.py)


def audit_everything(client: TestClient, channel: str = "default", share: float = 1.0) -> None:
    doc = policy_document(default_policy(channel))
    doc["bands"][-1]["audit_sample"] = share  # the send band
    runtime_of(client).store.publish_policy(parse_policy(doc), "test")
    runtime_of(client).pipeline.policies.invalidate()


def check(client: TestClient, score: str, channel: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"question": "Where is my parcel?", "reply": f"On its way [score={score}]"}
    if channel:
        body["channel"] = channel
    r = client.post("/v1/guard", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_a_sampled_send_is_answered_at_once_and_becomes_an_audit_item(
    client: TestClient, outcomes: list[str]
) -> None:
    audit_everything(client)
    sent = check(client, "0.9")
    assert sent["action"] == "send" and sent["reply"] == "On its way [score=0.9]"
    assert sent["escalation_id"] is None  # nothing changes for the customer
    flush(client)
    queries = queries_of(client)
    [case] = queries.queue_page()
    assert case.item.kind == "audit" and case.decision.id == sent["decision_id"]
    decision = client.get(f"/v1/decisions/{sent['decision_id']}").json()
    assert decision["state"] == "sent" and decision["escalation_id"] is None
    assert decision["reply"] == "On its way [score=0.9]"
    assert decision["audit"]["state"] == "pending" and decision["audit"]["verdict"] is None

    csrf = signed_in(client, "sup")
    page = client.get(f"/admin/cases/{case.item.id}")
    assert page.status_code == 200 and 'id="audit-form"' in page.text and "What the customer got" in page.text
    assert "/static/audit.js" in page.text
    # It cannot be approved, edited or taken over: the customer already has the reply.
    r = client.post(f"/admin/cases/{case.item.id}/act", data={"op": "approve", "csrf_token": csrf})
    assert r.status_code == 409 and "sent already" in r.text  # the audit page again, nothing done
    assert queries.case(case.item.id).item.state == "pending"  # type: ignore[union-attr]
    # A bad verdict or grade changes nothing.
    r = client.post(f"/admin/cases/{case.item.id}/mark", data={"verdict": "maybe", "csrf_token": csrf})
    assert r.status_code == 422
    r = client.post(
        f"/admin/cases/{case.item.id}/mark", data={"verdict": "wrong", "grade": "7", "csrf_token": csrf}
    )
    assert r.status_code == 422
    r = client.post(
        f"/admin/cases/{case.item.id}/mark",
        data={"verdict": "wrong", "grade": "1", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/admin/queue?notice=audit_done"
    assert outcomes == [sent["decision_id"]]
    again = client.post(f"/admin/cases/{case.item.id}/mark", data={"verdict": "right", "csrf_token": csrf})
    assert again.status_code == 409
    marked = client.get(f"/v1/decisions/{sent['decision_id']}").json()["audit"]
    assert marked["state"] == "marked" and marked["verdict"] == "wrong" and marked["grade"] == 1
    assert marked["marked_by"] == "sup" and marked["marked_at"]
    assert queries.audit_entries()[0].action == "case.audit"


def test_the_webhook_outcome_carries_the_audit(client: TestClient) -> None:
    audit_everything(client)
    sent = check(client, "0.95")
    flush(client)
    queries = queries_of(client)
    [case] = queries.queue_page()
    assert queries.mark_audit(case.item.id, "right", None, "sup") is not None
    store = runtime_of(client).store
    settings = runtime_of(client).settings.__class__(
        **{
            **runtime_of(client).settings.__dict__,
            "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_secret": "s",
        }
    )
    delivery_id = enqueue_outcome(store, settings, sent["decision_id"])
    assert delivery_id is not None
    [delivery] = store.deliveries(sent["decision_id"])
    import json

    body = json.loads(delivery.body)
    assert body["event"] == "case.outcome" and body["kind"] == "audit" and body["state"] == "audited"
    assert body["audit"]["verdict"] == "right" and body["audit"]["grade"] is None
    assert body["final_reply"] == "On its way [score=0.95]"


def test_sampling_follows_the_decision_id_and_the_band(client: TestClient) -> None:
    audit_everything(client, share=0.5)
    sent = [check(client, "0.9") for _ in range(40)]
    held = [check(client, "0.45") for _ in range(5)]  # review: held, never audited
    flush(client)
    audited = {c.decision.id for c in queries_of(client).queue_page(QueueFilter(kind="audit"))}
    expected = {s["decision_id"] for s in sent if audit_sampled(s["decision_id"], 0.5)}
    assert audited == expected and 5 < len(audited) < 35
    reviews = {c.decision.id for c in queries_of(client).queue_page(QueueFilter(kind="review"))}
    assert reviews == {h["decision_id"] for h in held}


def test_marking_is_atomic_and_only_for_audit_items(client: TestClient) -> None:
    audit_everything(client)
    check(client, "0.9")
    held = check(client, "0.1")
    flush(client)
    queries: AdminQueries = queries_of(client)
    [audit] = queries.queue_page(QueueFilter(kind="audit"))
    assert queries.mark_audit(held["escalation_id"], "right", None, "sup") is None
    assert queries.resolve_case(audit.item.id, "approved", "sup", final_reply="x", note=None) is None
    assert queries.mark_audit(audit.item.id, "right", 2, "sup") is not None
    assert queries.mark_audit(audit.item.id, "wrong", 0, "other") is None


def test_outcomes_count_audits_by_the_decisions_channel_with_intervals(client: TestClient) -> None:
    audit_everything(client)  # shop-b has no policy of its own: it is decided by default's
    for _ in range(3):
        check(client, "0.9", channel="shop-b")
    check(client, "0.9")
    flush(client)
    queries = queries_of(client)
    items = queries.queue_page(QueueFilter(kind="audit"))
    for i, case in enumerate(items):
        queries.mark_audit(
            case.item.id, "wrong" if i == 0 and case.decision.channel == "shop-b" else "right", None, "s"
        )
    signed_in(client, "owner")
    page = client.get("/admin/outcomes").text
    rows = re.findall(
        r'<tr data-channel="([^"]+)" data-band="([^"]+)" data-action="([^"]+)">(.*?)</tr>', page, re.S
    )
    by_channel = {(c, a): body for c, _b, a, body in rows}
    assert set(by_channel) == {("default", "send"), ("shop-b", "send")}
    shop = by_channel[("shop-b", "send")]
    assert "default v2" in shop  # the policy that decided, by version (v1 is the seeded one)
    assert '<td class="right">2/3 (67%)</td>' in shop and '<td class="labels">3</td>' in shop
    assert '<td class="interval">21%–94%</td>' in shop  # Wilson 95% of 2/3
    assert 'id="wrong-sends"' in page and "<svg" in page


def editor_form(csrf: str, **extra: str) -> dict[str, str]:
    data = {
        "csrf_token": csrf,
        "op": "publish",
        "on_error": "escalate",
        "uncertain_action": "review",
        "instruction": "Judge the reply.",
    }
    bands = [
        ("0", "0.4", "escalate"),
        ("0.4", "0.5", "review"),
        ("0.5", "0.7", "follow_up"),
        ("0.7", "1", "send"),
    ]
    for i, (lo, hi, action) in enumerate(bands):
        data[f"band_lo_{i}"], data[f"band_hi_{i}"], data[f"band_action_{i}"] = lo, hi, action
    data.update(extra)
    return data


def test_the_editor_sets_a_bands_audit_sample_in_percent(client: TestClient) -> None:
    csrf = signed_in(client, "owner")
    page = client.get("/admin/policies/default").text
    assert 'name="band_audit_4" id="band_audit_4"' in page
    assert '<label for="band_audit_4" class="visually-hidden">Band 5: audit sample, percent</label>' in page
    assert 'placeholder="2"' in page and 'placeholder="5"' in page  # the defaults of send, follow-up
    form = editor_form(csrf, band_audit_3="10", band_audit_2="0")
    asked = client.post("/admin/policies/default", data=form)  # the confirmation shows the change
    digest = re.search(r'name="confirm_digest" value="([0-9a-f]{64})"', asked.text)
    assert asked.status_code == 200 and digest is not None
    changes = asked.text[asked.text.index('id="confirm"') : asked.text.index('id="change-note"')]
    assert "audit sample, scores [0.7,1.0]" in changes and "10%" in changes, changes
    assert "audit sample, scores [0.5,0.7)" in changes and "0%" in changes
    assert runtime_of(client).store.active_policy("default") is None or all(
        b.audit_sample is None
        for b in runtime_of(client).store.active_policy("default").bands  # type: ignore[union-attr]
    ), "nothing published before the confirmation"
    confirmed = {
        **form,
        "op": "confirm_publish",
        "confirm_digest": digest.group(1),
        "change_note": "audit more",
    }
    r = client.post("/admin/policies/default", data=confirmed)
    assert r.status_code == 200 and "Published" in r.text
    policy = runtime_of(client).store.active_policy("default")
    assert policy is not None and [b.audit_sample for b in policy.bands] == [None, None, 0.0, 0.1]
    assert 'name="band_audit_3" id="band_audit_3" value="10"' in client.get("/admin/policies/default").text
    r = client.post("/admin/policies/default", data=editor_form(csrf, band_audit_0="5"))
    assert r.status_code == 422 and "audit_sample must be 0 for a escalate band" in r.text
    r = client.post("/admin/policies/default", data=editor_form(csrf, band_audit_3="lots"))
    assert r.status_code == 422 and "row 4: the audit sample &#39;lots&#39; is not a percentage" in r.text
    assert runtime_of(client).store.active_policy("default") == policy  # nothing else was published
    # The band buttons keep each band's audit sample: a split band's halves both have it.
    split = client.post(
        "/admin/policies/default", data={**editor_form(csrf, band_audit_3="10"), "op": "split:3"}
    )
    assert split.status_code == 200 and "Band 4 is split at 0.85" in split.text
    assert 'name="band_audit_3" id="band_audit_3" value="10"' in split.text
    assert 'name="band_audit_4" id="band_audit_4" value="10"' in split.text
    merged = client.post(
        "/admin/policies/default",
        data={**editor_form(csrf, band_audit_2="0", band_audit_3="10"), "op": "merge:2"},
    )
    assert 'name="band_audit_2" id="band_audit_2" value="0"' in merged.text
    assert 'name="band_audit_3"' not in merged.text  # three bands left


def test_wilson_interval_and_wrong_sends_per_day() -> None:
    from datetime import UTC, datetime

    from guard.admin import charts, traffic
    from guard.admin.records import OutcomeRow

    assert traffic.wilson(0, 0) is None
    lo, hi = traffic.wilson(2, 3)  # type: ignore[misc]
    assert round(lo, 3) == 0.208 and round(hi, 3) == 0.939
    lo, hi = traffic.wilson(0, 10)  # type: ignore[misc]
    assert lo == 0.0 and round(hi, 3) == 0.278  # never the "0%, certainly" of a plain share
    lo, hi = traffic.wilson(50, 50)  # type: ignore[misc]
    assert hi == 1.0 and round(lo, 3) == 0.929

    def audit(day: int, verdict: str, channel: str = "a", action: str = "send") -> OutcomeRow:
        return OutcomeRow(
            channel,
            "[0.7,1.0]",
            action,
            0.9,
            "audited",
            kind="audit",
            audit_verdict=verdict,
            created_at=datetime(2026, 12, day, 12, tzinfo=UTC),
        )

    rows = [audit(1, "wrong"), audit(1, "right"), audit(1, "right"), audit(1, "right"), audit(2, "right")]
    rows += [audit(1, "wrong", channel="b"), audit(1, "wrong", action="follow_up")]
    per_day = [
        ("2026-12-01", "a", "send", 40),
        ("2026-12-01", "a", "review", 10),
        ("2026-12-01", "b", "send", 5),
        ("2026-12-02", "a", "send", 8),
        ("2026-12-03", "a", "send", 8),
    ]
    days = traffic.wrong_send_days(rows, per_day, "a")
    assert [(d.day, d.decisions, d.sends, d.audited, d.wrong) for d in days] == [
        ("2026-12-01", 50, 40, 4, 1),
        ("2026-12-02", 8, 8, 1, 0),
        ("2026-12-03", 8, 8, 0, 0),
    ]
    assert days[0].share == 0.8 * 0.25  # 80% of the customers got a send, a quarter of those wrong
    assert days[0].interval is not None and days[0].interval[1] <= 0.8
    assert days[2].share is None  # no audit that day: no measurement, no bar
    everyone = traffic.wrong_send_days(rows, per_day)
    assert everyone[0].decisions == 55 and everyone[0].wrong == 2  # channel b's wrong send too
    chart = charts.rate_per_day([(d.day, d.share, d.interval, d.day) for d in days], title="t")
    assert len(chart.rects) == 2 and len([ln for ln in chart.lines if ln.css == "interval"]) == 2


def test_audit_items_are_apart_from_the_held_cases_on_the_queue_and_dashboard(client: TestClient) -> None:
    """An audit item (its reply was sent) is not a customer waiting: the dashboard counts it apart,
    the queue's Action filter picks it out, and acting on a held case never goes on to one."""
    audit_everything(client)
    check(client, "0.9")  # the oldest pending item: an audit
    first, second = check(client, "0.45"), check(client, "0.45")  # held for review
    flush(client)
    csrf = signed_in(client, "sup")
    dashboard = client.get("/admin/dashboard").text
    waiting = re.search(r'id="tile-waiting"><b>(\d+)</b> waiting in the queue', dashboard)
    audits = re.search(r'id="tile-audits"><a href="/admin/queue\?action=audit"><b>(\d+)</b>', dashboard)
    assert waiting is not None and waiting.group(1) == "2"
    assert audits is not None and audits.group(1) == "1"
    page = client.get("/admin/queue?action=audit").text
    assert '<option value="audit" selected>' in page
    assert page.count('class="pill a-audit"') == 1 and 'class="pill a-review"' not in page
    everything = client.get("/admin/queue").text
    assert everything.count('class="pill a-review"') == 2 and everything.count('class="pill a-audit"') == 1
    r = client.post(
        f"/admin/cases/{first['escalation_id']}/act",
        data={"op": "approve", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith(
        f"/admin/cases/{second['escalation_id']}?"
    )
    r = client.post(
        f"/admin/cases/{second['escalation_id']}/act",
        data={"op": "approve", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/queue?"), "not to the audit"
    waiting = re.search(r'id="tile-waiting"><b>(\d+)</b>', client.get("/admin/dashboard").text)
    assert waiting is not None and waiting.group(1) == "0"
    client.cookies.clear()
    signed_in(client, "owner")  # a policy owner has no queue: the count, without the link
    tile = client.get("/admin/dashboard").text.split('id="tile-audits">', 1)[1].split("</div>", 1)[0]
    assert tile == "<b>1</b> sent replies to audit"
