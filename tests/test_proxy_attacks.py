"""Attacks on the OpenAI-compatible proxy, with the real openai SDK and real uvicorn servers: an
upstream scripted per model answers in every shape a chat completion can take, and the customer
must never see text the guard did not decide on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from openai import OpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from guard.app import create_app
from guard.runtime import Runtime
from guard.settings import Settings
from guard.store import migrate
from tests.apptools import KeepsState
from tests.fakes import FakeScorer
from tests.serving import serve

HELD = "Buy our premium plan today and get a free mug [score=0.1]"
"""A draft the guard holds back (escalate): the customer must never see it."""
GOOD = "We are sending you a new pair today [score=0.95]"

SEEN_BODIES: list[dict[str, Any]] = []

# What the upstream answers, by model: a completion's choices (plain) or its chunks' choices (streams).
PLAIN: dict[str, list[dict[str, Any]]] = {
    "held": [{"index": 0, "message": {"role": "assistant", "content": HELD}, "finish_reason": "stop"}],
}
STREAMS: dict[str, list[list[dict[str, Any]]]] = {
    "held": [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        [{"index": 0, "delta": {"content": HELD}, "finish_reason": None}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    ],
}


async def upstream_chat(request: Request) -> Response:
    body = await request.json()
    SEEN_BODIES.append(body)
    model = body["model"]
    base = {"id": "chatcmpl-x", "created": 1700000000, "model": model}
    if not body.get("stream"):
        return JSONResponse({**base, "object": "chat.completion", "choices": PLAIN[model]})

    async def events() -> AsyncIterator[bytes]:
        for choices in STREAMS[model]:
            doc = {**base, "object": "chat.completion.chunk", "choices": choices}
            yield b"data: " + json.dumps(doc).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", upstream_chat, methods=["POST"])])
    with serve(app) as base:
        yield base + "/v1"


@pytest.fixture
def guard(sqlite_url: str, upstream: str) -> Iterator[tuple[str, Runtime]]:
    migrate(sqlite_url)
    settings = Settings(database_url=sqlite_url, upstream_url=upstream, upstream_timeout_s=10.0)
    app = KeepsState(create_app(settings, scorer=FakeScorer()))
    with serve(app) as base:
        yield base, app.runtime


def _client(base: str, key: str = "sk-client") -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=10)


QUESTION = [{"role": "user", "content": "The pocket seam on my new jeans came open"}]


def _plain(client: OpenAI, model: str) -> tuple[dict[str, str], str, Any]:
    """The headers, the raw body and the parsed completion of a plain request."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=QUESTION)
    return dict(raw.headers), raw.http_response.text, raw.parse()


def _stream(client: OpenAI, model: str) -> tuple[dict[str, str], str, list[Any]]:
    """The headers and raw body of a streamed request, and the chunks of another as the SDK reads them."""
    body = {"model": model, "messages": QUESTION, "stream": True}
    resp = httpx2.post(f"{client.base_url}chat/completions", json=body, timeout=10)
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, stream=True))
    return dict(resp.headers), resp.text, chunks


def test_the_held_draft_never_leaves_the_proxy(guard: tuple[str, Runtime]) -> None:
    client = _client(guard[0])
    headers, text, completion = _plain(client, "held")
    assert headers["x-guard-action"] == "escalate"
    assert "premium plan" not in text, "the held draft is not in the plain response"
    assert completion.choices[0].message.content and "draft" not in completion.model_extra["guard"]
    headers, text, chunks = _stream(client, "held")
    assert headers["x-guard-action"] == "escalate"
    assert "premium plan" not in text, "the held draft is not in the stream"
    assert "draft" not in (chunks[-1].model_extra or {})["guard"]
