"""A guard that measures itself, in a real browser (Debian's chromium via Playwright, real
PostgreSQL): a sampled send becomes an audit item, is marked with the keyboard and shows on the
outcomes page; a channel whose supervisors approve a band's cases gets a draft score map that moves
them, previewed and published, then switched off. Screenshots go to docs/screenshots/."""

from __future__ import annotations

from typing import Any

import pytest

from guard.admin.queries import AdminQueries
from guard.admin.records import QueueFilter
from guard.policies import default_policy, parse_policy, policy_document
from guard.store import Store
from tests.apptools import agree_with_all
from tests.browsertools import SCREENSHOTS, api, new_page, sign_in, until
from tests.browsertools import server as server  # fixture

pytestmark = pytest.mark.integration


def audit_all_sends(store: Store, channel: str) -> None:
    doc = policy_document(default_policy(channel))
    doc["bands"][-1]["audit_sample"] = 1.0
    store.publish_policy(parse_policy(doc), "test")


def test_a_sampled_send_is_audited_with_the_keyboard_and_counted(
    browser: Any, server: tuple[str, Store]
) -> None:
    from playwright.sync_api import expect

    base, store = server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    audit_all_sends(store, "default")  # shop-b has no policy: it is decided by default's
    sent = api(
        base,
        "/v1/guard",
        {"channel": "shop-b", "question": "Where is my parcel?", "reply": "It left today [score=0.9]"},
    )
    assert sent["action"] == "send" and sent["escalation_id"] is None and sent["reply"]
    held = api(base, "/v1/guard", {"question": "Seam came open", "reply": "We can fix it [score=0.45]"})
    queries = AdminQueries(store.engine)
    until(lambda: len(queries.queue_page(QueueFilter(kind="audit"))) == 1 and len(store.queue()) == 2)
    [audit] = queries.queue_page(QueueFilter(kind="audit"))
    assert audit.decision.id == sent["decision_id"] and held["escalation_id"] != audit.item.id

    errors: list[str] = []
    sup, page = new_page(browser, errors=errors)
    sign_in(page, base, "sam")
    link = page.locator(f"a[href='/admin/cases/{audit.item.id}']")
    expect(link).to_have_count(1)  # the audit item is in the queue
    link.click()
    expect(page.locator("h1")).to_contain_text("Audit")
    expect(page.locator("blockquote.sent")).to_have_text("It left today [score=0.9]")
    # Typing in the note never marks the item ...
    page.fill("input[name=note]", "")
    page.locator("input[name=note]").type("yes, no")
    expect(page.locator("#audit-form")).to_have_count(1)
    page.locator("input[name=note]").fill("")
    page.locator("h1").click()  # ... out of the field, one key chooses the grade, one marks it
    page.screenshot(path=str(SCREENSHOTS / "audit-item.png"), full_page=True)
    page.keyboard.press("1")
    expect(page.locator("input[name=grade][value='1']")).to_be_checked()
    page.keyboard.press("n")
    expect(page.locator("p.notice")).to_contain_text("Marked")
    decision = api(base, f"/v1/decisions/{sent['decision_id']}")
    assert decision["state"] == "sent" and decision["escalation_id"] is None
    assert decision["audit"]["verdict"] == "wrong" and decision["audit"]["grade"] == 1
    assert decision["audit"]["marked_by"] == "sam"
    sup.close()

    owner, page = new_page(browser, height=1000, errors=errors)
    sign_in(page, base, "olga")
    page.goto(f"{base}/admin/outcomes")
    row = page.locator("table.outcomes tr[data-channel='shop-b'][data-action='send']")
    expect(row).to_have_count(1)  # under the decision's channel, not the policy's
    expect(row.locator("td.policy")).to_have_text("default v2")
    expect(row.locator("td.audit-wrong")).to_have_text("1")
    expect(row.locator("td.right")).to_have_text("0/1 (0%)")
    expect(row.locator("td.interval")).to_have_text("0%–79%")
    expect(page.locator("#wrong-sends svg rect")).to_have_count(1)
    page.screenshot(path=str(SCREENSHOTS / "outcomes.png"), full_page=True)
    owner.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_supervisors_approvals_move_a_band_through_a_published_map(
    browser: Any, server: tuple[str, Store]
) -> None:
    from playwright.sync_api import expect

    base, store = server
    audit_all_sends(store, "shop")
    for i in range(12):  # review band: supervisors approve every one as it is
        api(
            base,
            "/v1/guard",
            {"channel": "shop", "question": f"review {i}", "reply": f"ok [score={0.44 + 0.001 * i}]"},
        )
    for i in range(10):
        api(base, "/v1/guard", {"channel": "shop", "question": f"send {i}", "reply": "ok [score=0.85]"})
        api(
            base,
            "/v1/guard",
            {"channel": "shop", "question": f"esc {i}", "reply": f"no [score={0.15 + 0.01 * i}]"},
        )
    queries = AdminQueries(store.engine)
    until(lambda: len(queries.queue_page(limit=100)) == 32)
    agree_with_all(queries, queries.queue_page(limit=100), "sam")
    before = api(base, "/v1/guard", {"channel": "shop", "question": "again", "reply": "ok [score=0.45]"})
    assert before["action"] == "review"

    errors: list[str] = []
    owner, page = new_page(browser, height=1000, errors=errors)
    sign_in(page, base, "olga")
    page.goto(f"{base}/admin/outcomes?channel=shop")
    page.click("a[href='/admin/calibration/shop']")
    expect(page.locator("#current-map")).to_contain_text("No map")
    page.click("#fit-button")
    expect(page.locator("p.notice")).to_contain_text("Fitted")
    expect(page.locator("#agree-before")).to_contain_text("20/32")
    expect(page.locator("#fit-report")).to_contain_text("labels it did not fit on")
    moved = page.locator("#map-transitions li[data-from='review'][data-to='send']")
    expect(moved).to_contain_text("move from review to send")
    expect(page.locator("#map-counts tr[data-action='review'] td.new")).to_have_text("0")
    page.screenshot(path=str(SCREENSHOTS / "calibration.png"), full_page=True)
    page.fill("#draft input[name=note]", "supervisors approve the review band")
    page.click("#publish-map")
    expect(page.locator("p.notice")).to_contain_text("Published")
    expect(page.locator("#map-versions tbody tr")).to_have_count(1)
    after = api(base, "/v1/guard", {"channel": "shop", "question": "again", "reply": "ok [score=0.45]"})
    assert after["action"] == "send" and "+cal-shop-v1-" in after["scorer"]["version"]
    assert not after["cached"]  # the raw score of these texts is cached, but not under this map's key
    page.click("#map-off")
    expect(page.locator("p.notice")).to_contain_text("Switched off")
    expect(page.locator("#map-versions tbody tr")).to_have_count(2)
    off = api(base, "/v1/guard", {"channel": "shop", "question": "again", "reply": "ok [score=0.45]"})
    assert off["action"] == "review" and "+cal-" not in off["scorer"]["version"]
    owner.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors
