"""The check API over SQLite with a fake scorer: every action, the cache, the log, and bad input."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import pytest
from PIL import Image
from sqlalchemy import select
from starlette.testclient import TestClient

from guard.scoring.base import ScoreInput, ScoreResult
from guard.tables import Decision, QueueItem
from tests.apptools import b64, flush, guard_client, png_bytes, runtime_of
from tests.fakes import FakeScorer
from tests.promtext import sample
from tests.test_images import png_header_only

QUESTION_ZH = "新买的牛仔裤，右边口袋开线了，怎么办？"
QUESTION_EN = "The button on my jeans popped off the first time I wore them."


@pytest.fixture
def scorer() -> FakeScorer:
    return FakeScorer()


@pytest.fixture
def client(sqlite_url: str, scorer: FakeScorer) -> Iterator[TestClient]:
    with guard_client(sqlite_url, scorer, score_timeout_s=1.0, max_body_bytes=200_000) as c:
        yield c


def rows(client: TestClient) -> list[Decision]:
    flush(client)
    with runtime_of(client).store.session() as s:
        return list(s.scalars(select(Decision).order_by(Decision.created_at)))


def queue(client: TestClient) -> list[QueueItem]:
    flush(client)
    with runtime_of(client).store.session() as s:
        return list(s.scalars(select(QueueItem)))


def post(client: TestClient, reply: str, question: str = QUESTION_ZH, **extra: object) -> dict[str, object]:
    resp = client.post("/v1/guard", json={"question": question, "reply": reply, **extra})
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


# -- the four actions ----------------------------------------------------------------------------


def test_send_returns_the_draft_as_it_is_and_logs_it(client: TestClient) -> None:
    body = post(client, "您好，口袋开线给您补寄一条新的 [score=0.92]", conversation_id="c-1", locale="zh")
    assert body["action"] == "send"
    assert body["band"] == "[0.7,1.0]"
    assert body["reply"] == "您好，口袋开线给您补寄一条新的 [score=0.92]"
    assert body["follow_up"] is None and body["holding_message"] is None and body["escalation_id"] is None
    assert body["policy"] == {"channel": "default", "version": 1}
    assert body["scorer"] == {"name": "fake", "version": "1"}
    assert body["cached"] is False and body["degraded"] is False
    (row,) = rows(client)
    assert row.id == body["decision_id"]
    assert (row.action, row.score, row.band, row.channel, row.conversation_id) == (
        "send",
        0.92,
        "[0.7,1.0]",
        "default",
        "c-1",
    )
    assert row.question == QUESTION_ZH
    assert row.final_reply == body["reply"]
    assert (row.policy_version, row.scorer_name, row.scorer_version) == (1, "fake", "1")
    assert row.inputs_used == ["question", "reply"]
    assert row.cached is False and row.latency_ms > 0
    # Nothing is held; a sent decision may only be copied for audit (the band's audit_sample).
    assert [q for q in queue(client) if q.kind != "audit"] == []


def test_follow_up_appends_an_issue_specific_follow_up_zh(client: TestClient) -> None:
    body = post(client, "感谢您的反馈，本品支持7天无理由退换 [score=0.56]")
    assert body["action"] == "follow_up"
    assert body["band"] == "[0.5,0.6)"
    follow_up = str(body["follow_up"])
    assert follow_up.startswith("已为您登记右边口袋开线问题，专员将在2小时内联系您")
    assert body["reply"] == f"感谢您的反馈，本品支持7天无理由退换 [score=0.56]\n\n{follow_up}"
    (row,) = rows(client)
    assert row.follow_up == follow_up and row.final_reply == body["reply"]
    assert row.issue_phrase == "右边口袋开线"
    assert body["issue_kind"] == row.issue_kind == "open_seam"
    state = client.get(f"/v1/decisions/{body['decision_id']}").json()
    assert (state["issue_kind"], state["issue_phrase"]) == ("open_seam", "右边口袋开线")


def test_follow_up_in_english(client: TestClient) -> None:
    body = post(
        client, "Sorry about that, you can return it within 30 days. [score=0.65]", question=QUESTION_EN
    )
    assert body["action"] == "follow_up" and body["band"] == "[0.6,0.7)"
    assert "loose button on your jeans" in str(body["follow_up"])
    assert body["locale"] == "en"


@pytest.mark.parametrize(("score", "action"), [(0.45, "review"), (0.1, "escalate")])
def test_review_and_escalate_hold_the_draft_and_queue_the_case(
    client: TestClient, score: float, action: str
) -> None:
    photo = png_bytes()
    body = post(
        client, f"Our newsletter is out! [score={score}]", question=QUESTION_EN, image={"data": b64(photo)}
    )
    assert body["action"] == action
    assert body["reply"] is None
    assert "loose button on your jeans" in str(body["holding_message"])
    assert isinstance(body["escalation_id"], str)
    (item,) = queue(client)
    assert (item.id, item.kind, item.state, item.decision_id) == (
        body["escalation_id"],
        action,
        "pending",
        body["decision_id"],
    )
    (row,) = rows(client)
    assert row.final_reply is None and row.holding_message == body["holding_message"]
    kept = runtime_of(client).store.get_image(str(row.image_sha256))
    assert kept is not None and kept[1] == photo, "the photo of a queued case is kept for the supervisor"
    state = client.get(f"/v1/decisions/{body['decision_id']}").json()
    assert state["state"] == "pending" and state["escalation_id"] == body["escalation_id"]


def test_scorer_error_takes_on_error_and_is_flagged_degraded(client: TestClient) -> None:
    body = post(client, "anything [raise]")
    assert (body["action"], body["score"], body["degraded"], body["reason"]) == (
        "escalate",
        None,
        True,
        "scorer_unavailable",
    )
    (row,) = rows(client)
    assert row.degraded and row.reason == "scorer_unavailable" and row.score is None


def test_nan_score_takes_on_error(client: TestClient) -> None:
    body = post(client, "anything [score=nan]")
    assert body["action"] == "escalate" and body["degraded"] is True


def test_hung_scorer_is_cut_off_at_the_deadline(client: TestClient, scorer: FakeScorer) -> None:
    try:
        body = post(client, "anything [hang]")
    finally:
        scorer.release.set()
    assert body["action"] == "escalate" and body["degraded"] is True


# -- cache, images, candidates, other routes ------------------------------------------------------


def test_repeat_is_answered_from_the_cache(client: TestClient, scorer: FakeScorer) -> None:
    first = post(client, "口袋开线给您补寄 [score=0.8]")
    second = post(client, "口袋开线给您补寄 [score=0.8]")
    assert scorer.calls == 1
    assert (first["cached"], second["cached"]) == (False, True)
    assert (first["action"], first["score"]) == (second["action"], second["score"])
    assert first["decision_id"] != second["decision_id"]
    assert [r.cached for r in rows(client)] == [False, True], "cached decisions are logged too"


def test_cache_key_includes_the_image(client: TestClient, scorer: FakeScorer) -> None:
    post(client, "same reply", image={"data": b64(png_bytes(color="red"))})
    post(client, "same reply", image={"data": b64(png_bytes(color="blue"))})
    assert scorer.calls == 2


def test_multipart_with_a_photo_file(client: TestClient) -> None:
    photo = png_bytes(fmt="JPEG")
    resp = client.post(
        "/v1/guard",
        data={"question": "这个怎么办？", "reply": "亲，新品上架了 [score=0.2]", "conversation_id": "c-9"},
        files={"image": ("photo.jpg", photo, "image/jpeg")},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["action"] == "escalate"
    assert "您的问题已转给人工客服" in body["holding_message"], (
        "no issue phrase: the message still reads naturally"
    )
    (row,) = rows(client)
    assert row.image_sha256 is not None and row.conversation_id == "c-9"


def test_registered_image_can_be_referenced_by_id(client: TestClient, scorer: FakeScorer) -> None:
    photo = png_bytes(size=(40, 30))
    reg = client.post("/v1/images", files={"image": ("p.png", photo, "image/png")})
    assert reg.status_code == 201, reg.text
    image_id = reg.json()["image_id"]
    assert (reg.json()["width"], reg.json()["height"]) == (40, 30)
    by_id = post(client, "reply [score=0.75]", image={"id": image_id})
    by_data = post(client, "reply [score=0.75]", image={"data": b64(photo)})
    assert by_id["action"] == "send"
    assert by_data["cached"] is True, "the id and the bytes name the same photo"
    assert scorer.calls == 1


def test_candidates_are_ranked_and_the_best_decides(client: TestClient) -> None:
    body = post(client, "generic [score=0.55]", candidates=["specific [score=0.91]", "off [score=0.1]"])
    assert body["action"] == "send"
    assert body["reply"] == "specific [score=0.91]"
    assert [c["score"] for c in body["candidates"]] == [0.91, 0.55, 0.1]  # type: ignore[index]


def test_decision_endpoint_for_a_sent_reply(client: TestClient) -> None:
    body = post(client, "fine [score=0.8]")
    flush(client)
    got = client.get(f"/v1/decisions/{body['decision_id']}")
    assert got.status_code == 200
    assert got.json()["state"] == "sent" and got.json()["reply"] == "fine [score=0.8]"
    missing = client.get("/v1/decisions/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_rerank_orders_documents(client: TestClient) -> None:
    resp = client.post(
        "/v1/rerank",
        json={"query": "口袋开线", "documents": ["a [score=0.3]", "b [score=0.9]", "c [score=0.6]"]},
    )
    assert resp.status_code == 200, resp.text
    assert [r["index"] for r in resp.json()["results"]] == [1, 2, 0]


def test_channel_policy_versions_apply(client: TestClient) -> None:
    from guard.policies import Band, default_policy

    strict = default_policy("strict").__class__(
        channel="strict", bands=(Band(0.0, 0.95, "escalate"), Band(0.95, 1.0, "send"))
    )
    runtime_of(client).store.publish_policy(strict, author="test")
    runtime_of(client).pipeline.policies.invalidate()
    body = post(client, "ok [score=0.9]", channel="strict")
    assert body["action"] == "escalate" and body["policy"] == {"channel": "strict", "version": 1}
    other = post(client, "ok [score=0.9]", channel="unknown-channel")
    assert other["action"] == "send" and other["policy"] == {"channel": "default", "version": 1}


def test_health_ready_and_metrics(client: TestClient) -> None:
    post(client, "x [score=0.8]")
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "scorer": True,
        "sql": True,
        "cache": True,
        "spool": True,
    }
    text = client.get("/metrics").text
    assert sample(text, "guard_decisions_total", action="send", channel="default") == 1
    assert sample(text, "guard_decision_latency_seconds_count") == 1


# -- whether the instruction was read ----------------------------------------------------------------


class ReadsInstruction(FakeScorer):
    """FakeScorer that says it read the instruction (as the reranker does)."""

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        return [
            ScoreResult(r.score, r.inputs_used, instruction_used=True) for r in super().score_batch(items)
        ]


@pytest.mark.parametrize("reads", [False, True])
def test_every_decision_says_whether_the_instruction_was_used(sqlite_url: str, reads: bool) -> None:
    scorer = ReadsInstruction() if reads else FakeScorer()
    with guard_client(sqlite_url, scorer, score_timeout_s=1.0) as c:
        first, again = (post(c, "ok [score=0.8]") for _ in range(2))
        assert (first["cached"], again["cached"]) == (False, True)
        assert first["instruction_used"] is again["instruction_used"] is reads, "a cached score says it too"
        assert [r.instruction_used for r in rows(c)] == [reads, reads]
        state = c.get(f"/v1/decisions/{first['decision_id']}").json()
        assert state["instruction_used"] is reads


# -- cases the guard cannot judge --------------------------------------------------------------------

VAGUE = ["这啥", "Look at this, what now?", "这个怎么办？"]


@pytest.mark.parametrize("question", VAGUE)
@pytest.mark.parametrize(
    ("score", "action"),
    [(0.95, "review"), (0.75, "review"), (0.65, "review"), (0.45, "review"), (0.1, "escalate")],
)
def test_a_photo_carrying_an_unstated_issue_is_uncertain_and_never_sent(
    client: TestClient, question: str, score: float, action: str
) -> None:
    body = post(client, f"ok [score={score}]", question=question, image={"data": b64(png_bytes())})
    assert (body["action"], body["uncertain"], body["uncertain_reason"]) == (action, True, "issue_not_stated")
    assert body["score"] == score, "the score is kept as it came"
    assert body["reason"] == ("issue_not_stated" if score >= 0.5 else None), (
        "set when the band's action was replaced"
    )
    assert isinstance(body["escalation_id"], str) and body["reply"] is None
    (row,) = rows(client)
    assert (row.uncertain, row.uncertain_reason, row.action) == (True, "issue_not_stated", action)
    state = client.get(f"/v1/decisions/{body['decision_id']}").json()
    assert (state["uncertain"], state["uncertain_reason"]) == (True, "issue_not_stated")


@pytest.mark.parametrize(
    ("question", "reply", "photo"),
    [
        (QUESTION_ZH, "ok [score=0.9]", True),  # the question states the issue
        ("这啥", "ok [score=0.9] [sees-image]", True),  # the scorer saw the photo
        ("这啥", "ok [score=0.9]", False),  # no photo carries anything
    ],
)
def test_a_case_is_certain_when_a_text_states_the_issue_or_the_scorer_sees_the_photo(
    client: TestClient, question: str, reply: str, photo: bool
) -> None:
    extra = {"image": {"data": b64(png_bytes())}} if photo else {}
    body = post(client, reply, question=question, **extra)
    assert (body["action"], body["uncertain"], body["uncertain_reason"]) == ("send", False, None)
    (row,) = rows(client)
    assert (row.uncertain, row.uncertain_reason) == (False, None)


@pytest.mark.parametrize(
    ("uncertain_action", "score", "action"),
    [("follow_up", 0.9, "follow_up"), ("follow_up", 0.45, "review"), ("escalate", 0.9, "escalate")],
)
def test_the_channels_uncertain_action_applies(
    client: TestClient, uncertain_action: str, score: float, action: str
) -> None:
    from guard.policies import default_policy, parse_policy, policy_document

    doc = policy_document(default_policy("shop")) | {"uncertain_action": uncertain_action}
    runtime_of(client).store.publish_policy(parse_policy(doc), author="test")
    runtime_of(client).pipeline.policies.invalidate()
    body = post(
        client, f"ok [score={score}]", question="这啥", channel="shop", image={"data": b64(png_bytes())}
    )
    assert (body["action"], body["uncertain"]) == (action, True)
    if action == "follow_up":
        assert body["reply"] == f"ok [score={score}]\n\n{body['follow_up']}" and body["follow_up"]


# -- bad input: one test per case, each a clear 4xx, never a 500 ------------------------------------


def error_of(resp: object) -> tuple[int, str]:
    status = resp.status_code  # type: ignore[attr-defined]
    assert 400 <= status < 500, resp.text  # type: ignore[attr-defined]
    body = resp.json()  # type: ignore[attr-defined]
    assert body["error"]["message"]
    return status, body["error"]["code"]


def test_missing_reply(client: TestClient) -> None:
    assert error_of(client.post("/v1/guard", json={"question": "q"})) == (422, "missing_field")


def test_missing_question(client: TestClient) -> None:
    assert error_of(client.post("/v1/guard", json={"reply": "r"})) == (422, "missing_field")


def test_wrong_typed_field(client: TestClient) -> None:
    assert error_of(client.post("/v1/guard", json={"question": 12, "reply": "r"})) == (422, "wrong_type")


def test_invalid_json(client: TestClient) -> None:
    resp = client.post(
        "/v1/guard", content=b'{"question": "q", ', headers={"content-type": "application/json"}
    )
    assert error_of(resp) == (400, "invalid_json")


def test_json_that_is_not_an_object(client: TestClient) -> None:
    assert error_of(client.post("/v1/guard", json=["q", "r"])) == (400, "invalid_json")


def test_invalid_base64(client: TestClient) -> None:
    resp = client.post("/v1/guard", json={"question": "q", "reply": "r", "image": {"data": "not base64!!"}})
    assert error_of(resp) == (422, "invalid_base64")


def test_not_an_image(client: TestClient) -> None:
    resp = client.post(
        "/v1/guard", json={"question": "q", "reply": "r", "image": {"data": b64(b"hello world")}}
    )
    assert error_of(resp) == (422, "not_an_image")


def test_unsupported_format(client: TestClient) -> None:
    bmp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(bmp, format="BMP")
    resp = client.post(
        "/v1/guard", json={"question": "q", "reply": "r", "image": {"data": b64(bmp.getvalue())}}
    )
    assert error_of(resp) == (415, "unsupported_image_format")


def test_truncated_image(client: TestClient) -> None:
    data = png_bytes(size=(64, 64), fmt="JPEG")[:-200]
    resp = client.post("/v1/guard", json={"question": "q", "reply": "r", "image": {"data": b64(data)}})
    assert error_of(resp) == (422, "truncated_image")


def test_header_only_10000x10000_png(client: TestClient) -> None:
    resp = client.post(
        "/v1/guard",
        json={"question": "q", "reply": "r", "image": {"data": b64(png_header_only(10000, 10000))}},
    )
    assert error_of(resp) == (413, "image_too_many_pixels")


def test_body_over_the_limit_by_content_length(client: TestClient) -> None:
    resp = client.post("/v1/guard", content=b"x" * 200_001, headers={"content-type": "application/json"})
    assert error_of(resp) == (413, "body_too_large")


def test_body_over_the_limit_is_refused_while_reading(client: TestClient) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(100):  # 100 x 10 kB with no Content-Length: refused after about 20 chunks
            sent.append(1)
            yield b"x" * 10_000

    resp = client.post("/v1/guard", content=chunks(), headers={"content-type": "application/json"})
    assert error_of(resp) == (413, "body_too_large")


def test_question_over_its_length_limit(client: TestClient) -> None:
    resp = client.post("/v1/guard", json={"question": "q" * 4001, "reply": "r"})
    assert error_of(resp) == (422, "too_long")


def test_reply_over_its_length_limit(client: TestClient) -> None:
    resp = client.post("/v1/guard", json={"question": "q", "reply": "r" * 8001})
    assert error_of(resp) == (422, "too_long")


def test_empty_reply(client: TestClient) -> None:
    assert error_of(client.post("/v1/guard", json={"question": "q", "reply": "  "})) == (422, "empty_reply")


def test_empty_question_needs_an_image(client: TestClient) -> None:
    assert error_of(client.post("/v1/guard", json={"question": "", "reply": "r"})) == (422, "empty_question")
    ok = client.post("/v1/guard", json={"question": "", "reply": "r", "image": {"data": b64(png_bytes())}})
    assert ok.status_code == 200


def test_candidates_must_be_strings(client: TestClient) -> None:
    resp = client.post("/v1/guard", json={"question": "q", "reply": "r", "candidates": [1, 2]})
    assert error_of(resp) == (422, "wrong_type")


def test_too_many_candidates(client: TestClient) -> None:
    resp = client.post("/v1/guard", json={"question": "q", "reply": "r", "candidates": ["c"] * 17})
    assert error_of(resp) == (422, "too_many_candidates")


def test_image_of_the_wrong_shape(client: TestClient) -> None:
    resp = client.post("/v1/guard", json={"question": "q", "reply": "r", "image": {"url": "http://x"}})
    assert error_of(resp) == (422, "wrong_type")


def test_unknown_image_id(client: TestClient) -> None:
    resp = client.post("/v1/guard", json={"question": "q", "reply": "r", "image": {"id": "0" * 64}})
    assert error_of(resp) == (404, "unknown_image")


def test_multipart_with_an_unexpected_file(client: TestClient) -> None:
    resp = client.post("/v1/guard", data={"question": "q", "reply": "r"}, files={"photo": ("p.png", b"x")})
    assert error_of(resp) == (400, "unexpected_file")


def test_malformed_multipart(client: TestClient) -> None:
    resp = client.post(
        "/v1/guard",
        content=b"--nope\r\ngarbage",
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    status, _code = error_of(resp)
    assert status in (400, 422)


def test_unknown_route_and_method_are_json_errors(client: TestClient) -> None:
    assert error_of(client.get("/v1/nothing")) == (404, "not_found")
    assert error_of(client.get("/v1/guard")) == (405, "method_not_allowed")


def test_bad_input_loses_nothing_and_logs_nothing(client: TestClient) -> None:
    client.post("/v1/guard", json={"question": "q"})
    post(client, "fine [score=0.8]")
    assert len(rows(client)) == 1
