"""The admin playground through TestClient: who may use it, CSRF, errors shown next to their field,
escaping, the ranking equal to POST /v1/rerank's, drafts, photos from the queue, progress, and that
nothing is written to the decision log or the policies."""

from __future__ import annotations

import html
import io
import json
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from guard.admin import playground
from guard.admin.playground import MAX_REPLIES, rank_order, split_replies
from guard.errors import ImageError
from guard.images import decode_image
from guard.scoring.base import ScoreInput, ScoreResult
from guard.store import Store
from tests.apptools import b64, flush, guard_client, make_users, png_bytes, queries_of, runtime_of
from tests.fakes import FakeScorer
from tests.test_admin import band_form, held_case, publish, signed_in

pytestmark = pytest.mark.usefixtures("cheap_hashes")  # test-sized argon2 (conftest.py)

URL = "/admin/playground"
STRICT = "Be strict."


class InstructionScorer(FakeScorer):
    """FakeScorer, but it reads the instruction: one containing "Be strict." takes 0.3 off every score."""

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        out = super().score_batch(items)
        return [
            ScoreResult(
                max(r.score - 0.3, 0.0) if STRICT in item.instruction else r.score,
                r.inputs_used,
                instruction_used=True,
            )
            for item, r in zip(items, out, strict=True)
        ]


@pytest.fixture
def scorer() -> InstructionScorer:
    return InstructionScorer()


@pytest.fixture
def client(sqlite_url: str, scorer: InstructionScorer) -> Iterator[TestClient]:
    with guard_client(sqlite_url, scorer=scorer, secret_key="test-secret-key") as c:
        make_users(queries_of(c))
        yield c


def store_of(client: TestClient) -> Store:
    return runtime_of(client).store


def post(client: TestClient, token: str, op: str = "rerank", files: Any = None, **fields: str) -> Any:
    data = {"csrf_token": token, "op": op, "question": "The pocket seam came open", **fields}
    return client.post(URL, data=data, files=files or {"photo": ("", b"", "application/octet-stream")})


def ranked_indices(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'class="rank-row[^"]*" data-index="(\d+)"', page)]


def field_error(page: str, name: str) -> str | None:
    found = re.search(rf'<p class="field-error" id="error-{name}" role="alert">(.*?)</p>', page, re.S)
    return None if found is None else html.unescape(found.group(1))


REPLIES = "\n---\n".join(
    [
        "Thanks for your feedback [score=0.3]",
        "Sorry about the seam; send us a photo and we repair it [score=0.8]",
        "We can fix it [score=0.55]",
        "No marker scores 0.9",
        "A tie with the third [score=0.55]",
    ]
)


# Pure parts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "blocks"),
    [
        ("one reply", ["one reply"]),
        ("a\n---\nb", ["a", "b"]),
        ("a\r\n---\r\nb\r\n", ["a", "b"]),
        ("a\n  ----  \nb\n---\n", ["a", "b"]),
        ("---\na\n---\n\n---\nb", ["a", "", "b"]),
        ("a --- b\n-- \nc", ["a --- b\n-- \nc"]),
        ("", []),
        ("\n---\n  \n", []),
    ],
)
def test_split_replies(text: str, blocks: list[str]) -> None:
    assert split_replies(text) == blocks


@pytest.mark.parametrize(
    ("scores", "order"),
    [
        ([0.3, 0.8, 0.55], [1, 2, 0]),
        ([0.5, 0.5, 0.9], [2, 0, 1]),
        ([None, 0.1, 0.0], [1, 0, 2]),
        ([], []),
    ],
)
def test_rank_order_is_reranks(scores: list[float | None], order: list[int]) -> None:
    assert rank_order(scores) == order


# Access -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["sup", "owner", "boss"])
def test_supervisors_policy_owners_and_admins_may_use_it(client: TestClient, who: str) -> None:
    token = signed_in(client, who)
    page = client.get(URL)
    assert page.status_code == 200 and 'id="playground-form"' in page.text
    assert f'href="{URL}"' in client.get("/admin/dashboard").text  # in the menu
    r = post(client, token, "score", replies="We can fix it [score=0.55]")
    assert r.status_code == 200 and 'id="score-bar"' in r.text


