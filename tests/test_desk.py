"""Working the queue, through TestClient on SQLite: counts, pages, excerpts and waiting time in the
list; filters carried to each case and to the next waiting case after an action; presence; the
messages for a case already resolved, a refused user change and a photo whose text was skipped.
The same flows in a real browser (keyboard, accessibility, 390 px) are in test_desk_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

import guard.ocr
from guard.admin import charts
from guard.admin.queries import AdminQueries
from guard.admin.records import QueueFilter
from guard.admin.views import cases
from guard.policies import default_policy
from guard.tables import QueueItem, utcnow
from tests.apptools import ADMIN_ROLES, b64, flush, guard_client, make_users, png_bytes, queries_of, signed_in
from tests.test_ocr import FakeReader

pytestmark = pytest.mark.usefixtures("cheap_hashes")  # test-sized argon2 (conftest.py)


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> FakeReader:
    fake = FakeReader(text="Order 58213: the seam is open")
    monkeypatch.setattr(guard.ocr, "load_reader", lambda threads: fake)
    return fake


@pytest.fixture
def client(sqlite_url: str, reader: FakeReader) -> Iterator[TestClient]:
    with guard_client(sqlite_url, secret_key="desk-secret", ocr="on", ocr_budget_s=0.3) as c:
        make_users(queries_of(c), {**ADMIN_ROLES, "ana": "supervisor"})
        yield c


def held(
    client: TestClient, question: str, score: str = "0.45", *, photo: bool = False, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"question": question, "reply": f"We will fix it ({question}) [score={score}]"}
    if photo:
        body["image"] = {"data": b64(png_bytes())}
    body.update(extra)
    r = client.post("/v1/guard", json=body)
    assert r.status_code == 200, r.text
    flush(client)
    out: dict[str, Any] = r.json()
    assert out["escalation_id"], out
    return out


def act(client: TestClient, item: str, token: str, op: str, query: str = "", **form: str) -> Any:
    return client.post(
        f"/admin/cases/{item}/act{query}",
        data={"csrf_token": token, "op": op, **form},
        follow_redirects=False,
    )


def location(response: Any) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(response.headers["location"])
    return parts.path, parse_qs(parts.query)


# Units ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2 hours", 7200), ("2小时", 7200), ("30 minutes", 1800), ("1 day", 86400), ("1 h 30 min", 5400)],
)
def test_the_promised_response_time_is_read_as_seconds(text: str, seconds: float) -> None:
    assert cases.promise_seconds(text) == seconds


def test_a_promise_without_a_duration_is_unknown() -> None:
    assert cases.promise_seconds("soon") is None
    assert cases.wait_state(10_000, None) == "unknown"


@pytest.mark.parametrize(("waited", "state"), [(0, "ok"), (3599, "ok"), (3600, "soon"), (7200, "late")])
def test_waiting_time_against_the_promise(waited: float, state: str) -> None:
    assert cases.wait_state(waited, 7200) == state


@pytest.mark.parametrize(("score", "anchor"), [(0.025, "start"), (0.5, "middle"), (0.995, "end")])
def test_the_score_label_stays_inside_the_bar(score: float, anchor: str) -> None:
    bar = charts.score_bar(default_policy(), score, None)
    (label,) = [t for t in bar.labels if t.text.startswith("score ")]
    assert label.anchor == anchor and label.text == f"score {score:.3f}"


# The list ---------------------------------------------------------------------------------------


def test_the_list_counts_pages_and_shows_excerpts_photos_and_overdue_cases(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cases, "PAGE_SIZE", 2)
    first = held(client, "oldest", photo=True)
    held(client, "second")
    third = held(client, "third", score="0.1")
    with queries_of(client).session() as s:  # the oldest case arrived 3 hours ago: past the 2 hours
        s.execute(
            update(QueueItem)
            .where(QueueItem.id == first["escalation_id"])
            .values(created_at=utcnow() - timedelta(hours=3))
        )
    signed_in(client, "sup")
    page = client.get("/admin/queue").text
    assert "3 cases · showing 1–2" in page
    assert re.search(r'value="pending" data-count="3"[^>]*>waiting \(3\)', page)
    assert "all (3)" in page
    assert page.count('class="photo-mark"') == 1
    assert "We will fix it (oldest)" in page, "the draft's excerpt"
    assert 'class="wait wait-late"' in page and "overdue" in page
    assert page.count('class="wait wait-ok"') == 1
    assert third["escalation_id"] not in page and 'href="/admin/queue?page=2"' in page
    page2 = client.get("/admin/queue?page=2").text
    assert third["escalation_id"] in page2 and "showing 3–3" in page2 and "Page 2 of 2" in page2
    review = client.get("/admin/queue?action=review").text
    assert "2 cases" in review and "waiting (2)" in review and "all (2)" in review
    assert f'/admin/cases/{first["escalation_id"]}?action=review"' in review, "the filters go to the case"


# A case -----------------------------------------------------------------------------------------


def test_the_case_page_knows_its_place_in_the_filtered_queue(client: TestClient) -> None:
    a, _, b, c = (
        held(client, q, s) for q, s in (("a", "0.45"), ("esc", "0.1"), ("b", "0.45"), ("c", "0.45"))
    )
    signed_in(client, "sup")
    page = client.get(f"/admin/cases/{b['escalation_id']}?action=review").text
    assert "case 2 of 3" in page
    assert f'href="/admin/cases/{a["escalation_id"]}?action=review" id="prev-case"' in page
    assert f'href="/admin/cases/{c["escalation_id"]}?action=review" id="next-case"' in page
    assert 'href="/admin/queue?action=review" id="back-to-queue"' in page
    newest = client.get(f"/admin/cases/{b['escalation_id']}?action=review&sort=newest").text
    assert f'/admin/cases/{c["escalation_id"]}?action=review&amp;sort=newest" id="prev-case"' in newest


def test_neighbours_and_next_waiting_in_the_store(client: TestClient) -> None:
    ids = [held(client, q)["escalation_id"] for q in ("a", "b", "c")]
    queries = queries_of(client)
    n = queries.queue_neighbours(ids[0], QueueFilter())
    assert n is not None and (n.previous, n.next, n.position, n.total) == (None, ids[1], 1, 3)
    n = queries.queue_neighbours(ids[2], QueueFilter(newest_first=True))
    assert n is not None and (n.previous, n.next, n.position) == (None, ids[1], 1)
    queries.touch_viewer(ids[0], "ana", 40)
    assert queries.next_waiting(QueueFilter(), viewer="sup", ttl_s=40) == ids[1], "ana has the first open"
    assert queries.next_waiting(QueueFilter(), viewer="ana", ttl_s=40) == ids[0], "her own open case is free"
    assert queries.next_waiting(QueueFilter(kind="escalate"), viewer="sup", ttl_s=40) is None


@pytest.mark.parametrize(("score", "primary"), [("0.1", "take_over"), ("0.45", "approve")])
def test_the_primary_action_fits_the_case(client: TestClient, score: str, primary: str) -> None:
    case = held(client, "口袋开线怎么办？", score)
    signed_in(client, "sup")
    page = client.get(f"/admin/cases/{case['escalation_id']}").text
    forms = re.findall(r'<form method="post" action="[^"]*/act" class="act act-(\w+)( primary)?"', page)
    assert forms[0] == (primary, " primary"), "the primary action comes first"
    assert [f for f, p in forms if p] == [primary]
    assert '<blockquote class="question" tabindex="0" lang="zh">口袋开线怎么办？</blockquote>' in page
    assert '<textarea name="reason" id="take-over-note"' in page, "Enter in the note adds a line"


def test_after_an_action_the_next_waiting_case_opens_under_the_same_filters(client: TestClient) -> None:
    first, _, second = (held(client, q, s) for q, s in (("a", "0.45"), ("esc", "0.1"), ("b", "0.45")))
    token = signed_in(client, "sup")
    r = act(client, first["escalation_id"], token, "approve", "?action=review&sort=oldest")
    assert r.status_code == 303
    path, query = location(r)
    assert path == f"/admin/cases/{second['escalation_id']}"
    assert query["action"] == ["review"] and query["notice"] == ["case_done_next"]
    page = client.get(r.headers["location"]).text
    assert "This is the next waiting case" in page
    r = act(client, second["escalation_id"], token, "dismiss", "?action=review", reason="spam")
    path, query = location(r)
    assert path == "/admin/queue" and query == {
        "action": ["review"],
        "notice": ["case_done"],
        "done": [second["escalation_id"]],
    }


def test_the_next_case_is_one_nobody_else_has_open(client: TestClient) -> None:
    a, b, c = (held(client, q)["escalation_id"] for q in ("a", "b", "c"))
    signed_in(client, "ana")
    assert "Nobody else has this case open" in client.get(f"/admin/cases/{b}").text
    client.cookies.clear()
    token = signed_in(client, "sup")
    assert "Also open now by ana" in client.get(f"/admin/cases/{b}").text
    path, _ = location(act(client, a, token, "approve"))
    assert path == f"/admin/cases/{c}", "b is open by ana"


def test_presence_heartbeat_and_leaving(client: TestClient) -> None:
    item = held(client, "a")["escalation_id"]
    token = signed_in(client, "ana")
    headers = {"x-csrf-token": token}
    assert client.post(f"/admin/cases/{item}/presence", headers=headers).json()["others"] == []
    client.cookies.clear()
    sup = signed_in(client, "sup")
    body = client.post(f"/admin/cases/{item}/presence", headers={"x-csrf-token": sup}).json()
    assert body == {"others": ["ana"], "state": "pending", "resolved_by": None}
    assert client.post(f"/admin/cases/{item}/presence").status_code == 403, "CSRF-checked"
    queries_of(client).leave_case(item, "ana")
    assert client.post(f"/admin/cases/{item}/presence", headers={"x-csrf-token": sup}).json()["others"] == []
    r = client.post(f"/admin/cases/{item}/presence", data={"csrf_token": sup, "op": "leave"})
    assert r.status_code == 200 and queries_of(client).viewers([item], 40) == {}


def test_acting_again_on_a_case_says_who_resolved_it(client: TestClient) -> None:
    item = held(client, "a")["escalation_id"]
    token = signed_in(client, "sup")
    assert act(client, item, token, "approve").status_code == 303
    again = act(client, item, token, "approve")
    assert again.status_code == 409
    assert "You already resolved this case (approved and sent at" in again.text
    assert "Another supervisor" not in again.text
    client.cookies.clear()
    ana = signed_in(client, "ana")
    theirs = act(client, item, ana, "dismiss", reason="dup")
    assert theirs.status_code == 409 and "Another supervisor (sup) has already acted" in theirs.text


@pytest.mark.parametrize(("fail", "reason"), [(False, "image_text_timeout"), (True, "image_text_error")])
def test_a_photo_whose_text_was_skipped_says_so_and_why(
    client: TestClient, reader: FakeReader, fail: bool, reason: str
) -> None:
    reader.fail = fail
    if not fail:
        reader.release.clear()  # the reader holds past the OCR budget
    case = held(client, "My pocket seam came open", "0.1", photo=True)
    reader.release.set()
    signed_in(client, "sup")
    page = client.get(f"/admin/cases/{case['escalation_id']}").text
    expected = cases.PHOTO_TEXT_SKIPPED[reason]
    assert (
        f"question, reply · <b>the photo's text was skipped</b>: {expected} (<code>{reason}</code>)" in page
    )


def test_a_photo_whose_text_was_read_is_not_said_to_be_skipped(client: TestClient) -> None:
    case = held(client, "My pocket seam came open", "0.1", photo=True)
    signed_in(client, "sup")
    page = client.get(f"/admin/cases/{case['escalation_id']}").text
    assert "question, reply, image_text" in page and "was skipped" not in page


def test_a_refused_user_change_is_shown_as_a_problem(client: TestClient) -> None:
    token = signed_in(client, "boss")
    boss = queries_of(client).user_by_name("boss")
    assert boss is not None
    r = client.post(f"/admin/users/{boss.id}", data={"csrf_token": token, "role": "supervisor"})
    assert '<p class="problem" role="alert">Not changed: that would leave no active admin.</p>' in r.text
    ok = client.post(f"/admin/users/{boss.id}", data={"csrf_token": token, "role": "admin", "active": "on"})
    assert '<p class="notice" role="status">User updated.</p>' in ok.text
    page = client.get("/admin/users").text
    assert '<span class="visually-hidden">Role of boss</span><select name="role">' in page
    assert '<span class="visually-hidden">New password for boss</span><input type="password"' in page


# Presence on PostgreSQL -------------------------------------------------------------------------


def test_presence_on_postgresql_upserts_expires_and_migrates(pg_url: str) -> None:
    import threading

    from sqlalchemy import inspect

    from guard.store import Store, downgrade, migrate
    from guard.tables import CaseViewer

    migrate(pg_url)
    store = Store.open(pg_url)
    try:
        queries = AdminQueries(store.engine)
        barrier = threading.Barrier(6)
        failures: list[BaseException] = []

        def beat() -> None:  # six tabs of one supervisor refreshing at once: one row, no error
            barrier.wait()
            try:
                queries.touch_viewer("q1", "sam", 40)
            except BaseException as exc:  # pragma: no cover - the failure is the assertion below
                failures.append(exc)

        threads = [threading.Thread(target=beat) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert failures == []
        assert [v.username for v in queries.touch_viewer("q1", "ana", 40)] == ["sam"]
        with queries.session() as s:  # sam's page closed a minute ago
            s.execute(
                update(CaseViewer)
                .where(CaseViewer.username == "sam")
                .values(seen_at=utcnow() - timedelta(seconds=60))
            )
        assert [v.username for v in queries.viewers(["q1"], 40)["q1"]] == ["ana"]
        with queries.session() as s:  # and long ago: the next heartbeat sweeps it
            s.execute(
                update(CaseViewer)
                .where(CaseViewer.username == "sam")
                .values(seen_at=utcnow() - timedelta(hours=2))
            )
        queries.touch_viewer("q2", "ana", 40)
        with queries.session() as s:
            assert sorted(s.scalars(select(CaseViewer.username))) == ["ana", "ana"]
        downgrade(pg_url, "0008")
        assert "case_viewers" not in inspect(store.engine).get_table_names()
        migrate(pg_url)
        assert "case_viewers" in inspect(store.engine).get_table_names()
    finally:
        store.close()
