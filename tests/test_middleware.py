"""GuardMiddleware around real FastAPI / Starlette apps: in-process and over HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from examples.fastapi_chatbot.app import create_chatbot
from guard.app import create_app
from guard.middleware import (
    GuardMiddleware,
    HttpChecker,
    LocalGuard,
    RequestData,
    RequestParts,
    Verdict,
    get_path,
    parse_path,
    set_path,
)
from guard.settings import Settings
from guard.store import Store, migrate
from guard.tables import Decision, QueueItem
from tests.apptools import b64, png_bytes
from tests.fakes import FakeScorer
from tests.serving import closed_port, serve

QUESTION = "The pocket seam on my new jeans came open, what do I do?"
_MARK = re.compile(r"\[score=[0-9.]+\]")


async def echo_marker(question: str) -> str:
    """The chatbot's "model" for tests: a draft carrying the score marker found in the question."""
    await asyncio.sleep(0.02)
    mark = _MARK.search(question)
    return f"We can replace the jeans for you. {mark.group(0) if mark else ''}".strip()


class SpyChecker:
    """A checker that records what it was given and when (an in-memory fake of the Checker protocol)."""

    def __init__(self, action: str = "send") -> None:
        self.action = action
        self.prepared_at: float | None = None
        self.checks: list[tuple[RequestParts, str, object | None]] = []

    async def prepare_image(self, data: bytes) -> object:
        self.prepared_at = time.monotonic()
        return f"img:{len(data)}"

    async def check(self, parts: RequestParts, reply: str, image: object | None) -> Verdict:
        self.checks.append((parts, reply, image))
        text = reply if self.action == "send" else "A colleague will reply shortly."
        return Verdict(action=self.action, text=text, decision_id="d-1")


# JSON paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "tokens"),
    [
        ("reply", ("reply",)),
        ("$.data.reply", ("data", "reply")),
        ("choices[0].message.content", ("choices", 0, "message", "content")),
        ("a[1][2]", ("a", 1, 2)),
    ],
)
def test_json_paths_parse(path: str, tokens: tuple[object, ...]) -> None:
    assert parse_path(path) == tokens


@pytest.mark.parametrize("bad", ["", "a..b", "a[x]", "a]"])
def test_bad_json_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="JSON path"):
        parse_path(bad)


def test_get_and_set_path() -> None:
    doc: dict[str, Any] = {"choices": [{"message": {"content": "x"}}]}
    path = parse_path("choices[0].message.content")
    assert get_path(doc, path) == "x"
    set_path(doc, path, "y")
    assert doc["choices"][0]["message"]["content"] == "y"
    assert get_path(doc, parse_path("choices[3].message")) is not get_path(doc, path)


# The example FastAPI chatbot, in-process guard, real PostgreSQL and Redis ------------------------


@pytest.fixture
def chatbot(pg_url: str, redis_url: str) -> Iterator[tuple[TestClient, LocalGuard]]:
    migrate(pg_url)
    guard = LocalGuard(Settings(database_url=pg_url, redis_url=redis_url), scorer=FakeScorer())
    app = with_lifespan(create_chatbot(guard, generate=echo_marker), guard)
    with TestClient(app) as client:
        yield client, guard


