"""The admin pages through TestClient: role boundaries, CSRF, sessions, escaping, queue actions,
the policy editor with its preview, users and the audit log. Every test here fails if its check is
removed from guard/admin."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from guard.admin import auth
from guard.admin.queries import AdminQueries
from guard.tables import utcnow
from tests.apptools import (
    ADMIN_PASSWORD,
    b64,
    flush,
    guard_client,
    login,
    make_users,
    png_bytes,
    queries_of,
    runtime_of,
    signed_in,
)

PASSWORD = ADMIN_PASSWORD
pytestmark = pytest.mark.usefixtures("cheap_hashes")  # test-sized argon2 (conftest.py)


@pytest.fixture
def outcomes() -> list[str]:
    return []


@pytest.fixture
def client(sqlite_url: str, outcomes: list[str]) -> Iterator[TestClient]:
    async def hook(decision_id: str) -> None:
        outcomes.append(decision_id)

    with guard_client(sqlite_url, secret_key="test-secret-key", on_outcome=hook) as c:
        make_users(queries_of(c))
        yield c


def held_case(client: TestClient, question: str = "口袋开线怎么办？", score: str = "0.1") -> dict[str, Any]:
    r = client.post(
        "/v1/guard",
        json={
            "conversation_id": "c-42",
            "question": question,
            "reply": f"感谢您的反馈 [score={score}]",
            "image": {"data": b64(png_bytes())},
        },
    )
    assert r.status_code == 200, r.text
    flush(client)
    body: dict[str, Any] = r.json()
    assert body["escalation_id"] is not None
    return body


# Sign-in, sessions, throttling ------------------------------------------------------------------


PROTECTED_GETS = [
    "/admin/",
    "/admin/dashboard",
    "/admin/queue",
    "/admin/policies",
    "/admin/policies/default",
    "/admin/outcomes",
    "/admin/users",
    "/admin/audit",
    "/admin/cases/nope",
]


@pytest.mark.parametrize("path", PROTECTED_GETS)
def test_every_page_needs_a_sign_in(client: TestClient, path: str) -> None:
    r = client.get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/admin/login?next=")


@pytest.mark.parametrize(
    "path",
    [
        "/admin/logout",
        "/admin/cases/x/act",
        "/admin/policies/default",
        "/admin/policies/default/preview",
        "/admin/policies/default/rollback",
        "/admin/users",
        "/admin/users/1",
    ],
)
def test_every_post_needs_a_sign_in(client: TestClient, path: str) -> None:
    assert client.post(path, data={"op": "publish"}, follow_redirects=False).status_code == 401


def test_wrong_password_and_unknown_user_are_refused_alike(client: TestClient) -> None:
    assert login(client, "sup", "wrong password!").status_code == 401
    assert login(client, "nobody", PASSWORD).status_code == 401
    assert auth.SESSION_COOKIE not in client.cookies


def test_login_is_throttled_after_repeated_failures(client: TestClient) -> None:
    for _ in range(auth.USER_FAILURE_LIMIT):
        assert login(client, "sup", "wrong password!").status_code == 401
    r = login(client, "sup")  # the right password, but locked now
    assert r.status_code == 429 and "Too many failed sign-ins" in r.text
    assert login(client, "owner").status_code == 303, "another user is not locked out"


def from_address(client: TestClient, address: str) -> None:
    """Make ``client``'s next requests come from ``address`` (as uvicorn reports it to the app)."""
    client._transport.client = (address, 50000)  # type: ignore[attr-defined]


def lock_out(client: TestClient, username: str, address: str) -> None:
    from_address(client, address)
    for _ in range(auth.USER_FAILURE_LIMIT):
        assert login(client, username, "wrong password!").status_code == 401
    assert login(client, username).status_code == 429


def test_guesses_from_one_address_do_not_lock_the_user_out_from_another(client: TestClient) -> None:
    """Locked by username + address: 5 wrong guesses from an attacker's address no longer lock a
    known admin out everywhere (on main the username alone was locked)."""
    lock_out(client, "boss", "203.0.113.9")
    from_address(client, "198.51.100.20")
    assert login(client, "boss").status_code == 303


def test_too_many_failures_from_one_address_lock_that_address_for_every_username(client: TestClient) -> None:
    from_address(client, "203.0.113.10")
    for i in range(auth.IP_FAILURE_LIMIT):
        assert login(client, f"guess{i}", "wrong password!").status_code == 401
    assert login(client, "owner").status_code == 429
    from_address(client, "198.51.100.21")
    assert login(client, "owner").status_code == 303


