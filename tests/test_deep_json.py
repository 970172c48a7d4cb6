"""JSON nested 100,000 levels deep, sent to every JSON-reading edge over real HTTP: a 400
``invalid_json``, never a 500; the middleware passes such an answer on, marked unguarded."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from guard.app import create_app
from guard.middleware import GuardMiddleware
from guard.settings import Settings
from guard.store import migrate
from tests.fakes import FakeScorer
from tests.serving import serve

DEPTH = 100_000


def deep(depth: int = DEPTH) -> bytes:
    return b'{"question": ' + b"[" * depth + b"]" * depth + b"}"


def deep_object(depth: int = DEPTH) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("path", ["/v1/guard", "/v1/chat/completions"])
@pytest.mark.parametrize("body", [deep(), deep_object()], ids=["lists", "objects"])
def test_deep_json_is_a_400_on_the_guard(sqlite_url: str, path: str, body: bytes) -> None:
    migrate(sqlite_url)
    settings = Settings(database_url=sqlite_url, upstream_url="http://127.0.0.1:9/v1")
    with serve(create_app(settings, scorer=FakeScorer())) as base:
        resp = httpx2.post(
            base + path, content=body, headers={"content-type": "application/json"}, timeout=20
        )
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "invalid_json"
        assert "deeply" in resp.json()["error"]["message"]
        ok = httpx2.get(base + "/healthz", timeout=5)
        assert ok.status_code == 200, "the server still answers"


class _Spy:
    def __init__(self) -> None:
        self.checked = 0

    async def prepare_image(self, data: bytes) -> object:
        return data

    async def check(self, parts: Any, reply: str, image: object | None) -> Any:
        self.checked += 1
        raise AssertionError("nothing readable to check")


def test_the_middleware_survives_deep_json_in_the_request_and_the_response() -> None:
    async def chat(request: Request) -> Response:
        await request.body()
        return Response(deep_object(), media_type="application/json")

    app = Starlette(routes=[Route("/chat", chat, methods=["POST"])])
    spy = _Spy()
    guarded = GuardMiddleware(app, checker=spy, routes=["/chat"])
    with serve(guarded) as base:
        for body in (deep(), b'{"question": "my seam is open"}'):
            resp = httpx2.post(
                base + "/chat", content=body, headers={"content-type": "application/json"}, timeout=20
            )
            assert resp.status_code == 200
            assert resp.content == deep_object(), "the app's answer is not lost"
            assert resp.headers["x-guard-action"] == "unguarded"
            assert resp.headers["x-guard-reason"] in ("question_not_found", "reply_not_found")
    assert spy.checked == 0
