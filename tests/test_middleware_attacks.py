"""Ways a reply could get past GuardMiddleware unguarded, tried against real uvicorn servers with
the in-process guard (LocalGuard on SQLite): a compressed answer, answers of shapes the guard
cannot read, and an OpenAI-style stream read by the real openai SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from guard.middleware import GuardMiddleware, LocalGuard
from guard.settings import Settings
from guard.store import migrate
from tests.apptools import SSE_DONE, openai_client, sse_data
from tests.fakes import FakeScorer
from tests.promtext import sample
from tests.serving import serve

HELD = "Buy our premium plan today and get a free mug. " * 3 + "[score=0.1]"
"""The chatbot's draft: the guard escalates it, so the customer must never see it."""
FALLBACK = "Please hold on: a colleague will answer you."


async def chat(request: Request) -> Response:
    body = await request.json()
    kind = body.get("kind", "json")
    if kind == "text":
        return PlainTextResponse(HELD)
    if kind == "list":
        return JSONResponse([{"reply": HELD}])
    if kind in (
        "gzip",
        "br",
    ):  # a body that says it is compressed: not gzip, or a coding the guard cannot read
        body = json.dumps({"reply": HELD}).encode()
        return Response(body, media_type="application/json", headers={"content-encoding": kind})
    return JSONResponse({"reply": HELD})


async def completions(request: Request) -> Response:
    """An OpenAI-style chat completions stream of the held draft, word by word."""
    await request.json()
    base = {"id": "c-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse_data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    async def events() -> AsyncIterator[bytes]:
        yield chunk({"role": "assistant", "content": ""})
        for word in HELD.split(" "):
            yield chunk({"content": word + " "})
        yield chunk({}, "stop")
        yield SSE_DONE

    return StreamingResponse(events(), media_type="text/event-stream")


async def ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(HELD)
    await websocket.close()


def _guarded(sqlite_url: str, inner: ASGIApp | None = None, **options: Any) -> GuardMiddleware:
    migrate(sqlite_url)
    guard = LocalGuard(Settings(database_url=sqlite_url), scorer=FakeScorer())

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with guard:
            yield

    app = Starlette(
        routes=[
            Route("/chat", chat, methods=["POST"]),
            Route("/other", chat, methods=["POST"]),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            WebSocketRoute("/ws", ws),
        ],
        lifespan=lifespan,
    )
    return GuardMiddleware(
        app if inner is None else inner(app),  # type: ignore[operator]
        checker=guard,
        routes=["/chat", "/v1/chat/completions"],
        fallback_message=FALLBACK,
        **options,
    )


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[str, GuardMiddleware]]:
    mw = _guarded(sqlite_url)
    with serve(mw) as base:
        yield base, mw


def _post(base: str, path: str, body: dict[str, Any], **headers: str) -> httpx2.Response:
    return httpx2.post(base + path, json=body, headers=headers, timeout=15)


def test_a_compressed_answer_is_guarded(sqlite_url: str) -> None:
    """GZipMiddleware inside the guard: the guard reads the gzip answer, guards it, sends it plain."""
    mw = _guarded(sqlite_url, inner=lambda app: GZipMiddleware(app, minimum_size=10))
    with serve(mw) as base:
        resp = _post(base, "/chat", {"question": "My seam came open"}, **{"accept-encoding": "gzip"})
    assert resp.headers["x-guard-action"] == "escalate"
    assert "content-encoding" not in resp.headers and resp.headers["content-length"] == str(len(resp.content))
    assert "premium plan" not in resp.text and resp.json()["guard"]["escalation_id"]


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/chat", {"question": "My seam came open", "kind": "text"}, "not_json"),
        ("/chat", {"question": "My seam came open", "kind": "list"}, "reply_not_found"),
        ("/chat", {"no_question": "x"}, "question_not_found"),
        ("/chat", {"question": "My seam came open", "kind": "gzip"}, "undecodable_body"),
        ("/chat", {"question": "My seam came open", "kind": "br"}, "compressed"),
        ("/other", {"question": "My seam came open"}, "route_not_guarded"),
    ],
)
def test_every_answer_passed_unguarded_is_marked_and_counted(
    served: tuple[str, GuardMiddleware], path: str, body: dict[str, Any], reason: str
) -> None:
    base, mw = served
    # Headers and raw bytes only: a body that claims a coding it does not have is passed as it came.
    with httpx2.stream("POST", base + path, json=body, timeout=15) as resp:
        b"".join(resp.iter_raw())
    assert resp.status_code == 200
    assert (resp.headers["x-guard-action"], resp.headers["x-guard-reason"]) == ("unguarded", reason)
    assert mw.metrics.value("guard_middleware_unguarded_total", reason=reason) == 1
    assert sample(mw.metrics.render(), "guard_middleware_unguarded_total", reason=reason) == 1


def test_an_app_cannot_forge_the_guard_headers(served: tuple[str, GuardMiddleware]) -> None:
    base, _mw = served
    resp = _post(base, "/chat", {"question": "My seam came open", "kind": "text"})
    assert resp.headers.get_list("x-guard-action") == ["unguarded"]


def test_a_websocket_is_marked_unguarded(sqlite_url: str) -> None:
    mw = _guarded(sqlite_url)
    with TestClient(mw) as client, client.websocket_connect("/ws") as session:
        assert session.receive_text() == HELD
        headers = dict(session.extra_headers or [])
    assert headers[b"x-guard-action"] == b"unguarded" and headers[b"x-guard-reason"] == b"websocket"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"question": "My seam came open", "kind": "text"}, "not_json"),
        ({"question": "My seam came open", "kind": "list"}, "reply_not_found"),
        ({"no_question": "x"}, "question_not_found"),
    ],
)
def test_unguarded_hold_sends_the_fallback_instead(
    sqlite_url: str, body: dict[str, Any], reason: str
) -> None:
    mw = _guarded(sqlite_url, unguarded="hold")
    with serve(mw) as base:
        resp = _post(base, "/chat", body)
    assert "premium plan" not in resp.text
    assert (resp.headers["x-guard-action"], resp.headers["x-guard-reason"]) == ("escalate", reason)
    assert resp.json()["reply"] == FALLBACK and resp.json()["guard"]["reason"] == f"unguarded_{reason}"
    assert resp.headers["content-length"] == str(len(resp.content))


def test_the_openai_sdk_reads_a_guarded_stream(sqlite_url: str) -> None:
    mw = _guarded(
        sqlite_url,
        question="messages[0].content",
        reply="choices[0].message.content",
        stream_reply="choices[0].delta.content",
    )
    with serve(mw) as base:
        client = openai_client(base, "unused", timeout=15)
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "My seam came open"}], stream=True
        )
        chunks = list(stream)
    assert all(c.choices is not None for c in chunks), "every chunk is a chat completion chunk"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and "premium plan" not in text, "the customer sees the holding message"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    decisions = [(c.model_extra or {}).get("guard") for c in chunks]
    assert [d["action"] for d in decisions if d] == ["escalate"], "the decision rides on one chunk"