def test_anonymous_is_sent_to_sign_in(client: TestClient, scorer: InstructionScorer) -> None:
    r = client.get(URL, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/login?next=/admin/playground"
    r = client.post(URL, data={"op": "score", "question": "q", "replies": "r"}, follow_redirects=False)
    assert r.status_code == 401 and scorer.calls == 0


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_post_without_the_sessions_csrf_token_is_refused(
    client: TestClient, scorer: InstructionScorer, token: str | None
) -> None:
    signed_in(client, "sup")
    data = {"op": "rerank", "question": "q", "replies": "a\n---\nb"}
    if token is not None:
        data["csrf_token"] = token
    r = client.post(URL, data=data)
    assert r.status_code == 403 and "CSRF" in r.text
    assert scorer.calls == 0


def test_security_headers_and_no_inline_script(client: TestClient) -> None:
    token = signed_in(client, "boss")
    r = post(client, token, replies=REPLIES, files={"photo": ("p.png", png_bytes(), "image/png")})
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "img-src 'self' data:" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert re.search(r"<script(?![^>]*\bsrc=)", r.text) is None
    assert " style=" not in r.text and "<style" not in r.text and "onclick" not in r.text
    assert client.get("/admin/static/playground.js").status_code == 200


# Scoring and ranking ----------------------------------------------------------------------------


def test_score_one_reply_shows_bar_action_band_follow_up_and_inputs(client: TestClient) -> None:
    token = signed_in(client, "sup")
    r = post(client, token, "score", question="口袋开线怎么办？", replies="我们可以为您修补 [score=0.55]")
    assert r.status_code == 200
    page = r.text
    assert 'id="verdict" data-action="follow_up"' in page
    assert "band <b>[0.5,0.6)</b>" in page and 'id="score-value">0.550<' in page
    bar = page.split('id="score-bar"')[1].split("</figure>")[0]
    assert bar.count("<rect") == 5 and bar.count("marked") == 1
    assert 'class="a-follow_up marked"' in bar and "score 0.550" in bar
    follow_up = re.search(r'id="follow-up">(.*?)</blockquote>', page, re.S)
    assert follow_up is not None and "口袋开线" in follow_up.group(1)
    customer = re.search(r'id="customer-reply">(.*?)</blockquote>', page, re.S)
    assert customer is not None and customer.group(1).startswith("我们可以为您修补 [score=0.55]\n\n")
    assert re.search(r'id="inputs-used">question, reply', page)


@pytest.mark.parametrize(("question", "uncertain"), [("这啥", True), ("The pocket seam came open", False)])
def test_a_photo_carrying_an_unstated_issue_is_uncertain_as_in_the_pipeline(
    client: TestClient, question: str, uncertain: bool
) -> None:
    token = signed_in(client, "sup")
    photo = {"photo": ("p.png", png_bytes(), "image/png")}
    page = post(client, token, "score", question=question, replies="ok [score=0.9]", files=photo).text
    assert ('data-action="review"' if uncertain else 'data-action="send"') in page
    assert ('id="uncertain"' in page) is uncertain
    api = client.post(
        "/v1/guard",
        json={"question": question, "reply": "ok [score=0.9]", "image": {"data": b64(png_bytes())}},
    ).json()
    assert api["uncertain"] is uncertain and f'id="verdict" data-action="{api["action"]}"' in page


def test_held_reply_shows_the_holding_message(client: TestClient) -> None:
    token = signed_in(client, "sup")
    page = post(client, token, "score", replies="Thanks [score=0.1]").text
    assert 'data-action="escalate"' in page and "holding message instead" in page


def test_rerank_orders_like_the_rerank_api(client: TestClient) -> None:
    token = signed_in(client, "sup")
    page = post(client, token, replies=REPLIES).text
    documents = split_replies(REPLIES)
    api = client.post("/v1/rerank", json={"query": "The pocket seam came open", "documents": documents})
    assert api.status_code == 200
    expected = [d["index"] for d in api.json()["results"]]
    assert ranked_indices(page) == expected == [3, 1, 2, 4, 0]  # the tie keeps the given order
    rows = re.findall(r'data-index="(\d+)" data-action="(\w+)" data-score="([0-9.]+)"', page)
    assert [(int(i), a) for i, a, _ in rows] == [
        (3, "send"),
        (1, "send"),
        (2, "follow_up"),
        (4, "follow_up"),
        (0, "escalate"),
    ]
    scores = {int(i): float(s) for i, _, s in rows}
    assert scores == {d["index"]: d["relevance_score"] for d in api.json()["results"]}
    assert page.count('class="best-mark"') == 1 and 'class="rank-row best" data-index="3"' in page
    assert page.count('<div class="followup">') == 2 and page.count('<div class="holding">') == 1


def test_rerank_with_an_edited_instruction_orders_like_the_api_and_compares(client: TestClient) -> None:
    token = signed_in(client, "sup")
    replies = "Strict drops it [score=0.75]\n---\nB [score=0.6]"
    page = post(client, token, replies=replies, instruction=f"{STRICT} Judge the reply.").text
    api = client.post(
        "/v1/rerank",
        json={
            "query": "The pocket seam came open",
            "documents": split_replies(replies),
            "instruction": f"{STRICT} Judge the reply.",
        },
    )
    assert ranked_indices(page) == [d["index"] for d in api.json()["results"]] == [0, 1]
    # Side by side: the channel's instruction (send, follow-up) and the edited one (review, escalate).
    cells = re.findall(r'<td class="base">([0-9.]+) <span class="pill a-(\w+)">', page)
    assert cells == [("0.750", "send"), ("0.600", "follow_up")]
    assert re.findall(r'data-index="\d+" data-action="(\w+)"', page) == ["review", "escalate"]
    assert 'id="to-editor"' not in page  # a supervisor cannot take it to the policy editor


def test_score_compares_the_channels_instruction_with_the_edited_one(client: TestClient) -> None:
    token = signed_in(client, "owner")
    page = post(client, token, "score", replies="Fixed [score=0.8]", instruction=STRICT).text
    compare = page.split('id="compare"')[1].split("</table>")[0]
    assert 'class="base-score">0.800<' in compare and 'class="new-score">0.500<' in compare
    assert "Judge whether the response directly addresses" in compare and STRICT in compare
    # A policy owner can take the instruction to the editor: a form with the policy's fields.
    editor = page.split('id="to-editor"')[1].split("</form>")[0]
    assert 'action="/admin/policies/default"' in page
    assert f'name="instruction" value="{STRICT}"' in editor and 'name="band_hi_0" value="0.4"' in editor
    assert 'name="uncertain_action" value="review"' in editor
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', editor))
    opened = client.post("/admin/policies/default", data={k: html.unescape(v) for k, v in fields.items()})
    assert opened.status_code == 200 and f">{STRICT}</textarea>" in opened.text
    assert len(store_of(client).policy_versions("default")) == 1  # nothing published


def test_a_scorer_that_does_not_read_the_instruction_says_so_when_comparing(
    client: TestClient, sqlite_url: str
) -> None:
    token = signed_in(client, "owner")
    reads = post(client, token, "score", replies="Fixed [score=0.8]", instruction=STRICT).text
    assert 'id="compare"' in reads and 'id="instruction-unused"' not in reads
    with guard_client(sqlite_url, scorer=FakeScorer(), secret_key="test-secret-key") as plain:
        token = signed_in(plain, "owner")
        page = post(plain, token, "score", replies="Fixed [score=0.8]", instruction=STRICT).text
        assert 'id="compare"' in page and 'id="instruction-unused"' in page
        assert "This scorer does not read the instruction" in page
        unedited = post(plain, token, "score", replies="Fixed [score=0.8]").text
        assert 'id="instruction-unused"' not in unedited, "shown only when an instruction comparison is made"
        body = plain.post("/v1/guard", json={"question": "q", "reply": "Fixed [score=0.8]"}).json()
        assert body["instruction_used"] is False


def test_unedited_instruction_follows_the_channel(client: TestClient) -> None:
    token = signed_in(client, "owner")
    form = band_form([("0", "1", "send")], csrf=token)
    form["instruction"] = "Judge the shop channel."
    assert publish(client, "shop", form).status_code == 200
    shown = re.search(r'name="channel_instruction" value="([^"]*)"', client.get(URL).text)
    assert shown is not None
    # The box still holds the default channel's instruction, but the channel is now "shop".
    page = post(
        client,
        token,
        replies="A [score=0.3]",
        channel="shop",
        instruction=html.unescape(shown.group(1)),
        channel_instruction=html.unescape(shown.group(1)),
    ).text
    assert 'id="compare"' not in page and "with the channel&#39;s instruction</th>" not in page
    assert "Judge the shop channel.</textarea>" in page and 'data-action="send"' in page


def test_nothing_is_written_to_the_decision_log_or_the_policies(client: TestClient) -> None:
    held_case(client)
    store = store_of(client)
    before = (store.count_decisions(), len(store.queue()), store.policy_versions("default"))
    token = signed_in(client, "boss")
    for op, replies in (("score", "One [score=0.1]"), ("rerank", REPLIES)):
        assert post(client, token, op, replies=replies, instruction=STRICT).status_code == 200
    flush(client)
    assert (store.count_decisions(), len(store.queue()), store.policy_versions("default")) == before
    assert before[0] == 1


# Errors next to their field ---------------------------------------------------------------------


def _many(n: int) -> str:
    return "\n---\n".join(f"reply {i}" for i in range(n))


@pytest.mark.parametrize(
    ("op", "fields", "name", "message"),
    [
        ("rerank", {"replies": ""}, "replies", "There is no reply to score"),
        ("rerank", {"replies": "\n---\n \n"}, "replies", "There is no reply to score"),
        ("rerank", {"replies": _many(MAX_REPLIES + 1)}, "replies", "at most 50 are allowed"),
        ("rerank", {"replies": "a\n---\n\n---\nb"}, "replies", "Reply #2 is empty"),
        ("rerank", {"replies": "a\n---\n" + "x" * 8001}, "replies", "Reply #2 is over 8,000 characters"),
        ("score", {"replies": "a\n---\nb"}, "replies", "Score takes one reply and there are 2"),
        ("score", {"replies": "a", "question": "q" * 4001}, "question", "the limit is 4,000"),
        ("score", {"replies": "a", "question": "  "}, "question", "may be empty only when a photo"),
        ("score", {"replies": "a", "instruction": "i" * 2001}, "instruction", "the limit is 2,000"),
        ("score", {"replies": "a", "channel": "no spaces"}, "channel", "A channel name is"),
        ("bogus", {"replies": "a"}, "op", "Press Score or Re-rank"),
    ],
)
def test_bad_text_input_is_explained_next_to_its_field(
    client: TestClient, scorer: InstructionScorer, op: str, fields: dict[str, str], name: str, message: str
) -> None:
    token = signed_in(client, "sup")
    r = post(client, token, op, **fields)
    assert r.status_code == 422
    error = field_error(r.text, name)
    assert error is not None and message in error, r.text
    assert scorer.calls == 0 and 'id="result"' not in r.text
    if name != "op":
        assert f'aria-describedby="error-{name}"' in r.text


def _bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="BMP")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"hello, not an image", "not_an_image"),
        (_bmp(), "unsupported_image_format"),
        (png_bytes()[:-30], "truncated_image"),
    ],
)
def test_bad_photo_gets_the_apis_message_next_to_the_field(
    client: TestClient, data: bytes, code: str
) -> None:
    token = signed_in(client, "sup")
    page = post(client, token, replies="a", files={"photo": ("x.png", data, "image/png")})
    assert page.status_code == 422
    api = client.post(
        "/v1/guard", data={"question": "q", "reply": "a"}, files={"image": ("x.png", data, "image/png")}
    ).json()["error"]
    assert api["code"] == code
    assert field_error(page.text, "photo") == api["message"]
    assert "The pocket seam came open</textarea>" in page.text  # the rest of the form is kept