def with_lifespan(app: FastAPI, resource: Any) -> FastAPI:
    """Open ``resource`` (a checker) in the app's lifespan, as the example does for its own."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with resource:
            yield

    app.router.lifespan_context = lifespan
    return app


def wait_for_rows(url: str, query: Any, count: int) -> list[Any]:
    """Rows of ``query`` once there are ``count`` of them (the decision log writes in the background)."""
    store = Store.open(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            with store.session() as s:
                rows = list(s.scalars(query))
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)
    finally:
        store.close()


@pytest.mark.integration
def test_the_example_chatbot_produces_all_four_actions(
    chatbot: tuple[TestClient, LocalGuard], pg_url: str
) -> None:
    client, _guard = chatbot
    seen: dict[str, dict[str, Any]] = {}
    for score in (0.9, 0.55, 0.45, 0.2):
        resp = client.post(
            "/chat",
            json={
                "conversation_id": f"mw-{score}",
                "question": f"{QUESTION} [score={score}]",
                "image": b64(png_bytes()),
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-length"] == str(len(resp.content))
        body = resp.json()
        action = resp.headers["x-guard-action"]
        assert body["guard"]["action"] == action
        assert body["guard"]["decision_id"] == resp.headers["x-guard-decision"]
        assert body["conversation_id"] == f"mw-{score}", "the rest of the body is kept"
        seen[action] = body
    assert set(seen) == {"send", "follow_up", "review", "escalate"}
    draft = "We can replace the jeans for you."
    assert seen["send"]["reply"].startswith(draft)
    assert seen["follow_up"]["reply"].startswith(draft) and seen["follow_up"]["guard"]["follow_up"]
    assert seen["follow_up"]["guard"]["follow_up"] in seen["follow_up"]["reply"]
    for held in ("review", "escalate"):
        assert draft not in seen[held]["reply"], "a held draft never reaches the customer"
        assert seen[held]["guard"]["escalation_id"]

    decisions = wait_for_rows(pg_url, select(Decision), 4)
    items = wait_for_rows(pg_url, select(QueueItem), 2)
    assert {d.action for d in decisions} == {"send", "follow_up", "review", "escalate"}
    assert all(d.image_sha256 for d in decisions), "the photo reached the guard"
    # the held ones; an answered one may also be copied for audit (sampled by decision id)
    assert sorted(i.kind for i in items if i.kind != "audit") == ["escalate", "review"]


@pytest.mark.integration
def test_the_example_guards_multipart_and_streams(chatbot: tuple[TestClient, LocalGuard]) -> None:
    client, _guard = chatbot
    resp = client.post(
        "/chat/upload",
        data={"question": f"{QUESTION} [score=0.2]"},
        files={"image": ("seam.png", png_bytes(), "image/png")},
    )
    assert resp.status_code == 200 and resp.headers["x-guard-action"] == "escalate"
    assert "replace the jeans" not in resp.json()["reply"]

    resp = client.post("/chat/stream", json={"question": f"{QUESTION} [score=0.55]"})
    assert resp.status_code == 200 and resp.headers["x-guard-action"] == "follow_up"
    assert resp.headers["content-length"] == str(len(resp.content))
    events = [e for e in resp.text.split("\n\n") if e.strip()]
    first = json.loads(events[0].removeprefix("data: "))
    assert first["text"].startswith("We can replace the jeans for you.")
    assert "\n\n" in first["text"], "the follow-up is appended to the streamed draft"
    assert first["guard"]["action"] == "follow_up", "the decision rides on the event (no event of its own)"
    assert events[1:] == ["data: [DONE]"]

    assert client.get("/health").json() == {"status": "ok"}
    health = client.get("/health").headers
    assert (health["x-guard-action"], health["x-guard-reason"]) == ("unguarded", "route_not_guarded")


# Behaviour with an in-memory checker --------------------------------------------------------


def _app(checker: Any, **options: Any) -> tuple[Starlette, GuardMiddleware]:
    generated_at: list[float] = []

    async def chat(request: Request) -> Response:
        body = await request.json()
        await asyncio.sleep(0.15)  # the model generating
        generated_at.append(time.monotonic())
        status = int(body.get("status", 200))
        if body.get("kind") == "text":
            return PlainTextResponse("plain draft", status_code=status)
        if body.get("kind") == "big":
            return JSONResponse({"reply": "x" * 5000}, status_code=status)
        return JSONResponse({"reply": "the draft", "meta": {"n": 1}}, status_code=status)

    async def stream(request: Request) -> Response:
        await request.body()

        async def events() -> AsyncIterator[bytes]:
            yield b'data: {"text": "the "}\n\n'
            yield b'data: {"text": "draft"}\n\n'

        return StreamingResponse(events(), media_type="text/event-stream")

    async def unread(_request: Request) -> Response:
        return JSONResponse({"reply": "answered without reading the question"})

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    app = Starlette(
        routes=[
            Route("/chat", chat, methods=["POST"]),
            Route("/stream", stream, methods=["POST"]),
            Route("/unread", unread, methods=["POST"]),
            Route("/other", chat, methods=["POST"]),
            WebSocketRoute("/ws", ws),
        ]
    )
    mw = GuardMiddleware(app, checker=checker, routes=["/chat", "/stream", "/unread", "/ws"], **options)
    app.state.generated_at = generated_at
    return app, mw


def test_the_photo_is_read_while_the_app_generates() -> None:
    spy = SpyChecker()
    app, mw = _app(spy)
    with TestClient(mw) as client:
        resp = client.post("/chat", json={"question": "q", "image": b64(png_bytes())})
    assert resp.status_code == 200 and resp.headers["x-guard-action"] == "send"
    assert spy.prepared_at is not None
    assert spy.prepared_at < app.state.generated_at[0], "the photo was prepared before the draft was done"
    parts, reply, image = spy.checks[0]
    assert (parts.question, reply, image) == ("q", "the draft", f"img:{len(png_bytes())}")


def test_held_replies_are_replaced_and_the_rest_of_the_response_kept() -> None:
    _, mw = _app(SpyChecker("escalate"), decision_field="decision")
    with TestClient(mw) as client:
        resp = client.post("/chat", json={"question": "q"})
    assert resp.status_code == 200
    assert resp.json() == {
        "reply": "A colleague will reply shortly.",
        "meta": {"n": 1},
        "decision": {
            "decision_id": "d-1",
            "action": "escalate",
            "score": None,
            "escalation_id": None,
            "follow_up": None,
            "degraded": False,
            "reason": None,
            "uncertain": False,
            "uncertain_reason": None,
            "durable": True,
        },
    }
    assert resp.headers["x-guard-decision"] == "d-1"
    assert "x-guard-uncertain" not in resp.headers, "only an uncertain decision carries it"
    assert resp.headers["content-length"] == str(len(resp.content))


@pytest.mark.parametrize(
    ("body", "reason", "status"),
    [
        ({"question": "q", "status": 500}, "error_status", 500),
        ({"question": "q", "status": 400}, "error_status", 400),
        ({"question": "q", "kind": "text"}, "not_json", 200),
        ({"question": "q", "kind": "big"}, "response_too_large", 200),
        ({"not_the_question": "q"}, "question_not_found", 200),
    ],
)
def test_unexpected_responses_pass_through_and_are_counted(
    body: dict[str, Any], reason: str, status: int
) -> None:
    spy = SpyChecker("escalate")
    _, mw = _app(spy, max_response_bytes=1000)
    with TestClient(mw, raise_server_exceptions=False) as client:
        resp = client.post("/chat", json=body)
    assert resp.status_code == status
    assert (resp.headers["x-guard-action"], resp.headers["x-guard-reason"]) == ("unguarded", reason)
    assert "colleague" not in resp.text, "nothing was rewritten"
    assert mw.metrics.value("guard_middleware_unguarded_total", reason=reason) == 1
    assert spy.checks == []


def test_other_routes_websockets_and_unread_requests() -> None:
    spy = SpyChecker("escalate")
    _, mw = _app(spy)
    with TestClient(mw) as client:
        assert client.post("/other", json={"question": "q"}).json()["reply"] == "the draft"
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_text() == "hello"
        resp = client.post("/unread", json={"question": "q"})
    assert resp.json()["reply"] == "answered without reading the question"
    assert mw.metrics.value("guard_middleware_unguarded_total", reason="request_not_read") == 1
    assert spy.checks == []


@pytest.mark.parametrize("streaming", ["guard", "pass"])
def test_event_streams_are_guarded_or_passed_by_configuration(streaming: str) -> None:
    spy = SpyChecker("escalate")
    _, mw = _app(spy, streaming=streaming)
    with TestClient(mw) as client:
        resp = client.post("/stream", json={"question": "q"})
    assert resp.status_code == 200
    if streaming == "guard":
        assert spy.checks[0][1] == "the draft"
        assert resp.headers["x-guard-action"] == "escalate"
        assert resp.text.startswith('data: {"text": "A colleague will reply shortly.", "guard": {')
        assert resp.headers["content-length"] == str(len(resp.content))
    else:
        assert spy.checks == []
        assert resp.text == 'data: {"text": "the "}\n\ndata: {"text": "draft"}\n\n'
        assert mw.metrics.value("guard_middleware_unguarded_total", reason="streaming_passed") == 1


def test_an_extractor_callable_finds_the_parts() -> None:
    spy = SpyChecker()

    def extract(data: RequestData) -> RequestParts | None:
        assert isinstance(data.json, dict)
        return RequestParts(question=data.json["q"]["text"], conversation_id="from-extractor", channel="shop")

    _, mw = _app(spy, extract=extract)
    with TestClient(mw) as client:
        assert client.post("/chat", json={"q": {"text": "where is my parcel"}}).status_code == 200
    parts = spy.checks[0][0]
    assert (parts.question, parts.conversation_id, parts.channel) == (
        "where is my parcel",
        "from-extractor",
        "shop",
    )


class _Down:
    async def prepare_image(self, data: bytes) -> object:
        return None

    async def check(self, parts: RequestParts, reply: str, image: object | None) -> Verdict:
        raise ConnectionError("guard down")


@pytest.mark.parametrize("on_error", ["hold", "pass"])
def test_a_guard_that_cannot_be_asked_holds_or_passes_by_configuration(on_error: str) -> None:
    _, mw = _app(_Down(), on_error=on_error, fallback_message="Please hold on.")
    with TestClient(mw) as client:
        resp = client.post("/chat", json={"question": "q"})
    assert resp.status_code == 200
    if on_error == "hold":
        assert resp.json()["reply"] == "Please hold on."
        assert resp.headers["x-guard-action"] == "escalate"
    else:
        assert resp.json()["reply"] == "the draft" and resp.headers["x-guard-action"] == "unguarded"
        assert resp.headers["x-guard-reason"] == "guard_unavailable"


# Over HTTP against a real guard server ----------------------------------------------------


def test_the_http_checker_against_a_guard_server(sqlite_url: str) -> None:
    migrate(sqlite_url)
    guard_server = create_app(Settings(database_url=sqlite_url), scorer=FakeScorer())
    with serve(guard_server) as base:
        checker = HttpChecker(base, timeout_s=5)
        chatbot = with_lifespan(create_chatbot(checker, generate=echo_marker), checker)
        with TestClient(chatbot) as client:
            for score, action in ((0.9, "send"), (0.45, "review")):
                resp = client.post(
                    "/chat", json={"question": f"{QUESTION} [score={score}]", "image": b64(png_bytes())}
                )
                assert resp.status_code == 200 and resp.headers["x-guard-action"] == action
                decision_id = resp.headers["x-guard-decision"]
                (row,) = wait_for_rows(sqlite_url, select(Decision).where(Decision.id == decision_id), 1)
                assert row.image_sha256, "the photo was registered with the guard"
                assert "x-guard-uncertain" not in resp.headers
            vague = client.post("/chat", json={"question": "这啥 [score=0.9]", "image": b64(png_bytes())})
            assert vague.headers["x-guard-action"] == "review", "the photo carries an issue no text states"
            assert vague.headers["x-guard-uncertain"] == "issue_not_stated"


def test_the_http_checker_when_the_guard_server_is_down() -> None:
    checker = HttpChecker(f"http://127.0.0.1:{closed_port()}", timeout_s=2)
    chatbot = with_lifespan(create_chatbot(checker, generate=echo_marker), checker)
    started = time.monotonic()
    with TestClient(chatbot) as client:
        resp = client.post("/chat", json={"question": QUESTION})
    assert time.monotonic() - started < 5
    assert resp.status_code == 200 and resp.headers["x-guard-action"] == "escalate"
    assert "replace the jeans" not in resp.json()["reply"]