def test_an_admin_unlocks_a_user_and_an_address_on_the_users_page(client: TestClient) -> None:
    lock_out(client, "sup", "192.0.2.7")
    from_address(client, "192.0.2.99")
    token = signed_in(client, "boss")
    page = client.get("/admin/users").text
    assert "sign-in locked until" in page and "192.0.2.7" in page
    r = client.post("/admin/users/unlock", data={"csrf_token": token, "username": "sup"})
    assert r.status_code == 200 and "Unlocked" in r.text and "sign-in locked until" not in r.text
    assert "login.unlock" in client.get("/admin/audit").text
    client.cookies.clear()
    from_address(client, "192.0.2.7")
    assert login(client, "sup").status_code == 303
    # An address locked for every username, unlocked the same way.
    client.cookies.clear()
    from_address(client, "192.0.2.8")
    for i in range(auth.IP_FAILURE_LIMIT):
        login(client, f"guess{i}", "wrong password!")
    assert login(client, "sup").status_code == 429
    from_address(client, "192.0.2.99")
    token = signed_in(client, "boss")
    assert "Locked addresses" in client.get("/admin/users").text
    client.post("/admin/users/unlock", data={"csrf_token": token, "address": "192.0.2.8"})
    client.cookies.clear()
    from_address(client, "192.0.2.8")
    assert login(client, "sup").status_code == 303


def test_only_an_admin_may_unlock(client: TestClient) -> None:
    lock_out(client, "boss", "192.0.2.30")
    from_address(client, "192.0.2.31")
    token = signed_in(client, "owner")
    r = client.post("/admin/users/unlock", data={"csrf_token": token, "username": "boss"})
    assert r.status_code == 403
    client.cookies.clear()
    from_address(client, "192.0.2.30")
    assert login(client, "boss").status_code == 429