def test_photo_too_large_gets_the_apis_message(sqlite_url: str) -> None:
    big = Image.frombytes("RGB", (120, 120), bytes(range(256)) * 168 + bytes(192))
    buf = io.BytesIO()
    big.save(buf, format="PNG", compress_level=0)
    data = buf.getvalue()
    limit = 20_000
    assert len(data) > limit
    with pytest.raises(ImageError) as expected:
        decode_image(data, max_bytes=limit)
    with guard_client(sqlite_url, secret_key="k", max_body_bytes=limit) as client:
        make_users(queries_of(client))
        token = signed_in(client, "sup")
        r = post(client, token, replies="a", files={"photo": ("big.png", data, "image/png")})
        assert r.status_code == 422
        assert field_error(r.text, "photo") == expected.value.message
        assert expected.value.code == "image_too_large"
        # A form far over the limit is refused unread.
        huge = b"\0" * (3 * limit + (2 << 20) + 1)
        r = post(client, token, replies="a", files={"photo": ("big.png", huge, "image/png")})
        assert r.status_code == 413 and "A photo may be at most 20,000 bytes" in r.text


def test_typed_and_uploaded_text_is_escaped(client: TestClient) -> None:
    token = signed_in(client, "owner")
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    for op, replies in (("score", f"{evil} [score=0.55]"), ("rerank", f"{evil}\n---\nb {evil}")):
        r = post(
            client,
            token,
            op,
            question=f"seam {evil}",
            replies=replies,
            instruction=f"{evil} judge",
            channel='x"><b>',
            files={"photo": (f"{evil}.png", b"<svg onload=alert(1)>", "image/png")},
        )
        assert "<script>alert" not in r.text and "<img src=x" not in r.text and "<svg" not in r.text
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in r.text
        assert '"><b>' not in r.text
    r = post(client, token, "score", question=f"seam {evil}", replies=f"{evil} [score=0.55]")
    assert r.status_code == 200 and "&lt;script&gt;" in r.text.split('id="result"')[1]
    assert "<script>alert" not in r.text


