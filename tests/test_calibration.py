"""Calibration from supervisors' labels: the fit (pure), the draft previewed, published, served
with its version in the cache key, rolled back and switched off (TestClient over SQLite), and
``guard calibrate`` (a subprocess)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from guard.admin.queries import AdminQueries
from guard.calibration import (
    MIN_LABELS,
    Label,
    collect_labels,
    fit_channel,
    label_grade,
    map_in_scorer_version,
    parse_channel_map,
)
from guard.policies import default_policy, parse_policy, policy_document
from tests.apptools import (
    ADMIN_PASSWORD,
    agree_with_all,
    flush,
    guard_client,
    make_users,
    queries_of,
    runtime_of,
    signed_in,
)

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = ADMIN_PASSWORD
pytestmark = pytest.mark.usefixtures("cheap_hashes")  # test-sized argon2 (conftest.py)
POLICY = default_policy()


def consistent_labels(n_review: int = 12, n_send: int = 10, n_escalate: int = 10) -> list[Label]:
    """Supervisors approve every review-band case (0.45) as it is: those drafts address the issue."""
    labels = [Label(f"r{i}", 0.44 + 0.001 * i, 2, "approved") for i in range(n_review)]
    labels += [Label(f"s{i}", 0.85, 2, "audit right") for i in range(n_send)]
    labels += [Label(f"e{i}", 0.15 + 0.01 * i, 0, "taken_over") for i in range(n_escalate)]
    return labels


def test_too_few_labels_says_how_many_more() -> None:
    fit = fit_channel("shop", consistent_labels(5, 5, 5), POLICY, None)
    assert not fit.report.fitted and fit.document is None
    assert fit.report.needed == MIN_LABELS - 15
    assert fit.report.message.startswith(f"Needs {MIN_LABELS - 15} more labels")
    one_sided = fit_channel("shop", consistent_labels(20, 20, 2), POLICY, None)
    assert not one_sided.report.fitted and one_sided.report.needed == 3
    assert "5 that do not (has 2)" in one_sided.report.message


def test_a_band_supervisors_approve_moves_towards_send_and_agreement_is_held_out() -> None:
    labels = consistent_labels()
    fit = fit_channel("shop", labels, POLICY, None)
    report = fit.report
    assert report.fitted and fit.document is not None, report.message
    assert report.before == (20, 32)  # the 12 approved review cases were held: wrong today
    assert report.after[1] == 32 and report.after[0] >= 30  # on labels each fold did not fit on
    m = parse_channel_map("shop", 1, fit.document.replace("shop-draft", "shop-v1"))
    assert m.apply(0.45) >= 0.7  # now sent
    assert m.apply(0.15) < 0.4  # still escalated
    for x in (0.05, 0.3, 0.45, 0.7, 0.95):
        assert abs(m.invert(m.apply(x)) - x) < 1e-6
    assert map_in_scorer_version(f"fake-1+{m.id}") == ("shop", 1)
    assert map_in_scorer_version("fake-1") is None


def test_labels_that_do_not_rise_with_the_score_are_not_fitted() -> None:
    labels = [Label(f"a{i}", 0.9, 0, "taken_over") for i in range(16)]
    labels += [Label(f"b{i}", 0.1, 2, "approved") for i in range(16)]
    fit = fit_channel("shop", labels, POLICY, None)
    assert not fit.report.fitted and "does not mean a better reply" in fit.report.message


@pytest.mark.parametrize(
    ("kind", "outcome", "action", "verdict", "grade", "expected"),
    [
        ("review", "approved", "review", None, None, 2),
        ("escalate", "edited", "escalate", None, None, 1),
        ("review", "taken_over", "review", None, None, 0),
        ("review", "dismissed", "review", None, None, None),
        ("audit", "audited", "send", "right", None, 2),
        ("audit", "audited", "follow_up", "right", None, 1),
        ("audit", "audited", "send", "wrong", None, 0),
        ("audit", "audited", "follow_up", "wrong", None, None),
        ("audit", "audited", "send", "wrong", 1, 1),
        ("audit", "pending", "send", None, None, None),
    ],
)
def test_label_grades(
    kind: str, outcome: str, action: str, verdict: str | None, grade: int | None, expected: int | None
) -> None:
    assert label_grade(kind, outcome, action, verdict, grade) == expected


# Through the admin pages -------------------------------------------------------------------------


@pytest.fixture
def client(sqlite_url: str) -> Iterator[TestClient]:
    with guard_client(sqlite_url, secret_key="test-secret-key") as c:
        make_users(queries_of(c), {"owner": "policy_owner", "sup": "supervisor"})
        yield c


def check(client: TestClient, score: float, question: str = "Seam came open") -> dict[str, Any]:
    r = client.post(
        "/v1/guard", json={"question": question, "reply": f"We can fix it [score={score}]", "channel": "shop"}
    )
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def playground_score(client: TestClient, csrf: str, channel: str, score: float) -> tuple[str, str]:
    """The playground's score and action for ``check``'s case on ``channel``."""
    r = client.post(
        "/admin/playground",
        data={
            "csrf_token": csrf,
            "op": "score",
            "channel": channel,
            "question": "the same case",
            "replies": f"We can fix it [score={score}]",
        },
        files={"photo": ("", b"", "application/octet-stream")},
    )
    assert r.status_code == 200, r.text[:2000]
    found = (
        re.search(r'id="score-value">([^<]+)<', r.text),
        re.search(r'id="verdict" data-action="(\w+)"', r.text),
    )
    assert found[0] is not None and found[1] is not None, r.text[:2000]
    return found[0].group(1), found[1].group(1)


def make_labels(client: TestClient) -> None:
    """shop's supervisors approve every review case (0.45) as it is; sends are right; escalations are
    taken over."""
    doc = policy_document(default_policy("shop"))
    doc["bands"][-1]["audit_sample"] = 1.0
    runtime_of(client).store.publish_policy(parse_policy(doc), "test")
    runtime_of(client).pipeline.policies.invalidate()
    for i in range(12):
        check(client, 0.44 + 0.001 * i, f"review {i}")
    for i in range(10):
        check(client, 0.85, f"send {i}")
        check(client, 0.15 + 0.01 * i, f"escalate {i}")
    flush(client)
    queries: AdminQueries = queries_of(client)
    agree_with_all(queries, queries.queue_page(limit=1000), "sup")


def test_too_few_labels_on_the_page(client: TestClient) -> None:
    csrf = signed_in(client, "owner")
    check(client, 0.45)
    flush(client)
    r = client.post("/admin/calibration/shop/fit", data={"csrf_token": csrf})
    assert r.status_code == 422 and f"Needs {MIN_LABELS} more labels" in r.text
    assert queries_of(client).score_map_history("shop") == []
    assert client.post("/admin/calibration/shop/fit", data={}).status_code == 403  # CSRF
    client.cookies.clear()
    signed_in(client, "sup")
    assert client.get("/admin/calibration/shop").status_code == 403


def test_fit_preview_publish_serve_roll_back(client: TestClient) -> None:
    make_labels(client)
    before = check(client, 0.45, "the same case")
    assert before["action"] == "review" and "+cal-" not in before["scorer"]["version"]
    csrf = signed_in(client, "owner")
    r = client.post("/admin/calibration/shop/fit", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page = client.get("/admin/calibration/shop").text
    assert "Fitted on 32 labels" in page and 'id="agree-before">20/32' in page
    assert re.search(r'<li data-from="review" data-to="send">1[0-9] move from review to send</li>', page)
    assert "No map: scores as the scorer gives them." in page  # nothing in force yet
    assert check(client, 0.45, "the same case")["action"] == "review"  # a draft changes nothing
    [draft] = queries_of(client).score_map_history("shop")
    r = client.post(
        "/admin/calibration/shop/publish",
        data={"csrf_token": csrf, "op": "publish", "id": str(draft.id), "note": "supervisors approve 0.45"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    after = check(client, 0.45, "the same case")  # the same texts: the raw score is cached ...
    assert after["action"] == "send" and after["score"] >= 0.7  # ... under another key: not served
    assert after["scorer"]["version"].startswith("1+cal-shop-v1-") and not after["cached"]
    again = check(client, 0.45, "the same case")
    assert again["cached"] and again["score"] == after["score"]
    # The playground on the channel applies its map too: it reproduces the live score and action.
    assert playground_score(client, csrf, "shop", 0.45) == (f"{after['score']:.3f}", "send")
    assert playground_score(client, csrf, "default", 0.45) == ("0.450", "review")  # no map there
    decision = client.get(f"/v1/decisions/{after['decision_id']}").json()
    assert decision["scorer"]["version"] == after["scorer"]["version"]
    # Refitting on labels scored under v1 takes them back to raw scores first: the same map again.
    labels, skipped = collect_labels(
        queries_of(client).outcome_rows("shop"), runtime_of(client).store.score_maps("shop"), "shop"
    )
    assert skipped == 0 and len(labels) == 32
    # Switch off: the scorer's own score again, as version 2.
    r = client.post(
        "/admin/calibration/shop/publish", data={"csrf_token": csrf, "op": "rollback", "version": "0"}
    )
    assert r.status_code == 200 and "Switched off" in r.text
    off = check(client, 0.45, "the same case")
    assert off["action"] == "review" and "+cal-" not in off["scorer"]["version"]
    # Roll back to v1: published again as v3, with v3's own id (and cache keys).
    client.post(
        "/admin/calibration/shop/publish", data={"csrf_token": csrf, "op": "rollback", "version": "1"}
    )
    back = check(client, 0.45, "the same case")
    assert back["action"] == "send" and back["scorer"]["version"].startswith("1+cal-shop-v3-")
    assert not back["cached"]
    versions = [v.version for v in queries_of(client).score_map_history("shop")]
    assert versions == [3, 2, 1]
    actions = [e.action for e in queries_of(client).audit_entries()][:4]
    assert actions == [
        "calibration.rollback",
        "calibration.rollback",
        "calibration.publish",
        "calibration.draft",
    ]


def test_a_channel_map_changes_rerank_scores_as_it_changes_guard_scores(client: TestClient) -> None:
    """POST /v1/rerank on a channel applies the channel's score map in force, exactly as POST
    /v1/guard does: the same scores, the same scorer version (and so the same cache keys)."""
    from guard.calibration import map_document

    queries = queries_of(client)
    draft = queries.save_score_map_draft("shop", map_document("shop", None, 2.0, 1.0), {}, "test")
    assert queries.publish_score_map("shop", "test", draft_id=draft) == 1
    runtime_of(client).pipeline.calibrations.invalidate()
    shop_map = runtime_of(client).store.active_score_map("shop")
    assert shop_map is not None
    raw = [0.3, 0.45, 0.8]
    documents = [f"We can fix it [score={r}]" for r in raw]

    def rerank(**channel: str) -> tuple[list[float], str]:
        r = client.post("/v1/rerank", json={"query": "Seam came open", "documents": documents, **channel})
        assert r.status_code == 200, r.text
        by_index = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
        return [by_index[i] for i in range(len(documents))], r.json()["scorer"]["version"]

    shop_scores, shop_version = rerank(channel="shop")
    assert shop_scores == pytest.approx([shop_map.apply(r) for r in raw], abs=1e-4)
    assert shop_scores != pytest.approx(raw, abs=1e-3)  # the map moved them (0.45 -> about 0.65)
    assert shop_version.startswith("1+cal-shop-v1-")
    # /v1/guard on the channel gives the same scores under the same version: served from the
    # cache the rerank filled, as its keys are the channel's.
    guarded = [check(client, r) for r in raw]
    assert [g["score"] for g in guarded] == pytest.approx(shop_scores, abs=1e-4)
    assert {g["scorer"]["version"] for g in guarded} == {shop_version}
    assert all(g["cached"] for g in guarded)
    # A channel without a map: the scorer's own scores, on both routes.
    plain_scores, plain_version = rerank()
    assert plain_scores == pytest.approx(raw) and plain_version == "1"
    plain = client.post("/v1/guard", json={"question": "Seam came open", "reply": documents[1]}).json()
    assert plain["score"] == pytest.approx(0.45) and plain["scorer"]["version"] == "1"


def test_guard_calibrate_cli(client: TestClient, sqlite_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")} | {
        "GUARD_DATABASE_URL": sqlite_url
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "guard.cli", "calibrate", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
            check=False,
        )

    few = run("--channel", "shop")
    assert few.returncode == 1 and f"Needs {MIN_LABELS} more labels" in few.stdout, few.stderr
    make_labels(client)
    done = run("--channel", "shop", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["fitted"] and report["labels"] == 32 and report["before"] == [20, 32]
    assert report["draft_id"] is not None
    [draft] = queries_of(client).score_map_history("shop")
    assert draft.state == "draft" and draft.id == report["draft_id"]


def test_the_book_reads_a_map_once_then_keeps_the_last_one_known() -> None:
    import asyncio

    from guard.calibration import CalibrationBook, map_document

    m = parse_channel_map("shop", 1, map_document("shop", 1, 2.0, 1.0))
    calls: list[str] = []
    fail = False

    def load(channel: str) -> Any:
        calls.append(channel)
        if fail:
            raise RuntimeError("database down")
        return m if channel == "shop" else None

    async def run() -> None:
        nonlocal fail
        book = CalibrationBook(load, ttl_s=0.05)
        assert book.known("shop") == (False, None)
        assert await book.get("shop") is m and await book.get("other") is None
        assert book.known("shop") == (True, m) and calls == ["shop", "other"]
        fail = True
        await asyncio.sleep(0.06)
        assert book.known("shop") == (True, m)  # stale: a re-read starts, the map known stands
        await asyncio.sleep(0.02)
        assert await book.get("shop") is m and calls.count("shop") == 2
        book.invalidate()
        assert book.known("shop") == (False, None)
        assert await book.get("shop") is None  # nothing known and SQL down: no map, logged

    asyncio.run(run())
    assert CalibrationBook(None).known("x") == (True, None)
