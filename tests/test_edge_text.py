"""Text no database keeps (a lone surrogate, a NUL) and values over their column's limit, at every
edge: refused with a 422 where the client can be told (check API, proxy), repaired or cut with a
hash where nobody can be asked (middleware, LocalGuard, the upstream's draft), and in every case
the decisions after it still reach SQL, also after a restart. Real PostgreSQL, real servers."""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from guard.app import create_app
from guard.checkers import LocalGuard, RequestParts
from guard.edge_text import LIMITS, REPLACEMENT, checked, fitted, problem, repaired
from guard.errors import InvalidField
from guard.middleware import GuardMiddleware
from guard.settings import Settings
from guard.store import migrate
from guard.tables import Decision
from tests.fakes import FakeScorer
from tests.serving import serve
from tests.test_middleware import wait_for_rows, with_lifespan

SURROGATE = '"refund \\ud800 please"'
"""A JSON string (valid JSON) holding a lone surrogate."""


# The rule itself --------------------------------------------------------------------------------


def test_the_limits_are_the_decisions_columns() -> None:
    assert LIMITS["conversation_id"] == Decision.__table__.c.conversation_id.type.length == 200
    assert LIMITS["channel"] == Decision.__table__.c.channel.type.length == 100


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=400))
def test_fitted_text_is_always_storable_and_within_the_limit(value: str) -> None:
    out = fitted(value, "conversation_id")
    out.encode("utf-8")  # never raises
    assert "\x00" not in out and problem(out) is None
    assert len(out) <= LIMITS["conversation_id"]
    if len(value) <= LIMITS["conversation_id"]:
        assert out == repaired(value) and len(out) == len(value)
    else:
        assert fitted(value, "conversation_id") == out, "the same value is cut the same way"
        assert out != fitted(value + "x", "conversation_id"), "two long values stay apart"


def test_repair_replaces_only_what_cannot_be_stored() -> None:
    assert repaired(json.loads(SURROGATE)) == f"refund {REPLACEMENT} please"
    assert repaired("a\x00b😀c") == f"a{REPLACEMENT}b😀c"
    assert problem("口袋开线 ok\t") is None


# The middleware with LocalGuard ------------------------------------------------------------------


async def _chat(request: Request) -> Response:
    body = await request.json()
    # The draft repeats the question, lone surrogate included (ASCII JSON: "\ud800").
    return Response(json.dumps({"reply": f"About: {body['question']}"}), media_type="application/json")


def _chatbot(guard: LocalGuard) -> Starlette:
    app = Starlette(routes=[Route("/chat", _chat, methods=["POST"])])
    app.add_middleware(GuardMiddleware, checker=guard, routes=["/chat"])
    return with_lifespan(app, guard)  # type: ignore[arg-type]


def _settings(pg_url: str, redis_url: str, spool: Path, **more: Any) -> Settings:
    return Settings(database_url=pg_url, redis_url=redis_url, spool_dir=str(spool), **more)


def _in_sql(pg_url: str, decision_id: str) -> Decision:
    rows = wait_for_rows(pg_url, select(Decision).where(Decision.id == decision_id), 1)
    assert rows, f"decision {decision_id} did not reach SQL"
    return rows[0]


@pytest.mark.integration
def test_the_middleware_repairs_what_sql_cannot_keep_and_the_log_moves_on(
    pg_url: str, redis_url: str, tmp_path: Path
) -> None:
    migrate(pg_url)
    attacks = [
        (SURROGATE, json.dumps("c-1")),
        (json.dumps("refund \x00 please"), json.dumps("c\x00" + "x" * 300)),
        (json.dumps("ok"), json.dumps("y" * 201)),
    ]
    for restart in range(2):  # and once more after a restart, with the same spool
        guard = LocalGuard(_settings(pg_url, redis_url, tmp_path / "spool"), scorer=FakeScorer())
        with TestClient(_chatbot(guard)) as client:
            ids = []
            for question, conversation in attacks:
                body = f'{{"question": {question}, "conversation_id": {conversation}}}'
                resp = client.post("/chat", content=body, headers={"content-type": "application/json"})
                assert resp.status_code == 200, resp.text
                ids.append(resp.headers["x-guard-decision"])
            later = client.post("/chat", json={"question": f"a later question {restart}"})
            ids.append(later.headers["x-guard-decision"])
            rows = [_in_sql(pg_url, i) for i in ids]
        assert rows[0].question == f"refund {REPLACEMENT} please"
        assert rows[1].conversation_id == fitted("c\x00" + "x" * 300, "conversation_id")
        assert rows[1].question == f"refund {REPLACEMENT} please"
        assert rows[2].conversation_id == fitted("y" * 201, "conversation_id")
        assert rows[3].question == f"a later question {restart}"
    assert not list((tmp_path / "spool").rglob("rejected.ndjson")), "nothing was set aside"