# Photos: uploaded and carried over, or a queued case's ----------------------------------------


def test_uploaded_photo_is_carried_to_the_next_post(client: TestClient) -> None:
    token = signed_in(client, "sup")
    r = post(client, token, replies="a", files={"photo": ("p.png", png_bytes(), "image/png")})
    kept = re.search(r'name="photo_data" value="([^"]+)"', r.text)
    assert kept is not None and kept.group(1) == b64(png_bytes())
    assert 'src="data:image/png;base64,' in r.text and "Scoring with the uploaded photo" in r.text
    # Next time: no new file, an empty question (allowed with a photo).
    r = post(client, token, replies="a", question="", photo_data=kept.group(1))
    assert r.status_code == 200 and "Scoring with the uploaded photo" in r.text
    r = post(client, token, replies="a", question="", photo_data=kept.group(1), no_photo="on")
    assert r.status_code == 422 and field_error(r.text, "question") is not None


def test_supervisor_picks_the_photo_of_a_queued_case(client: TestClient) -> None:
    case = held_case(client, question="口袋开线怎么办？")
    token = signed_in(client, "sup")
    page = client.get(f"{URL}?case={case['escalation_id']}").text
    assert f'<option value="{case["escalation_id"]}" selected>' in page
    assert "口袋开线怎么办？</textarea>" in page and "感谢您的反馈 [score=0.1]</textarea>" in page
    assert (
        f'href="{URL}?case={case["escalation_id"]}"'
        in client.get(f"/admin/cases/{case['escalation_id']}").text
    )
    r = post(client, token, replies="a", question="", case_id=case["escalation_id"])
    assert r.status_code == 200 and "Scoring with the case&#39;s photo" in r.text
    assert f'src="/admin/cases/{case["escalation_id"]}/photo"' in r.text
    r = post(client, token, replies="a", case_id="no-such-case")
    assert field_error(r.text, "case") == "That case has no photo (or there is no such case)."