def test_cli_unlocks_a_user(client: TestClient, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from guard.cli import main

    lock_out(client, "boss", "192.0.2.40")
    monkeypatch.setenv("GUARD_DATABASE_URL", sqlite_url)
    assert main(["users", "unlock", "nobody"]) == 1
    assert main(["users", "unlock", "boss"]) == 0
    assert login(client, "boss").status_code == 303


def test_session_cookie_is_signed_http_only_and_lax(client: TestClient) -> None:
    r = login(client, "sup")
    cookie = next(v for k, v in r.headers.items() if k == "set-cookie" and v.startswith(auth.SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie, "plain http here; Secure is set when served over https"
    forged = client.cookies[auth.SESSION_COOKIE][:-3] + "AAA"
    client.cookies.clear()
    client.cookies.set(auth.SESSION_COOKIE, forged, path="/admin")
    assert client.get("/admin/queue", follow_redirects=False).status_code == 303


def test_secure_cookie_over_https(client: TestClient) -> None:
    https = TestClient(client.app, base_url="https://testserver")
    https.portal = client.portal  # share the running app
    https.app_state.update(client.app_state)  # and its lifespan state (the runtime)
    page = https.get("/admin/login")
    assert "Secure" in page.headers["set-cookie"]


def test_logout_ends_the_session_even_for_a_copied_cookie(client: TestClient) -> None:
    token = signed_in(client, "sup")
    copied = client.cookies[auth.SESSION_COOKIE]
    r = client.post("/admin/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    client.cookies.clear()
    client.cookies.set(auth.SESSION_COOKIE, copied, path="/admin")
    assert client.get("/admin/queue", follow_redirects=False).status_code == 303


def test_sessions_expire(sqlite_url: str) -> None:
    with guard_client(sqlite_url, secret_key="k", session_ttl_s=4) as c:
        make_users(queries_of(c))
        signed_in(c, "sup")
        assert c.get("/admin/queue", follow_redirects=False).status_code == 200
        time.sleep(4.3)
        assert c.get("/admin/queue", follow_redirects=False).status_code == 303


def test_login_form_has_its_own_csrf_check(client: TestClient) -> None:
    client.get("/admin/login")
    r = client.post("/admin/login", data={"username": "sup", "password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 403 and auth.SESSION_COOKIE not in client.cookies


def test_login_redirects_only_inside_the_admin_pages(client: TestClient) -> None:
    page = client.get("/admin/login?next=//evil.example/x")
    assert "evil" not in page.text


# Role boundaries --------------------------------------------------------------------------------

ROLE_MATRIX = [
    ("sup", "/admin/dashboard", 200),
    ("sup", "/admin/queue", 200),
    ("sup", "/admin/policies", 403),
    ("sup", "/admin/policies/default", 403),
    ("sup", "/admin/outcomes", 403),
    ("sup", "/admin/users", 403),
    ("sup", "/admin/audit", 403),
    ("owner", "/admin/dashboard", 200),
    ("owner", "/admin/queue", 403),
    ("owner", "/admin/policies", 200),
    ("owner", "/admin/policies/default", 200),
    ("owner", "/admin/outcomes", 200),
    ("owner", "/admin/users", 403),
    ("owner", "/admin/audit", 403),
    ("boss", "/admin/queue", 200),
    ("boss", "/admin/policies/default", 200),
    ("boss", "/admin/users", 200),
    ("boss", "/admin/audit", 200),
]


@pytest.mark.parametrize(("who", "path", "status"), ROLE_MATRIX)
def test_role_boundaries_on_pages(client: TestClient, who: str, path: str, status: int) -> None:
    signed_in(client, who)
    assert client.get(path, follow_redirects=False).status_code == status


def test_policy_owner_cannot_act_on_a_case_or_see_its_photo(client: TestClient) -> None:
    case = held_case(client)
    token = signed_in(client, "owner")
    item = case["escalation_id"]
    assert client.get(f"/admin/cases/{item}/photo").status_code == 403
    r = client.post(f"/admin/cases/{item}/act", data={"csrf_token": token, "op": "approve"})
    assert r.status_code == 403
    assert queries_of(client).case(item).item.state == "pending"  # type: ignore[union-attr]


def test_supervisor_cannot_publish_roll_back_or_manage_users(client: TestClient) -> None:
    token = signed_in(client, "sup")
    store, queries = runtime_of(client).store, queries_of(client)
    form = band_form([("0", "1", "send")], csrf=token, op="publish")
    assert client.post("/admin/policies/default", data=form).status_code == 403
    assert (
        client.post(
            "/admin/policies/default/rollback", data={"csrf_token": token, "version": "1"}
        ).status_code
        == 403
    )
    assert len(store.policy_versions("default")) == 1
    r = client.post(
        "/admin/users",
        data={"csrf_token": token, "username": "mallory", "role": "admin", "password": PASSWORD},
    )
    assert r.status_code == 403 and queries.user_by_name("mallory") is None
    assert (
        client.post("/admin/users/1", data={"csrf_token": token, "role": "admin", "active": "on"}).status_code
        == 403
    )


# CSRF -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_case_action_without_the_sessions_csrf_token_is_refused(
    client: TestClient, token: str | None
) -> None:
    case = held_case(client)
    signed_in(client, "sup")
    data = {"op": "approve"} if token is None else {"op": "approve", "csrf_token": token}
    r = client.post(f"/admin/cases/{case['escalation_id']}/act", data=data)
    assert r.status_code == 403 and "CSRF" in r.text
    assert queries_of(client).case(case["escalation_id"]).item.state == "pending"  # type: ignore[union-attr]


def test_csrf_token_of_another_session_is_refused(client: TestClient, sqlite_url: str) -> None:
    case = held_case(client)
    other = signed_in(client, "boss")
    client.cookies.clear()
    signed_in(client, "sup")
    r = client.post(f"/admin/cases/{case['escalation_id']}/act", data={"op": "approve", "csrf_token": other})
    assert r.status_code == 403


def test_publish_without_csrf_token_saves_nothing(client: TestClient) -> None:
    signed_in(client, "owner")
    r = client.post("/admin/policies/default", data=band_form([("0", "1", "send")], csrf="", op="publish"))
    assert r.status_code == 403
    assert len(runtime_of(client).store.policy_versions("default")) == 1


def test_csrf_header_is_accepted_for_scripts(client: TestClient) -> None:
    token = signed_in(client, "owner")
    form = band_form([("0", "0.5", "review"), ("0.5", "1", "send")], csrf="")
    r = client.post("/admin/policies/default/samples", data=form, headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and "followup.zh" in r.json()["samples"]
    assert client.post("/admin/policies/default/samples", data=form).status_code == 403


# Headers and escaping ---------------------------------------------------------------------------


def test_security_headers_on_every_admin_page(client: TestClient) -> None:
    for r in (client.get("/admin/login"), client.get("/admin/static/admin.css")):
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"


def test_no_inline_script_or_style_in_pages(client: TestClient) -> None:
    held_case(client)
    signed_in(client, "boss")
    item = runtime_of(client).store.queue()[0].id
    for path in ("/admin/dashboard", "/admin/queue", f"/admin/cases/{item}", "/admin/policies/default"):
        html = client.get(path).text
        assert re.search(r"<script(?![^>]*\bsrc=)", html) is None, path
        assert " style=" not in html and "<style" not in html and "onclick" not in html, path


def test_customer_text_is_escaped(client: TestClient) -> None:
    case = held_case(client, question='<script>alert("x")</script><img src=x onerror=alert(1)>')
    signed_in(client, "sup")
    for path in ("/admin/queue", f"/admin/cases/{case['escalation_id']}"):
        html = client.get(path).text
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html or "&lt;script&gt;alert" in html


def test_photo_is_served_with_its_type_nosniff_and_a_sandbox(client: TestClient) -> None:
    case = held_case(client)
    signed_in(client, "sup")
    r = client.get(f"/admin/cases/{case['escalation_id']}/photo")
    assert r.status_code == 200 and r.content == png_bytes()
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"].startswith("sandbox")
    # Not cached: after sign-out the browser cannot show it again (was private, max-age=3600).
    assert r.headers["cache-control"] == "no-store"


# The queue and cases ----------------------------------------------------------------------------


def test_case_page_shows_the_case(client: TestClient) -> None:
    case = held_case(client, score="0.45")
    signed_in(client, "sup")
    item = case["escalation_id"]
    queue = client.get("/admin/queue").text
    assert f"/admin/cases/{item}" in queue and "c-42" in queue
    page = client.get(f"/admin/cases/{item}").text
    assert "口袋开线怎么办？" in page and "感谢您的反馈" in page and "c-42" in page
    assert f"/admin/cases/{item}/photo" in page
    assert 'class="a-review marked"' in page, "the decision's band is marked on the score bar"
    assert "已为您登记" in page, "the follow-up it would append"
    assert '<code class="issue-kind">open_seam</code>' in page, "the kind of issue the guard read"
    assert 'class="uncertain"' not in page


def test_case_page_says_when_the_guard_could_not_judge_the_case(client: TestClient) -> None:
    case = held_case(client, question="这啥", score="0.9")
    signed_in(client, "sup")
    page = client.get(f"/admin/cases/{case['escalation_id']}").text
    assert '<dd class="uncertain"><b>the guard could not judge this draft</b>' in page
    assert "neither the question nor the text in the photo states the issue" in page


def test_queue_filters_and_order(client: TestClient) -> None:
    first = held_case(client, question="first", score="0.1")
    second = held_case(client, question="second", score="0.45")
    signed_in(client, "sup")
    oldest = client.get("/admin/queue").text
    assert oldest.index(first["escalation_id"]) < oldest.index(second["escalation_id"])
    newest = client.get("/admin/queue?sort=newest").text
    assert newest.index(second["escalation_id"]) < newest.index(first["escalation_id"])
    only_review = client.get("/admin/queue?action=review").text
    assert second["escalation_id"] in only_review and first["escalation_id"] not in only_review
    assert first["escalation_id"] not in client.get("/admin/queue?channel=other").text


def test_edit_and_send_records_who_and_when_and_reaches_the_api(
    client: TestClient, outcomes: list[str]
) -> None:
    case = held_case(client)
    token = signed_in(client, "sup")
    item = case["escalation_id"]
    r = client.post(
        f"/admin/cases/{item}/act",
        data={"csrf_token": token, "op": "edit", "reply": "We will sew the seam for free."},
        follow_redirects=False,
    )
    assert r.status_code == 303
    stored = queries_of(client).case(item)
    assert stored is not None
    assert (stored.item.state, stored.item.resolved_by, stored.item.final_reply) == (
        "edited",
        "sup",
        "We will sew the seam for free.",
    )
    assert stored.item.resolved_at is not None
    assert outcomes == [case["decision_id"]], "the on_outcome hook got the decision"
    api = client.get(f"/v1/decisions/{case['decision_id']}").json()
    assert api["state"] == "edited" and api["reply"] == "We will sew the seam for free."
    again = client.post(f"/admin/cases/{item}/act", data={"csrf_token": token, "op": "approve"})
    assert again.status_code == 409, "a resolved case cannot be acted on again"
    assert queries_of(client).case(item).item.state == "edited"  # type: ignore[union-attr]
    entries = queries_of(client).audit_entries()
    assert entries[0].action == "case.edited" and entries[0].actor == "sup"


@pytest.mark.parametrize(
    ("op", "extra", "state", "final"),
    [
        ("approve", {}, "approved", "感谢您的反馈 [score=0.1]"),
        ("take_over", {}, "taken_over", None),
        ("dismiss", {"reason": "spam"}, "dismissed", None),
    ],
)
def test_other_case_actions(
    client: TestClient, op: str, extra: dict[str, str], state: str, final: str | None
) -> None:
    case = held_case(client)
    token = signed_in(client, "sup")
    r = client.post(
        f"/admin/cases/{case['escalation_id']}/act", data={"csrf_token": token, "op": op, **extra}
    )
    assert r.status_code == 200  # followed to the queue
    stored = queries_of(client).case(case["escalation_id"])
    assert stored is not None and stored.item.state == state and stored.item.final_reply == final


def test_dismiss_needs_a_reason_and_edit_needs_text(client: TestClient) -> None:
    case = held_case(client)
    token = signed_in(client, "sup")
    item = case["escalation_id"]
    assert (
        client.post(f"/admin/cases/{item}/act", data={"csrf_token": token, "op": "dismiss"}).status_code
        == 422
    )
    r = client.post(f"/admin/cases/{item}/act", data={"csrf_token": token, "op": "edit", "reply": "  "})
    assert r.status_code == 422
    assert queries_of(client).case(item).item.state == "pending"  # type: ignore[union-attr]


# Policies ---------------------------------------------------------------------------------------


def band_form(
    bands: list[tuple[str, str, str]], *, csrf: str, op: str = "preview", **extra: str
) -> dict[str, str]:
    data = {
        "csrf_token": csrf,
        "op": op,
        "on_error": "escalate",
        "uncertain_action": "review",
        "instruction": "Judge the reply.",
    }
    for i, (lo, hi, action) in enumerate(bands):
        data[f"band_lo_{i}"], data[f"band_hi_{i}"], data[f"band_action_{i}"] = lo, hi, action
    data.update(extra)
    return data


DEFAULT_FORM = [
    ("0", "0.4", "escalate"),
    ("0.4", "0.5", "review"),
    ("0.5", "0.7", "follow_up"),
    ("0.7", "1", "send"),
]


@pytest.mark.parametrize(
    ("bands", "extra", "message"),
    [
        ([("0", "0.4", "escalate"), ("0.5", "1", "send")], {}, "gap: no band covers [0.4,0.5)"),
        ([("0", "0.6", "escalate"), ("0.5", "1", "send")], {}, "overlap"),
        ([("0", "0.5", "escalate"), ("0.5", "1", "shout")], {}, "unknown action"),
        ([("0", "x", "escalate"), ("0.5", "1", "send")], {}, "is not a number"),
        (DEFAULT_FORM, {"tpl_followup_en": "We logged {{ issue"}, "does not render"),
        (DEFAULT_FORM, {"tpl_followup_zh": "{{ issue.__class__ }}"}, "template 'followup.zh'"),
        (DEFAULT_FORM, {"uncertain_action": "send"}, "'send' is not one of follow_up, review, escalate"),
        (DEFAULT_FORM, {"uncertain_action": ""}, "'(nothing chosen)' is not one of"),
    ],
)
def test_invalid_policy_is_explained_and_nothing_is_saved(
    client: TestClient, bands: list[tuple[str, str, str]], extra: dict[str, str], message: str
) -> None:
    token = signed_in(client, "owner")
    r = client.post("/admin/policies/default", data=band_form(bands, csrf=token, op="publish", **extra))
    assert r.status_code == 422
    assert message in r.text.replace("&#39;", "'")
    assert len(runtime_of(client).store.policy_versions("default")) == 1


def test_preview_replays_logged_decisions_under_the_draft(client: TestClient) -> None:
    for score in ("0.45", "0.45", "0.1", "0.9"):
        client.post("/v1/guard", json={"question": "q", "reply": f"r [score={score}]"})
    flush(client)
    token = signed_in(client, "owner")
    moved = [
        ("0", "0.4", "escalate"),
        ("0.4", "0.44", "review"),
        ("0.44", "0.7", "follow_up"),
        ("0.7", "1", "send"),
    ]
    r = client.post("/admin/policies/default/preview", data=band_form(moved, csrf=token))
    assert r.status_code == 200
    counts = dict(
        re.findall(r'data-action="(\w+)"><td>.*?</td><td class="old">\d+</td><td class="new">(\d+)', r.text)
    )
    old = dict(re.findall(r'data-action="(\w+)"><td>.*?</td><td class="old">(\d+)', r.text))
    assert old == {"send": "1", "follow_up": "0", "review": "2", "escalate": "1"}
    assert counts == {"send": "1", "follow_up": "2", "review": "0", "escalate": "1"}
    assert 'id="changed-count">2<' in r.text
    assert "edge-new" in r.text and "edge-old" in r.text


DIGEST = re.compile(r'name="confirm_digest" value="([0-9a-f]{64})"')


def publish(client: TestClient, channel: str, form: dict[str, str], note: str = "A test change.") -> Any:
    """Publish through the confirmation: press Publish, then confirm it with a change note."""
    asked = client.post(f"/admin/policies/{channel}", data={**form, "op": "publish"})
    found = DIGEST.search(asked.text)
    assert asked.status_code == 200 and found is not None, asked.text[-3000:]
    confirmed = {**form, "op": "confirm_publish", "confirm_digest": found.group(1), "change_note": note}
    return client.post(f"/admin/policies/{channel}", data=confirmed)


def rollback(client: TestClient, token: str, version: int, note: str, channel: str = "default") -> Any:
    path = f"/admin/policies/{channel}/rollback"
    asked = client.post(path, data={"csrf_token": token, "version": str(version)})
    assert asked.status_code == 200 and 'id="confirm"' in asked.text
    data = {"csrf_token": token, "version": str(version), "op": "confirm_rollback", "change_note": note}
    return client.post(path, data=data)


def test_publish_then_the_next_check_uses_the_new_version_and_rollback(client: TestClient) -> None:
    for score in ("0.45", "0.45", "0.1"):
        client.post("/v1/guard", json={"question": "q", "reply": f"r [score={score}]"})
    flush(client)
    token = signed_in(client, "owner")
    store = runtime_of(client).store
    all_send = band_form([("0", "1", "send")], csrf=token)
    asked = client.post("/admin/policies/default", data={**all_send, "op": "publish"})
    assert asked.status_code == 200 and len(store.policy_versions("default")) == 1, "nothing yet"
    summary = re.search(r'id="confirm-summary">(.*?)</p>', asked.text, re.S)
    assert summary is not None
    assert (
        "2 cases move from review to send; 1 from escalate to send (of 3 decisions logged)"
        in summary.group(1)
    )
    assert "Publish version 2" in asked.text and 'name="change_note"' in asked.text
    no_note = client.post(
        "/admin/policies/default",
        data={**all_send, "op": "confirm_publish", "confirm_digest": DIGEST.findall(asked.text)[0]},
    )
    assert no_note.status_code == 422 and "Write a change note" in no_note.text
    edited = band_form([("0", "0.5", "escalate"), ("0.5", "1", "send")], csrf=token)
    changed = client.post(
        "/admin/policies/default",
        data={
            **edited,
            "op": "confirm_publish",
            "confirm_digest": DIGEST.findall(asked.text)[0],
            "change_note": "x",
        },
    )
    assert changed.status_code == 422 and "The draft changed after you asked" in changed.text
    assert len(store.policy_versions("default")) == 1

    r = publish(client, "default", all_send, note="Send everything <b>for the sale</b>")
    assert r.status_code == 200 and "Published" in r.text
    check = client.post("/v1/guard", json={"question": "q", "reply": "r [score=0.1]"}).json()
    assert check["policy"]["version"] == 2 and check["action"] == "send"
    versions = store.policy_versions("default", newest_first=True)
    assert [v.author for v in versions] == ["owner", "migration"]
    assert versions[0].note == "Send everything <b>for the sale</b>"
    assert (
        versions[0].preview_summary is not None
        and "2 cases move from review to send" in versions[0].preview_summary
    )
    page = client.get("/admin/policies/default").text
    assert "Roll back to v1" in page and "(first version)" in page
    assert "Send everything &lt;b&gt;for the sale&lt;/b&gt;" in page, "the note, escaped"
    change = '<th scope="row">scores [0.0,0.4)</th><td class="del">escalate</td><td class="add">send</td>'
    assert change in page, "the versions list says which scores now get which action"

    r = rollback(client, token, 1, note="The sale is over.")
    assert r.status_code == 200 and "Rolled back" in r.text
    check = client.post("/v1/guard", json={"question": "q", "reply": "r [score=0.1]"}).json()
    assert check["policy"]["version"] == 3 and check["action"] == "escalate"
    newest = store.policy_versions("default", newest_first=True)[0]
    assert (newest.rollback_of, newest.note) == (1, "The sale is over.")
    assert "rollback to v1" in client.get("/admin/policies/default").text
    entries = queries_of(client).audit_entries()
    assert [e.action for e in entries[:2]] == ["policy.rollback", "policy.publish"]
    assert [e.note for e in entries[:2]] == ["The sale is over.", "Send everything <b>for the sale</b>"]
    assert {e.channel for e in entries[:2]} == {"default"}
    before = entries[1].before
    assert before is not None and before["version"] == 1


def test_rolling_back_needs_a_change_note_and_shows_its_preview(client: TestClient) -> None:
    token = signed_in(client, "owner")
    publish(client, "default", band_form([("0", "1", "send")], csrf=token))
    client.post("/v1/guard", json={"question": "q", "reply": "r [score=0.1]"})
    flush(client)
    asked = client.post("/admin/policies/default/rollback", data={"csrf_token": token, "version": "1"})
    assert "Roll back to v1?" in asked.text and "1 case moves from send to escalate" in asked.text
    assert 'name="band_action_0"' in asked.text and 'id="preview"' in asked.text, "the editor shows v1"
    refused = client.post(
        "/admin/policies/default/rollback",
        data={"csrf_token": token, "version": "1", "op": "confirm_rollback", "change_note": "  "},
    )
    assert refused.status_code == 422 and "Write a change note" in refused.text
    assert len(runtime_of(client).store.policy_versions("default")) == 2


def test_band_buttons_edit_the_draft_without_javascript_and_publish_nothing(client: TestClient) -> None:
    token = signed_in(client, "owner")
    r = client.post("/admin/policies/default", data=band_form(DEFAULT_FORM, csrf=token, op="remove:1"))
    assert r.status_code == 200 and "Band 2 is removed; band 1 below it now reaches 0.5." in r.text
    assert re.findall(r'name="band_hi_\d+" id="band_hi_\d+" value="([^"]*)"', r.text) == ["0.5", "0.7", "1"]
    assert 'id="changed-count">' in r.text, "the preview shows the edited draft"
    r = client.post("/admin/policies/default", data=band_form(DEFAULT_FORM, csrf=token, op="split:3"))
    assert re.findall(r'name="band_lo_\d+" id="band_lo_\d+" value="([^"]*)"', r.text) == [
        "0",
        "0.4",
        "0.5",
        "0.7",
        "0.85",
    ]
    r = client.post("/admin/policies/default", data=band_form(DEFAULT_FORM, csrf=token, op="merge:2"))
    assert "Bands 3 and 4 are merged" in r.text
    assert len(runtime_of(client).store.policy_versions("default")) == 1
    for n in range(1, 5):
        assert f'aria-label="Remove band {n}"' in client.get("/admin/policies/default").text


def test_a_problem_names_the_row_on_the_page(client: TestClient) -> None:
    """Row 2 emptied (the old way to remove a band) and row 3's lower edge blank: the page keeps the
    rows where they were and names row 3, marked invalid."""
    token = signed_in(client, "owner")
    rows = [("0", "0.4", "escalate"), ("", "", "review"), ("", "0.7", "follow_up"), ("0.7", "1", "send")]
    r = client.post("/admin/policies/default", data=band_form(rows, csrf=token, op="publish"))
    assert r.status_code == 422 and "row 3: the lower edge is empty" in r.text
    assert 'class="band-row invalid" data-row="2"' in r.text
    assert 'name="band_lo_1" id="band_lo_1" value=""' in r.text, "the emptied row stays in its place"
    fragment = client.post("/admin/policies/default/preview", data=band_form(rows, csrf=token)).text
    assert 'data-bad-rows="2"' in fragment and "row 3: the lower edge is empty" in fragment


def test_the_audit_log_shows_readable_changes_and_filters(client: TestClient) -> None:
    held = held_case(client, score="0.45")
    owner = signed_in(client, "owner")
    publish(client, "shop-b", band_form(DEFAULT_FORM, csrf=owner), note="Shop B gets its own policy.")
    moved = [
        ("0", "0.44", "escalate"),
        ("0.44", "0.5", "review"),
        ("0.5", "0.7", "follow_up"),
        ("0.7", "1", "send"),
    ]
    publish(client, "shop-b", band_form(moved, csrf=owner), note="Escalate up to 0.44.")
    client.cookies.clear()
    sup = signed_in(client, "sup")
    client.post(f"/admin/cases/{held['escalation_id']}/act", data={"csrf_token": sup, "op": "approve"})
    client.cookies.clear()
    signed_in(client, "boss")
    page = client.get("/admin/audit").text
    assert "Escalate up to 0.44." in page and "v1 → v2" in page
    assert (
        '<th scope="row">scores [0.4,0.44)</th><td class="del">review</td><td class="add">escalate</td>'
        in page
    )
    assert '"instruction"' not in page and "&#34;instruction&#34;" not in page, "no full JSON policies"
    assert "case.approved" in page and "user.create" in page

    def actions(query: str) -> list[str]:
        r = client.get(f"/admin/audit?{query}")
        assert r.status_code == 200
        return re.findall(r'<tr data-action="([\w.]+)">', r.text)

    assert actions("actor=owner") == ["policy.publish", "policy.publish"]
    assert actions("channel=shop-b") == ["policy.publish", "policy.publish"]
    assert actions("channel=default") == ["case.approved"]
    assert actions("action=case.approved&actor=sup") == ["case.approved"]
    today = utcnow().date()
    assert "case.approved" in actions(f"from={today}&to={today}")
    assert actions(f"from={today + timedelta(days=1)}") == []
    assert client.get("/admin/audit?from=yesterday").status_code == 422
    assert '<option value="shop-b">' in page and '<option value="owner">' in page, (
        "the filters offer what is there"
    )


@pytest.mark.parametrize("uncertain_action", ["follow_up", "escalate", "review"])
def test_the_editor_shows_sets_and_keeps_the_uncertain_action(
    client: TestClient, uncertain_action: str
) -> None:
    token = signed_in(client, "owner")
    page = client.get("/admin/policies/default").text
    assert "When the guard cannot judge a case" in page
    assert (
        '<option value="review" selected>' in page.split('name="uncertain_action"')[1].split("</select>")[0]
    )
    assert '<option value="send"' not in page.split('name="uncertain_action"')[1].split("</select>")[0]
    form = band_form(DEFAULT_FORM, csrf=token, uncertain_action=uncertain_action)
    assert publish(client, "default", form).status_code == 200
    store = runtime_of(client).store
    policy = store.active_policy("default")
    assert policy is not None and policy.uncertain_action == uncertain_action
    select = (
        client.get("/admin/policies/default").text.split('name="uncertain_action"')[1].split("</select>")[0]
    )
    assert f'<option value="{uncertain_action}" selected>' in select, "the editor shows what is in force"
    r = publish(
        client,
        "default",
        band_form(DEFAULT_FORM, csrf=token, on_error="review", uncertain_action=uncertain_action),
    )
    assert r.status_code == 200
    again = store.active_policy("default")
    assert again is not None and (again.on_error, again.uncertain_action) == ("review", uncertain_action), (
        "saving another change keeps the uncertain action"
    )


def test_a_new_channel_gets_its_first_version(client: TestClient) -> None:
    token = signed_in(client, "owner")
    assert (
        client.get("/admin/policies?channel=shop-zh", follow_redirects=False)
        .headers["location"]
        .endswith("/admin/policies/shop-zh")
    )
    assert "no policy of its own" in client.get("/admin/policies/shop-zh").text
    r = publish(client, "shop-zh", band_form(DEFAULT_FORM, csrf=token))
    assert r.status_code == 200
    policy = runtime_of(client).store.active_policy("shop-zh")
    assert policy is not None and policy.version == 1
    assert client.get("/admin/policies/bad%20name").status_code == 404


def test_a_name_no_channel_can_have_is_refused_on_every_channel_page(client: TestClient) -> None:
    token = signed_in(client, "owner")
    for section in ("policies", "calibration"):
        found = client.get(f"/admin/{section}?channel=shop-zh", follow_redirects=False)
        assert found.status_code == 303 and found.headers["location"].endswith(f"/admin/{section}/shop-zh")
        refused = client.get(f"/admin/{section}?channel=bad%20name")
        assert refused.status_code == 422 and "A channel name is" in refused.text
        page = client.get(f"/admin/{section}/bad%20name")
        assert page.status_code == 404 and "No such channel." in page.text
    for path in ("policies/bad%20name", "policies/bad%20name/preview", "calibration/bad%20name/fit"):
        r = client.post(f"/admin/{path}", data={"csrf_token": token})
        assert r.status_code == 404 and "No such channel." in r.text, path
    r = client.post("/admin/calibration/bad%20name/publish", data={"csrf_token": token, "op": "publish"})
    assert r.status_code == 404 and "No such channel." in r.text


def test_template_samples_render_live(client: TestClient) -> None:
    token = signed_in(client, "owner")
    form = band_form(DEFAULT_FORM, csrf=token, tpl_followup_en="Logged: {{ issue }} ({{ case_ref }})")
    body = client.post("/admin/policies/default/samples", data=form).json()
    assert body["samples"]["followup.en"]["text"] == "Logged: open seam on the pocket (RG-SAMPLE1)"
    assert "口袋开线" in body["samples"]["followup.zh"]["text"]
    bad = band_form(DEFAULT_FORM, csrf=token, tpl_followup_en="{{ nope(")
    assert client.post("/admin/policies/default/samples", data=bad).json()["samples"]["followup.en"]["error"]


def test_outcomes_page_shows_agreement_per_band(client: TestClient) -> None:
    approved = held_case(client, score="0.45")
    taken = held_case(client, score="0.1")
    sup = signed_in(client, "sup")
    client.post(f"/admin/cases/{approved['escalation_id']}/act", data={"csrf_token": sup, "op": "approve"})
    client.post(f"/admin/cases/{taken['escalation_id']}/act", data={"csrf_token": sup, "op": "take_over"})
    client.cookies.clear()
    signed_in(client, "owner")
    page = client.get("/admin/outcomes").text
    assert "[0.4,0.5)" in page and "0/1 (0%)" in page, "review band: approved -> the hold was not needed"
    assert "[0.0,0.4)" in page and "1/1 (100%)" in page, "escalate band: taken over -> right"


def test_dashboard_draws_its_charts(client: TestClient) -> None:
    held_case(client)
    client.post("/v1/guard", json={"question": "q", "reply": "r [score=0.9]"})
    flush(client)
    signed_in(client, "owner")
    page = client.get("/admin/dashboard?window=1h").text
    assert page.count("<svg") == 2 and "cache hits" in page and "scorer p50" in page
    assert "waiting in the queue, oldest for" in page
    assert "SQL" in page and "Redis" in page and "Scorer" in page


# Users and audit --------------------------------------------------------------------------------


def test_admin_manages_users_and_sees_the_audit_log(client: TestClient) -> None:
    token = signed_in(client, "boss")
    queries = queries_of(client)
    r = client.post(
        "/admin/users",
        data={"csrf_token": token, "username": "carol", "role": "supervisor", "password": "short"},
    )
    assert r.status_code == 422 and "at least" in r.text
    r = client.post(
        "/admin/users",
        data={"csrf_token": token, "username": "carol", "role": "supervisor", "password": PASSWORD},
    )
    assert r.status_code == 200 and "User created" in r.text
    carol = queries.user_by_name("carol")
    assert carol is not None and carol.role == "supervisor" and carol.password_hash.startswith("$argon2")
    r = client.post(f"/admin/users/{carol.id}", data={"csrf_token": token, "role": "policy_owner"})
    assert r.status_code == 200
    assert queries.user_by_name("carol").active is False  # type: ignore[union-attr]
    boss = queries.user_by_name("boss")
    assert boss is not None
    r = client.post(f"/admin/users/{boss.id}", data={"csrf_token": token, "role": "admin"})
    assert "no active admin" in r.text and queries.user_by_name("boss").active is True  # type: ignore[union-attr]
    audit = client.get("/admin/audit").text
    assert "user.create" in audit and "user.update" in audit and "carol" in audit


def test_disabling_a_user_ends_their_sessions(client: TestClient) -> None:
    signed_in(client, "sup")
    sup_cookie = client.cookies[auth.SESSION_COOKIE]
    client.cookies.clear()
    token = signed_in(client, "boss")
    sup = queries_of(client).user_by_name("sup")
    assert sup is not None
    client.post(f"/admin/users/{sup.id}", data={"csrf_token": token, "role": "supervisor"})
    client.cookies.clear()
    client.cookies.set(auth.SESSION_COOKIE, sup_cookie, path="/admin")
    assert client.get("/admin/queue", follow_redirects=False).status_code == 303


# Secret key and CLI -----------------------------------------------------------------------------


def test_secret_key_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "var" / "secret_key"
    first = auth.load_secret_key(None, path)
    assert len(first) >= 48 and auth.load_secret_key(None, path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert auth.load_secret_key("configured", path) == b"configured"


def test_cli_creates_a_user_from_stdin(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from guard.cli import main
    from guard.store import migrate

    migrate(sqlite_url)
    monkeypatch.setenv("GUARD_DATABASE_URL", sqlite_url)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["users", "create", "--role", "admin", "--username", "root", "--password-stdin"]) == 0
    queries = AdminQueries.open(sqlite_url)
    user = queries.user_by_name("root")
    assert user is not None and user.role == "admin"
    assert auth.verify_password(user.password_hash, PASSWORD)
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "create", "--role", "admin", "--username", "root2", "--password-stdin"]) == 1
    queries.close()
