"""The policy editor in a real browser (Debian's chromium via Playwright, the guard under uvicorn, real
PostgreSQL; the server fixture is tests/browsertools.py's, the browser the one all browser modules
share): the band controls, the preview beside the bands, and publishing and rolling back through a
confirmation with a change note, seen in the versions list and the audit log. Saves
docs/screenshots/policy-bands.png, policy-confirm.png and audit.png."""

from __future__ import annotations

from typing import Any

import pytest

from guard.admin import auth
from guard.admin.queries import AdminQueries
from guard.store import Store
from tests.browsertools import PASSWORD, SCREENSHOTS, api, new_page, sign_in, until
from tests.browsertools import server as server  # fixture

pytestmark = pytest.mark.integration


def band_values(page: Any, edge: str) -> list[str]:
    values: list[str] = page.locator(f"tr.band-row:not([hidden]) input[data-band-{edge}]").evaluate_all(
        "els => els.map(e => e.value)"
    )
    return values


def test_band_controls_and_the_preview_beside_them(browser: Any, server: tuple[str, Store]) -> None:
    from playwright.sync_api import expect

    base, store = server
    for score in ("0.45", "0.45", "0.55", "0.9"):
        api(base, "/v1/guard", {"question": "Seam came open", "reply": f"We can fix it [score={score}]"})
    until(lambda: store.count_decisions() == 4)
    errors: list[str] = []
    ctx, page = new_page(browser, errors=errors)
    sign_in(page, base, "olga")
    page.goto(f"{base}/admin/policies/default")

    # The preview sits beside the bands, in view at 1280x900, not below the form.
    bands, side = page.locator("table.bands").bounding_box(), page.locator("#preview-counts").bounding_box()
    assert bands is not None and side is not None
    assert side["x"] > bands["x"] + bands["width"] - 1, "to the right of the bands"
    assert side["y"] < 900 and side["y"] < bands["y"] + bands["height"], "level with them, on screen"

    # Clearing an upper edge (to type a new one) no longer blanks the next band's lower edge.
    page.fill("#band_hi_1", "")
    expect(page.locator("#band_lo_2")).to_have_value("0.5")
    page.fill("#band_hi_1", "0.5")

    # The case the old way: both edges of row 2 cleared; the problem names the rows as shown.
    page.fill("#band_lo_1", "")
    page.fill("#band_hi_1", "")
    problem = page.locator("#preview .problem")
    expect(problem).to_contain_text("row 1 ends at 0.4 but row 3 starts at 0.5")
    expect(page.locator("tr.band-row[data-row='2']")).to_have_class("band-row invalid")
    expect(page.locator("#band_lo_2")).to_have_attribute("aria-invalid", "true")
    page.reload()  # start again from the policy in force

    # Remove band 2 (review): band 1 below it takes its range; the preview shows the moves.
    page.get_by_role("button", name="Remove band 2").click()
    expect(page.locator("#band-message")).to_contain_text(
        "Band 2 is removed; band 1 below it now reaches 0.5."
    )
    assert band_values(page, "lo") == ["0", "0.5", "0.6", "0.7"]
    assert band_values(page, "hi") == ["0.5", "0.6", "0.7", "1"]
    expect(page.locator("#moves")).to_contain_text("2 from review to escalate")
    expect(page.locator("#changed-count")).to_have_text("2")
    # Split band 1 at its middle, then merge bands 2 and 3 (both follow-up).
    page.get_by_role("button", name="Split band 1").click()
    assert band_values(page, "hi") == ["0.25", "0.5", "0.6", "0.7", "1"]
    page.get_by_role("button", name="Merge band 3 with the next band").click()
    assert band_values(page, "hi") == ["0.25", "0.5", "0.7", "1"]
    expect(page.locator("#band-message")).to_contain_text("Bands 3 and 4 are merged")
    # Every band control has a name a screen reader reads, and every field a label.
    fields = "#policy-form input:not([type=hidden]), #policy-form select, #policy-form textarea"
    unlabelled = page.locator(fields).evaluate_all(
        "els => els.filter(el => !(el.labels && el.labels.length)).map(el => el.name)"
    )
    assert unlabelled == []
    page.screenshot(path=str(SCREENSHOTS / "policy-bands.png"), full_page=False)
    assert len(store.policy_versions("default")) == 1, "band buttons publish nothing"
    ctx.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors

    # Without JavaScript the buttons are plain form buttons, and Enter in a field previews (the
    # form's default button), never a band button.
    ctx, page = new_page(browser, java_script_enabled=False)
    sign_in(page, base, "olga")
    page.goto(f"{base}/admin/policies/default")
    page.get_by_role("button", name="Remove band 5").click()
    expect(page.locator("#band-message")).to_contain_text("Band 5 is removed; band 4 below it now reaches 1.")
    assert band_values(page, "hi") == ["0.4", "0.5", "0.6", "1"]
    page.fill("#band_hi_0", "0.3")
    page.fill("#band_lo_1", "0.3")
    page.press("#band_lo_1", "Enter")
    expect(page.locator("#changed-count")).to_have_text("1")  # 0.9: send -> follow-up (band 5 removed)
    assert band_values(page, "hi") == ["0.3", "0.5", "0.6", "1"], "previewed, not split or removed"
    assert page.locator("#band-message").count() == 0
    ctx.close()