def test_policy_owner_cannot_use_a_queued_cases_photo(client: TestClient, scorer: InstructionScorer) -> None:
    case = held_case(client)
    calls = scorer.calls
    token = signed_in(client, "owner")
    assert 'name="case_id"' not in client.get(URL).text
    r = post(client, token, replies="a", case_id=case["escalation_id"])
    assert r.status_code == 422 and "Only supervisors and admins" in (field_error(r.text, "case") or "")
    assert "/photo" not in r.text and scorer.calls == calls


WHOLE = {"lo": 0, "hi": 1, "action": "send"}
HALF = {"lo": 0, "hi": 0.5, "action": "send"}


# Draft policies from the editor -------------------------------------------------------------------


def test_policy_owner_tries_a_draft_from_the_editor(client: TestClient) -> None:
    token = signed_in(client, "owner")
    assert 'id="try-draft"' in client.get("/admin/policies/default").text
    form = band_form([("0", "0.5", "review"), ("0.5", "1", "send")], csrf=token, op="draft")
    form["instruction"] = "Draft instruction."
    r = client.post(f"{URL}?channel=default", data=form)
    assert r.status_code == 200 and 'id="use-draft" checked' in r.text
    assert "Draft instruction.</textarea>" in r.text
    draft = re.search(r'name="draft" value="([^"]+)"', r.text)
    assert draft is not None
    doc = json.loads(html.unescape(draft.group(1)))
    assert doc["bands"][0] == {"lo": 0.0, "hi": 0.5, "action": "review"}
    replies = "A [score=0.55]\n---\nB [score=0.45]"
    with_draft = post(client, token, replies=replies, draft=html.unescape(draft.group(1)), use_draft="on")
    assert re.findall(r'data-action="(\w+)" data-score', with_draft.text) == ["send", "review"]
    assert "the draft from the editor" in with_draft.text
    published = post(client, token, replies=replies, draft=html.unescape(draft.group(1)))
    assert re.findall(r'data-action="(\w+)" data-score', published.text) == ["follow_up", "review"]
    assert len(store_of(client).policy_versions("default")) == 1  # nothing published


