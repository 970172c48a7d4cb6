"""Working the queue in a real browser: Debian's chromium driven by Playwright against the guard
served by uvicorn, with real PostgreSQL. The keyboard flow (j/k, a, e, t, d, ?, never while typing),
the next waiting case after an action, presence, the accessibility checks (axe-core run in the page:
no serious or critical violation on the queue, a case, the policy editor and the users page with
its sign-in locks' Unlock forms) and the pages at 390 px width. Screenshots go to docs/screenshots/.
In CI (CI=true) a browser or axe-core that is missing fails the test; elsewhere it skips
(``make browser-deps`` installs axe-core)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from guard.admin import auth
from guard.admin.queries import AdminQueries
from guard.store import Store
from guard.tables import QueueItem, utcnow
from tests.apptools import b64, png_bytes
from tests.browsertools import SCREENSHOTS, api, new_page, served, sign_in, unavailable, until

pytestmark = pytest.mark.integration

AXE = Path(__file__).resolve().parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
FOLD = 900
USERS = {"sam": "supervisor", "ana": "supervisor", "olga": "policy_owner", "root": "admin"}


@pytest.fixture
def server(pg_url: str, cheap_hashes: None) -> Iterator[tuple[str, Store]]:
    """The served guard with two supervisors (sam, ana), a policy owner (olga) and an admin (root),
    whose passwords hash fast."""
    with served(pg_url, USERS, secret_key="desk-e2e") as found:
        yield found


def four_cases(base: str, store: Store) -> list[dict[str, Any]]:
    """Three reviews and, third, an escalation in Chinese with a photo; oldest first."""
    out = []
    for i, (question, reply, photo) in enumerate(
        [
            ("Seam came open (1)", "We can repair the seam for free [score=0.45]", False),
            ("Zip is stuck (2)", "Try a little soap on the zip [score=0.44]", False),
            ("口袋开线怎么办？", "感谢您的反馈，本品支持7天无理由退换 [score=0.03]", True),
            ("Button fell off (4)", "We will send you a new button [score=0.46]", False),
        ]
    ):
        body: dict[str, Any] = {"conversation_id": f"c-{i + 1}", "question": question, "reply": reply}
        if photo:
            body["image"] = {"data": b64(png_bytes((160, 120), "orange"))}
        out.append(api(base, "/v1/guard", body))
    assert [c["action"] for c in out] == ["review", "review", "escalate", "review"]
    until(lambda: len(store.queue()) == 4)
    return out


def case_state(store: Store, item: str) -> tuple[str, str | None, str | None]:
    case = AdminQueries(store.engine).case(item)
    assert case is not None
    return case.item.state, case.item.final_reply, case.item.note


def below_fold(page: Any, selector: str) -> float:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return float(box["y"] + box["height"])


def test_the_queue_is_worked_from_the_keyboard(browser: Any, server: tuple[str, Store]) -> None:
    from playwright.sync_api import expect

    base, store = server
    c1, c2, c3, c4 = (c["escalation_id"] for c in four_cases(base, store))
    with AdminQueries(store.engine).session() as s:  # c1 waited 3 hours, c2 1.5: 2 hours are promised
        for item, hours in ((c1, 3.0), (c2, 1.5)):
            s.execute(
                update(QueueItem)
                .where(QueueItem.id == item)
                .values(created_at=utcnow() - timedelta(hours=hours))
            )
    ctx = browser.new_context(viewport={"width": 1280, "height": FOLD})
    page = ctx.new_page()
    errors: list[str] = []
    page.on(
        "console", lambda m: errors.append(f"{m.text} {m.location.get('url')}") if m.type == "error" else None
    )
    sign_in(page, base, "sam")
    assert page.url.endswith("/admin/queue")
    expect(page.locator("#queue-count")).to_contain_text("4 cases")
    expect(page.locator("#state-filter option[value=pending]")).to_have_text("waiting (4)")
    expect(page.locator("table.queue .photo-mark")).to_have_count(1)
    waits = page.locator("table.queue td.wait")
    expect(waits.nth(0)).to_have_text("3 h 0 min overdue")
    expect(waits.nth(1)).to_have_text("1 h 30 min due soon")
    assert "wait-ok" in (waits.nth(2).get_attribute("class") or "")
    colours = [waits.nth(i).evaluate("el => getComputedStyle(el).color") for i in range(3)]
    assert len(set(colours)) == 3, colours
    expect(page.locator("table.queue .draft-excerpt").first).to_contain_text("We can repair the seam")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "queue.png"), full_page=True)

    # The skip link is the first stop of Tab and moves focus to the content.
    page.keyboard.press("Tab")
    expect(page.locator("a.skip")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()

    # j / k move between the cases, Enter opens one.
    links = page.locator("table.queue a.case-link")
    page.keyboard.press("j")
    expect(links.nth(0)).to_be_focused()
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(links.nth(2)).to_be_focused()
    page.keyboard.press("k")
    page.keyboard.press("k")
    expect(links.nth(0)).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/admin/cases/{c1}")

    # A review: the draft and the actions are above the fold, approving is the primary action.
    expect(page.locator("form.primary #approve")).to_be_visible()
    for selector in ("blockquote.draft", "#approve", "#edit-send", "#take-over", "#dismiss"):
        assert below_fold(page, selector) <= FOLD, f"{selector} is below the fold"
    page.keyboard.press("?")
    expect(page.locator("#shortcuts")).to_have_attribute("open", "")
    expect(page.locator("#shortcuts .shortcut-panel")).to_contain_text("approve and send the draft")
    page.keyboard.press("?")
    expect(page.locator("#shortcuts")).not_to_have_attribute("open", "")
    page.keyboard.press("j")
    page.wait_for_url(f"**/admin/cases/{c2}")
    page.keyboard.press("k")
    page.wait_for_url(f"**/admin/cases/{c1}")

    # Typing in a field fires no shortcut, and Enter in the take-over note does not take over.
    page.click("#take-over-note")
    page.keyboard.type("a")
    page.keyboard.press("Enter")
    page.keyboard.type("jtd")
    expect(page.locator("#take-over-note")).to_have_value("a\njtd")
    assert page.url.endswith(f"/admin/cases/{c1}") and case_state(store, c1)[0] == "pending"
    page.keyboard.press("Escape")  # leaves the field; shortcuts work again
    page.keyboard.press("a")
    page.wait_for_url(f"**/admin/cases/{c2}?notice=case_done_next*")
    expect(page.locator("p.notice")).to_contain_text("This is the next waiting case")
    assert case_state(store, c1) == ("approved", "We can repair the seam for free [score=0.45]", None)

    # e edits: Ctrl+Enter sends the edited reply, and the next waiting case opens.
    page.keyboard.press("e")
    expect(page.locator("#edit-reply")).to_be_focused()
    page.keyboard.press("Control+a")
    page.keyboard.type("Rub a candle on the zip's teeth; if it still sticks we replace it.")
    page.keyboard.press("Control+Enter")
    page.wait_for_url(f"**/admin/cases/{c3}?*")
    assert case_state(store, c2) == (
        "edited",
        "Rub a candle on the zip's teeth; if it still sticks we replace it.",
        None,
    )

    # An escalation scored 0.03: taking over is the primary action; the Chinese text says its language.
    expect(page.locator("form.primary #take-over")).to_be_visible()
    expect(page.locator("form.primary #approve")).to_have_count(0)
    expect(page.locator("blockquote.question")).to_have_attribute("lang", "zh")
    expect(page.locator("blockquote.draft")).to_have_attribute("lang", "zh")
    for selector in ("blockquote.draft", "#take-over", "#approve", "#dismiss"):
        assert below_fold(page, selector) <= FOLD, f"{selector} is below the fold"
    photo = page.locator("img.photo")
    until(lambda: photo.evaluate("img => img.complete && img.naturalWidth") == 160)
    page.screenshot(path=str(SCREENSHOTS / "case.png"))
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.keyboard.press("a")  # sending an escalated draft asks first; "no" sends nothing
    until(lambda: bool(asked))
    assert asked == ["The guard escalated this draft (score 0.030). Send it to the customer as it is?"]
    assert page.url.split("?")[0].endswith(f"/admin/cases/{c3}") and case_state(store, c3)[0] == "pending"
    page.keyboard.press("t")
    page.wait_for_url(f"**/admin/cases/{c4}?*")
    assert case_state(store, c3)[0] == "taken_over"

    # d goes to the dismiss reason; Enter there adds a line; the button dismisses; the queue is empty.
    page.keyboard.press("d")
    expect(page.locator("#dismiss-reason")).to_be_focused()
    page.keyboard.type("duplicate")
    page.keyboard.press("Enter")
    assert case_state(store, c4)[0] == "pending"
    page.click("#dismiss")
    page.wait_for_url("**/admin/queue?notice=case_done*")
    expect(page.locator("p.empty")).to_have_text("No cases match.")
    expect(page.locator("#state-filter option[value=all]")).to_have_text("all (4)")
    assert case_state(store, c4) == ("dismissed", None, "duplicate")
    ctx.close()
    assert not [e for e in errors if not e.endswith("/favicon.ico")], errors


def test_the_next_case_is_one_nobody_else_has_open(browser: Any, server: tuple[str, Store]) -> None:
    from playwright.sync_api import expect

    base, store = server
    c1, c2, c3, _ = (c["escalation_id"] for c in four_cases(base, store))
    ana_ctx, ana = new_page(browser, height=FOLD)
    sign_in(ana, base, "ana")
    ana.clock.install()
    ana.goto(f"{base}/admin/cases/{c1}?action=review")
    expect(ana.locator("#presence")).to_have_text("Nobody else has this case open.")

    sam_ctx, sam = new_page(browser, height=FOLD)
    sign_in(sam, base, "sam")
    sam.clock.install()
    sam.goto(f"{base}/admin/cases/{c1}?action=review")
    expect(sam.locator("#presence")).to_have_text("Also open now by ana")
    ana.clock.fast_forward(16_000)  # her page's next heartbeat
    expect(ana.locator("#presence")).to_have_text("Also open now by sam")

    ana.goto(f"{base}/admin/cases/{c2}?action=review")  # leaving c1 tells the server
    sam.clock.fast_forward(16_000)
    expect(sam.locator("#presence")).to_have_text("Nobody else has this case open.")
    with sam.expect_navigation():  # c2 is open by ana: sam's next case is c4 (c3 is an escalation)
        sam.keyboard.press("a")
    assert f"/admin/cases/{c1}" not in sam.url and f"/admin/cases/{c2}" not in sam.url
    assert f"/admin/cases/{c3}" not in sam.url and "action=review" in sam.url
    expect(sam.locator(".position")).to_contain_text("of 2")  # c2 and c4 wait under action=review

    # ana acts on c2; sam, acting on it a moment later from a stale page, is told who did.
    sam.goto(f"{base}/admin/cases/{c2}?action=review")
    with ana.expect_navigation():
        ana.keyboard.press("a")
    sam.click("#approve")
    expect(sam.locator("p.problem")).to_contain_text("Another supervisor (ana) has already acted")
    assert case_state(store, c2)[0] == "approved"
    ana_ctx.close()
    sam_ctx.close()


def axe_problems(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page, one line each."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — " + "; ".join(n["target"][0] for n in v["nodes"][:4])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_accessibility_and_narrow_screens(browser: Any, server: tuple[str, Store]) -> None:
    from playwright.sync_api import expect

    if not AXE.exists():
        unavailable(f"axe-core is not installed at {AXE}: run `make browser-deps`")
    base, store = server
    cases = four_cases(base, store)
    escalated = cases[2]["escalation_id"]
    pages = [
        ("queue", "/admin/queue", "table.queue"),
        ("case", f"/admin/cases/{escalated}", "form.primary"),
        ("policy editor", "/admin/policies/default", "#policy-form"),
        ("users", "/admin/users", "table.users >> nth=0"),
    ]
    others = ["/admin/policies", "/admin/dashboard", "/admin/outcomes", "/admin/audit", "/admin/playground"]
    # Sign-in locks (sam from one address, and another address for everyone): the Users page then
    # shows both kinds of Unlock form, and axe checks them too.
    AdminQueries(store.engine).login_failed(
        [auth.user_throttle_key("sam", "203.0.113.7"), auth.address_throttle_key("198.51.100.9")],
        limit=1,
        window_s=900,
        lock_s=900,
    )
    found: dict[str, list[str]] = {}
    widths: dict[str, int] = {}
    for width, height in ((1280, FOLD), (390, 844)):
        # bypass_csp lets the test add axe's script to pages whose CSP allows only their own scripts.
        ctx, page = new_page(browser, width=width, height=height, bypass_csp=True)
        sign_in(page, base, "root")
        for name, path, ready in pages:
            page.goto(base + path)
            expect(page.locator(ready)).to_be_visible()
            if name == "users":
                expect(page.get_by_role("button", name="Unlock sam", exact=True)).to_be_visible()
                expect(page.get_by_role("button", name="Unlock 198.51.100.9", exact=True)).to_be_visible()
            problems = axe_problems(page)
            if problems:
                found[f"{name} at {width} px"] = problems
            if width == 390:
                widths[name] = int(page.evaluate("() => document.documentElement.scrollWidth"))
                if name == "case":
                    page.screenshot(path=str(SCREENSHOTS / "case-narrow.png"), full_page=True)
                if name == "queue":
                    page.screenshot(path=str(SCREENSHOTS / "queue-narrow.png"), full_page=True)
        if width == 390:  # the other pages fit a phone too
            for path in others:
                page.goto(base + path)
                widths[path] = int(page.evaluate("() => document.documentElement.scrollWidth"))
        ctx.close()
    assert not found, found
    assert all(w <= 390 for w in widths.values()), f"horizontal overflow at 390 px: {widths}"
    assert set(widths) == {name for name, _, _ in pages} | set(others)