def test_publish_and_roll_back_through_a_confirmation_with_a_change_note(
    browser: Any, server: tuple[str, Store]
) -> None:
    from playwright.sync_api import expect

    base, store = server
    AdminQueries(store.engine).create_user("ada", auth.hash_password(PASSWORD), "admin", actor="test")
    for i in range(3):
        api(base, "/v1/guard", {"question": f"Seam came open ({i})", "reply": "We can fix it [score=0.45]"})
    until(lambda: store.count_decisions() == 3)
    ctx, page = new_page(browser)
    sign_in(page, base, "olga")
    page.goto(f"{base}/admin/policies/default")
    page.select_option("#band_action_1", "escalate")
    expect(page.locator("#changed-count")).to_have_text("3")

    page.click("#publish-button")
    confirm = page.locator("#confirm")
    expect(confirm).to_be_visible()
    expect(page.locator("#confirm-summary")).to_contain_text("3 cases move from review to escalate")
    expect(page.locator("#confirm-changes")).to_contain_text("scores [0.4,0.5)")
    assert page.evaluate("document.activeElement.id") == "change-note"
    page.fill("#change-note", "Borderline seams go to a human during the sale.")
    page.screenshot(path=str(SCREENSHOTS / "policy-confirm.png"), full_page=False)
    page.fill("#change-note", "")
    page.click("#confirm-button")  # no note
    expect(page.locator("#error-change-note")).to_contain_text("Write a change note")
    assert len(store.policy_versions("default")) == 1
    page.fill("#change-note", "Borderline seams go to a human during the sale.")
    page.click("#confirm-button")
    expect(page.locator("p.notice")).to_contain_text("Published")
    first = page.locator("table.versions > tbody > tr").first
    expect(first).to_contain_text("Borderline seams go to a human during the sale.")
    expect(first).to_contain_text("3 cases move from review to escalate")

    # Roll back to v1: the same confirmation, the preview of going back, a labelled new version.
    page.get_by_role("button", name="Roll back to v1…").click()
    expect(page.locator("#confirm-title")).to_have_text("Roll back to v1?")
    expect(page.locator("#confirm-summary")).to_contain_text("3 cases move from escalate to review")
    expect(page.locator("#band_action_1")).to_have_value("review")  # the editor shows v1
    page.fill("#change-note", "The sale is over.")
    page.click("#confirm-button")
    expect(page.locator("p.notice")).to_contain_text("Rolled back")
    first = page.locator("table.versions > tbody > tr").first
    expect(first).to_contain_text("v3")
    expect(first.locator(".pill.rollback")).to_have_text("rollback to v1")
    expect(first).to_contain_text("The sale is over.")
    versions = store.policy_versions("default", newest_first=True)
    assert [(v.version, v.rollback_of, v.note) for v in versions[:2]] == [
        (3, 1, "The sale is over."),
        (2, None, "Borderline seams go to a human during the sale."),
    ]
    ctx.close()

    # An admin reads it in the audit log: notes, readable changes, filtered to the rollback.
    ctx, page = new_page(browser)
    sign_in(page, base, "ada")
    page.goto(f"{base}/admin/audit")
    page.select_option("#f-actor", "olga")
    page.select_option("#f-channel", "default")
    page.click("#audit-filters button[type=submit]")
    rows = page.locator("table.audit > tbody > tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("rollback to v1")
    expect(rows.nth(0).locator("table.changes")).to_contain_text("scores [0.4,0.5)")
    expect(rows.nth(1)).to_contain_text("Borderline seams go to a human during the sale.")
    assert "&quot;bands&quot;" not in page.content() and '"bands"' not in page.inner_text("main")
    page.screenshot(path=str(SCREENSHOTS / "audit.png"), full_page=True)
    page.select_option("#f-action", "policy.rollback")
    page.click("#audit-filters button[type=submit]")
    expect(rows).to_have_count(1)
    ctx.close()