@pytest.mark.parametrize(
    ("who", "draft", "message"),
    [
        ("sup", None, "Only policy owners and admins may try a draft policy."),
        ("owner", "{not json", "The draft is not valid"),
        (
            "owner",
            json.dumps({"channel": "default", "bands": [{"lo": 0, "hi": 0.5, "action": "send"}]}),
            "gap",
        ),
        (
            "owner",
            json.dumps({"channel": "other", "bands": [{"lo": 0, "hi": 1, "action": "send"}]}),
            "for channel",
        ),
    ],
)
def test_bad_or_unauthorised_draft_is_refused(
    client: TestClient, who: str, draft: str | None, message: str
) -> None:
    token = signed_in(client, who)
    good = json.dumps({"channel": "default", "bands": [WHOLE]})
    r = post(client, token, replies="A [score=0.1]", draft=draft or good, use_draft="on")
    assert r.status_code == 422 and message in (field_error(r.text, "draft") or ""), r.text


def test_invalid_draft_from_the_editor_is_explained(client: TestClient) -> None:
    token = signed_in(client, "owner")
    r = client.post(f"{URL}?channel=default", data=band_form([("0", "0.4", "send")], csrf=token, op="draft"))
    assert "gap: no band covers" in (field_error(r.text, "draft") or "")
    assert 'name="draft" value=""' in r.text


# Progress and responsiveness ---------------------------------------------------------------------


