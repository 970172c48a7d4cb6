"""End to end in a real browser: Debian's chromium driven by Playwright against the guard served
by uvicorn on a loopback port, with real PostgreSQL. Screenshots of the main pages go to
docs/screenshots/. The browser is the one all browser modules share (tests/browsertools.py, started
by conftest.py); in CI (CI=true) a browser that cannot start fails the test, elsewhere it skips."""

from __future__ import annotations

from typing import Any

import pytest

from guard.admin.queries import AdminQueries
from guard.store import Store
from tests.apptools import b64, png_bytes
from tests.browsertools import SCREENSHOTS, api, new_page, sign_in, until
from tests.browsertools import server as server  # fixture

pytestmark = pytest.mark.integration


def held(store: Store) -> list[Any]:
    """The waiting queue items that hold a reply (not the audit copies of answered ones)."""
    return [item for item in store.queue() if item.kind != "audit"]


def test_supervisor_and_policy_owner_in_a_real_browser(browser: Any, server: tuple[str, Store]) -> None:
    from playwright.sync_api import expect

    base, store = server
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    escalated = api(
        base,
        "/v1/guard",
        {
            "conversation_id": "c-1029",
            "question": "口袋开线怎么办？<script>alert(1)</script>",
            "reply": "感谢您的反馈，本品支持7天无理由退换 [score=0.12]",
            "image": {"data": b64(png_bytes((160, 120), "orange"))},
        },
    )
    assert escalated["action"] == "escalate"
    reviews = [
        api(base, "/v1/guard", {"question": f"Seam came open ({i})", "reply": "We can fix it [score=0.45]"})
        for i in range(3)
    ]
    assert {r["action"] for r in reviews} == {"review"}
    for score in ("0.55", "0.8", "0.9"):
        api(base, "/v1/guard", {"question": "Where is my parcel?", "reply": f"On its way [score={score}]"})
    # The four held cases are queued; an answered one may also be copied for audit (the default
    # policy samples a few percent of sends and follow-ups by decision id), so count them apart.
    until(lambda: store.count_decisions() == 7 and len(held(store)) == 4)
    waiting = len(store.queue())

    # A supervisor works the queue: opens the escalated case with its photo, edits and sends.
    errors: list[str] = []
    sup, page = new_page(browser, errors=errors)
    page.goto(f"{base}/admin/login")
    page.screenshot(path=str(SCREENSHOTS / "login.png"))
    sign_in(page, base, "sam")
    assert page.url.endswith("/admin/queue")
    expect(page.locator("table.queue tbody tr")).to_have_count(waiting)
    page.click(f"a[href='/admin/cases/{escalated['escalation_id']}']")
    expect(page.locator("blockquote.question")).to_contain_text("<script>alert(1)</script>")
    expect(page.locator("dd.conversation")).to_have_text("c-1029")
    photo = page.locator("img.photo")
    until(lambda: photo.evaluate("img => img.complete && img.naturalWidth") == 160)
    expect(page.locator("#score-bar rect.marked")).to_have_count(1)
    page.fill("#edit-reply", "已为您登记口袋开线问题，我们将免费为您修补。")
    page.click("#edit-send")
    expect(page.locator("p.notice")).to_contain_text("Done")
    decision = api(base, f"/v1/decisions/{escalated['decision_id']}")
    assert (
        decision["state"] == "edited" and decision["reply"] == "已为您登记口袋开线问题，我们将免费为您修补。"
    )
    case = AdminQueries(store.engine).case(escalated["escalation_id"])
    assert case is not None and case.item.resolved_by == "sam"
    # ... and cannot open the policy page.
    response = page.goto(f"{base}/admin/policies/default")
    assert response is not None and response.status == 403
    expect(page.locator("h1")).to_have_text("Not allowed")
    assert page.locator("#policy-form").count() == 0
    sup.close()

    # A policy owner moves a threshold, sees the preview change, publishes.
    owner, page = new_page(browser, height=1000, errors=errors)
    sign_in(page, base, "olga")
    page.goto(f"{base}/admin/policies/default")
    review_new = page.locator("#preview-counts tr[data-action=review] td.new")
    follow_new = page.locator("#preview-counts tr[data-action=follow_up] td.new")
    expect(review_new).to_have_text("3")
    expect(follow_new).to_have_text("1")
    page.fill("input[name=band_hi_1]", "0.44")  # the review band now ends at 0.44 ...
    expect(page.locator("input[name=band_lo_2]")).to_have_value("0.44")  # ... and follow-up starts there
    expect(review_new).to_have_text("0")  # the preview updated in place, without a reload
    expect(follow_new).to_have_text("4")
    expect(page.locator("#changed-count")).to_have_text("3")
    page.fill("textarea[name=tpl_followup_en]", "We logged {{ issue or 'your request' }} as {{ case_ref }}.")
    expect(page.locator("[data-sample='followup.en']")).to_have_text(
        "We logged open seam on the pocket as RG-SAMPLE1."
    )
    page.screenshot(path=str(SCREENSHOTS / "policy.png"), full_page=True)
    page.click("#publish-button")  # asks first: the preview's summary and a change note
    expect(page.locator("#confirm-summary")).to_contain_text("3 cases move from review to follow-up")
    page.fill("#change-note", "Review only below 0.44.")
    page.click("#confirm-button")
    expect(page.locator("p.notice")).to_contain_text("Published")
    expect(page.locator("table.versions > tbody > tr")).to_have_count(2)

    # The next check uses the new version.
    after = api(base, "/v1/guard", {"question": "Seam came open", "reply": "We can fix it [score=0.45]"})
    assert after["policy"]["version"] == 2 and after["action"] == "follow_up"

    page.goto(f"{base}/admin/dashboard")
    expect(page.locator("svg")).to_have_count(2)
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
    page.goto(f"{base}/admin/outcomes")
    page.screenshot(path=str(SCREENSHOTS / "outcomes.png"), full_page=True)
    owner.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors
