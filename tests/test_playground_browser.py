"""The playground in a real browser (Debian's chromium via Playwright, the guard under uvicorn, real
PostgreSQL; the server fixture is tests/browsertools.py's, the browser the one all browser modules
share): score one reply, re-rank three, check the order and the colours, and save
docs/screenshots/playground.png."""

from __future__ import annotations

from typing import Any

import pytest

from guard.scoring.base import DEFAULT_INSTRUCTION
from guard.store import Store
from tests.apptools import png_bytes
from tests.browsertools import SCREENSHOTS, api, new_page, sign_in
from tests.browsertools import server as server  # fixture

pytestmark = pytest.mark.integration

# The action colours of admin.css (--send, --follow_up, --review, --escalate).
COLOURS = {
    "send": "rgb(46, 157, 79)",
    "follow_up": "rgb(227, 177, 42)",
    "review": "rgb(239, 125, 34)",
    "escalate": "rgb(214, 52, 44)",
}
PILLS = {  # the pills carry text: darker shades of the same colours, at least 4.5:1 with their text
    "send": "rgb(30, 125, 60)",
    "follow_up": "rgb(227, 177, 42)",
    "review": "rgb(179, 77, 0)",
    "escalate": "rgb(192, 57, 43)",
}
QUESTION = "口袋开线怎么办？<script>alert(1)</script>"
REPLIES = [
    "感谢您的反馈，本品支持7天无理由退换 [score=0.12]",
    "很抱歉口袋开线了，请把照片发给我们，我们免费为您修补 [score=0.86]",
    "请问是哪一边的口袋？ [score=0.55]",
]


def test_score_and_rerank_in_a_real_browser(browser: Any, server: tuple[str, Store], tmp_path: Any) -> None:
    from playwright.sync_api import expect

    base, store = server
    photo = tmp_path / "seam.png"
    photo.write_bytes(png_bytes((160, 120), "orange"))
    errors: list[str] = []
    ctx, page = new_page(browser, height=1000, errors=errors)
    sign_in(page, base, "olga")
    page.click("nav a[href='/admin/playground']")
    expect(page.locator("h1")).to_have_text("Playground")
    expect(page.locator("#pg-instruction")).to_have_value(DEFAULT_INSTRUCTION)

    # Score one reply: the bar with the channel's bands, the action and band, the follow-up.
    page.fill("#pg-question", QUESTION)
    page.set_input_files("#pg-photo", str(photo))
    page.fill("#pg-replies", REPLIES[2])
    page.click("#score-button")
    expect(page.locator("#verdict")).to_have_attribute("data-action", "follow_up")
    expect(page.locator("#score-value")).to_have_text("0.550")
    expect(page.locator("#score-bar rect")).to_have_count(5)
    marked = page.locator("#score-bar rect.marked")
    expect(marked).to_have_count(1)
    assert marked.evaluate("r => getComputedStyle(r).fill") == COLOURS["follow_up"]
    expect(page.locator("#follow-up")).to_contain_text("口袋开线")
    expect(page.locator("#pg-question")).to_have_value(QUESTION)
    photo_preview = page.locator("#pg-photo-preview")
    page.wait_for_function("() => document.getElementById('pg-photo-preview').naturalWidth === 160")
    assert photo_preview.count() == 1

    # Re-rank three: ordered as POST /v1/rerank orders them, coloured by action, the best marked.
    page.fill("#pg-replies", "\n---\n".join(REPLIES))
    expect(page.locator("#reply-count")).to_have_text("3")
    page.evaluate("window.samePage = true")
    page.click("#rerank-button")
    rows = page.locator("#ranking tr.rank-row")
    expect(rows).to_have_count(3)
    assert page.evaluate("window.samePage === true")  # playground.js streamed it in, no page load
    expect(page.locator("#pg-progress")).to_be_hidden()
    expected = api(
        base, "/v1/rerank", {"query": "口袋开线怎么办？<script>alert(1)</script>", "documents": REPLIES}
    )
    order = [int(rows.nth(i).get_attribute("data-index") or -1) for i in range(3)]
    assert order == [r["index"] for r in expected["results"]] == [1, 2, 0]
    expect(rows.nth(0)).to_have_class("rank-row best")
    expect(page.locator("#ranking .best-mark")).to_have_count(1)
    for i, action in enumerate(("send", "follow_up", "escalate")):
        pill = rows.nth(i).locator(".pill")
        expect(pill).to_have_class(f"pill a-{action}")
        assert pill.evaluate("p => getComputedStyle(p).backgroundColor") == PILLS[action]
        lit = rows.nth(i).locator("svg rect:not(.old)")
        expect(lit).to_have_count(1)
        assert lit.evaluate("r => getComputedStyle(r).fill") == COLOURS[action]
    expect(rows.nth(1).locator(".followup")).to_contain_text("口袋开线")
    expect(rows.nth(2).locator(".holding")).not_to_be_empty()
    page.screenshot(path=str(SCREENSHOTS / "playground.png"), full_page=True)

    assert store.count_decisions() == 0  # the playground decided nothing
    ctx.close()
    assert not [e for e in errors if "Content Security Policy" in e], errors