def test_script_gets_progress_then_the_page(client: TestClient) -> None:
    token = signed_in(client, "sup")
    replies = "\n---\n".join(f"reply {i} [score=0.{i % 10}]" for i in range(MAX_REPLIES))
    r = client.post(
        URL,
        data={
            "csrf_token": token,
            "op": "rerank",
            "question": "q",
            "replies": replies,
            "instruction": STRICT,
        },
        headers={"X-Playground-Stream": "1"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    progress = [tuple(x["progress"]) for x in lines if "progress" in x]
    total = 2 * MAX_REPLIES  # scored under both instructions
    assert progress == [(done, total) for done in range(0, total + 1, playground.CHUNK)]
    assert "html" in lines[-1] and len(ranked_indices(lines[-1]["html"])) == MAX_REPLIES
    # Input errors come back as the page, not as a stream.
    r = client.post(
        URL, data={"csrf_token": token, "op": "rerank", "replies": ""}, headers={"X-Playground-Stream": "1"}
    )
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")


def test_the_guard_answers_while_a_batch_is_being_scored(
    client: TestClient, scorer: InstructionScorer
) -> None:
    token = signed_in(client, "sup")
    replies = "\n---\n".join(f"reply {i} [hang]" for i in range(MAX_REPLIES))
    done: list[int] = []

    def score() -> None:
        r = client.post(URL, data={"csrf_token": token, "op": "rerank", "question": "q", "replies": replies})
        done.append(r.status_code)

    worker = threading.Thread(target=score)
    worker.start()
    try:
        for _ in range(200):  # wait until the scorer is busy with the batch (and blocked)
            if scorer.calls:
                break
            worker.join(0.02)
        assert scorer.calls and not done
        assert client.get("/healthz").status_code == 200  # the event loop is free
        assert client.get(URL).status_code == 200
        assert not done  # ... while the batch is still being scored
    finally:
        scorer.release.set()
        worker.join(30)
    assert done == [200]


# The photo's text, read as a live check reads it ----------------------------------------------------


class PhotoTextScorer(FakeScorer):
    """Scores 0.62 when the photo's text reaches it and 0.457 when it does not (the issue's case);
    a reply with a "[score=…]" marker gets the marker's score."""

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        out = super().score_batch(items)
        return [
            r if "[score=" in item.reply else ScoreResult(0.62 if item.image_text else 0.457, r.inputs_used)
            for item, r in zip(items, out, strict=True)
        ]


class SlowReader:
    """A text reader that waits for ``release`` (when cleared) and counts its reads."""

    name = "fake-ocr-playground"

    def __init__(self, text: str) -> None:
        self.text = text
        self.reads = 0
        self.release = threading.Event()
        self.release.set()

    def read(self, image: Image.Image) -> str:
        self.reads += 1
        self.release.wait(10)
        return self.text


PHOTO_TEXT = "SHOPLY ORDER 58213 zipper is broken"


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> SlowReader:
    import guard.ocr

    fake = SlowReader(PHOTO_TEXT)
    monkeypatch.setattr(guard.ocr, "load_reader", lambda threads: fake)
    return fake


@pytest.fixture
def ocr_client(sqlite_url: str, reader: SlowReader) -> Iterator[TestClient]:
    with guard_client(
        sqlite_url, PhotoTextScorer(), secret_key="test-secret-key", ocr="on", ocr_budget_s=0.5
    ) as c:
        make_users(queries_of(c))
        yield c


def _score_and_action(page: str) -> tuple[str, str]:
    score = re.search(r'id="score-value">([^<]+)<', page)
    action = re.search(r'id="verdict" data-action="(\w+)"', page)
    assert score is not None and action is not None, page[:2000]
    return score.group(1), action.group(1)


@pytest.mark.parametrize("source", ["upload", "case"])
def test_a_playground_score_is_the_live_decision_of_the_same_case(
    ocr_client: TestClient, reader: SlowReader, source: str
) -> None:
    """Same question, photo with text and reply: the playground reads the photo's text as the live
    guard did (the same OCR service and cache) and reproduces its score, action and inputs."""
    photo = png_bytes((64, 48), "white")
    question, reply = "Look at this, what now?", "Sorry about that, we will replace it"
    live = ocr_client.post(
        "/v1/guard", json={"question": question, "reply": reply, "image": {"data": b64(photo)}}
    ).json()
    assert live["image_text_status"] in {"read", "cached"} and "image_text" in live["inputs_used"]
    assert (live["score"], live["action"], live["uncertain"]) == (0.62, "follow_up", False)
    flush(ocr_client)
    role = "sup" if source == "case" else "owner"
    token = signed_in(ocr_client, role)
    if source == "case":  # a held copy of the case: the playground takes its photo from the queue
        held = ocr_client.post(
            "/v1/guard",
            json={"question": question, "reply": "x [score=0.1]", "image": {"data": b64(photo)}},
        ).json()
        flush(ocr_client)
        files = None
        fields = {"case_id": held["escalation_id"]}
    else:
        files = {"photo": ("seam.png", photo, "image/png")}
        fields = {}
    page = post(ocr_client, token, "score", question=question, replies=reply, files=files, **fields).text
    assert _score_and_action(page) == (f"{live['score']:.3f}", live["action"])
    used = re.search(r'id="inputs-used">([^<]*)', page)
    assert used is not None and used.group(1).strip().split(", ") == live["inputs_used"]
    assert PHOTO_TEXT in page and 'data-status="cached"' in page
    assert "nor read text from it" not in page
    assert reader.reads == 1, "the playground used the text the live check read (the OCR cache)"


def test_a_photo_not_read_in_time_is_scored_without_its_text_as_a_live_check_would(
    ocr_client: TestClient, reader: SlowReader
) -> None:
    token = signed_in(ocr_client, "owner")
    reader.release.clear()
    photo = {"photo": ("p.png", png_bytes((64, 48), "blue"), "image/png")}
    page = post(ocr_client, token, "score", question="What now?", replies="Sorry", files=photo).text
    reader.release.set()
    assert 'data-status="timeout"' in page and "not read in time" in page
    assert _score_and_action(page) == ("0.457", "review")  # uncertain: nothing states the issue
    live = ocr_client.post(
        "/v1/guard",
        json={"question": "What now?", "reply": "Sorry", "image": {"data": b64(png_bytes((64, 48), "blue"))}},
    ).json()
    assert live["image_text_status"] in {"read", "cached"}, "the reading went on and served the next one"


def test_with_the_bundled_scorer_and_the_real_reader_the_playground_reproduces_a_live_score(
    sqlite_url: str,
) -> None:
    """The issue's case with the real models: a screenshot whose text matters to the score (0.779 with
    it, 0.863 without), scored live and then in the playground: the same score and action."""
    from pathlib import Path

    screenshot = (Path(__file__).parent / "data" / "scr_02.png").read_bytes()
    question = "I was charged twice, why?"
    reply = (
        "I can see two charges of $42.78 for order 58213; we will refund the duplicate charge within 3 days."
    )
    with guard_client(sqlite_url, None, secret_key="test-secret-key", ocr="on", ocr_budget_s=60) as c:
        live = c.post(
            "/v1/guard", json={"question": question, "reply": reply, "image": {"data": b64(screenshot)}}
        ).json()
        assert live["image_text_status"] == "read" and "image_text" in live["inputs_used"], live
        make_users(queries_of(c))
        token = signed_in(c, "owner")
        files = {"photo": ("scr.png", screenshot, "image/png")}
        page = post(c, token, "score", question=question, replies=reply, files=files).text
    assert _score_and_action(page) == (f"{live['score']:.3f}", live["action"])
    assert 'data-status="cached"' in page and "58213" in page


def test_photos_decode_in_the_guards_bounded_decoder(sqlite_url: str) -> None:
    """The playground decodes a photo as the check API does: the guard's own decoder pool, with its
    limits and deadline; when that pool is full the form says so, as the API's 503 does."""
    with guard_client(sqlite_url, secret_key="k", image_decode_max_pending=1) as client:
        make_users(queries_of(client))
        token = signed_in(client, "sup")
        decoder = runtime_of(client).pipeline.images
        photo = {"photo": ("p.png", png_bytes((64, 48), "orange"), "image/png")}
        before = decoder.pending
        decoder.pending = 1  # one photo being decoded: the pool is full
        try:
            r = post(client, token, op="score", replies="We can repair it", files=photo)
        finally:
            decoder.pending = before
        assert r.status_code == 422
        assert "cannot be decoded now" in (field_error(r.text, "photo") or "") and decoder.busy == 1
        r = post(client, token, op="score", replies="We can repair it", files=photo)
        assert r.status_code == 200 and field_error(r.text, "photo") is None