@pytest.mark.integration
def test_local_guard_fits_every_field_to_its_column(pg_url: str, redis_url: str, tmp_path: Path) -> None:
    migrate(pg_url)

    async def go() -> list[str]:
        async with LocalGuard(_settings(pg_url, redis_url, tmp_path), scorer=FakeScorer()) as guard:
            ids = []
            for parts in (
                RequestParts("q\x00", conversation_id="z" * 5000, channel="c" * 101),
                RequestParts(json.loads(SURROGATE), conversation_id="\ud800", channel="ok\x00"),
            ):
                verdict = await guard.check(parts, "draft \udfff", None)
                assert verdict.decision_id is not None
                ids.append(verdict.decision_id)
            return ids

    first, second = (_in_sql(pg_url, i) for i in asyncio.run(go()))
    assert first.conversation_id == fitted("z" * 5000, "conversation_id")
    assert first.channel == fitted("c" * 101, "channel") and len(first.channel) == 100
    assert second.conversation_id == REPLACEMENT and second.channel == f"ok{REPLACEMENT}"
    assert second.reply == f"draft {REPLACEMENT}"


# The proxy and the check API: a clear 422 --------------------------------------------------------


async def _upstream(request: Request) -> Response:
    body = await request.json()
    content = "plain draft"
    if body["model"] == "surrogate":  # the upstream itself writes a lone surrogate (valid JSON)
        raw = '{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        raw += '"message":{"role":"assistant","content":"refund \\ud800 ok"},"finish_reason":"stop"}]}'
        return Response(raw, media_type="application/json")
    doc = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
    }
    return JSONResponse(doc)


@pytest.fixture
def proxied(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    migrate(pg_url)
    upstream_app = Starlette(routes=[Route("/v1/chat/completions", _upstream, methods=["POST"])])
    with serve(upstream_app) as upstream:
        settings = _settings(pg_url, redis_url, tmp_path, upstream_url=upstream + "/v1")
        with serve(create_app(settings, scorer=FakeScorer())) as guard:
            yield guard, upstream


def _chat_body(content: str, model: str = "m") -> str:
    return f'{{"model": "{model}", "messages": [{{"role": "user", "content": {content}}}]}}'


@pytest.mark.integration
def test_the_proxy_refuses_what_sql_cannot_keep_and_repairs_the_upstreams_text(
    proxied: tuple[str, str], pg_url: str
) -> None:
    guard, _ = proxied
    json_headers = {"content-type": "application/json"}
    with httpx2.Client(base_url=guard, timeout=20, trust_env=False) as http:
        refused = [
            http.post("/v1/chat/completions", content=_chat_body(SURROGATE), headers=json_headers),
            http.post(
                "/v1/chat/completions",
                content=_chat_body('"hi"'),
                headers={**json_headers, "x-guard-conversation-id": "c" * 201},
            ),
        ]
        for resp in refused:
            assert resp.status_code == 422, resp.text
            assert resp.json()["error"]["code"] in ("invalid_text", "too_long")
        answered = http.post(
            "/v1/chat/completions", content=_chat_body('"hi"', model="surrogate"), headers=json_headers
        )
        assert answered.status_code == 200, answered.text
        at_limit = http.post(
            "/v1/chat/completions",
            content=_chat_body('"hi"'),
            headers={**json_headers, "x-guard-conversation-id": "c" * 200, "x-guard-channel": "d" * 101},
        )
        assert at_limit.status_code == 200, at_limit.text
        assert _in_sql(pg_url, at_limit.headers["x-guard-decision"]).channel == "default", (
            "the proxy does not read X-Guard-Channel: the key (or the default) names the channel"
        )
        for resp in (answered, at_limit):
            decision_id = resp.headers["x-guard-decision"]
            _in_sql(pg_url, decision_id)
            assert http.get(f"/v1/decisions/{decision_id}").status_code == 200
        assert _in_sql(pg_url, answered.headers["x-guard-decision"]).reply == f"refund {REPLACEMENT} ok"


@pytest.mark.integration
def test_the_check_api_refuses_fields_over_their_columns(proxied: tuple[str, str]) -> None:
    guard, _ = proxied
    with httpx2.Client(base_url=guard, timeout=20, trust_env=False) as http:
        for field, column in (("conversation_id", "conversation_id"), ("channel", "channel")):
            for extra, status in ((0, 200), (1, 422)):
                value = "".join(string.ascii_lowercase[i % 26] for i in range(LIMITS[column] + extra))
                resp = http.post("/v1/guard", json={"question": "q", "reply": "r", field: value})
                assert resp.status_code == status, resp.text
        resp = http.post("/v1/guard", content='{"question": ' + SURROGATE + ', "reply": "r"}')
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_text"


def test_checked_names_the_field() -> None:
    with pytest.raises(InvalidField, match="'x' is 3 characters; the limit is 2"):
        checked("abc", "'x'", limit=2)
