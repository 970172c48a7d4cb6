"""The OpenAI-compatible proxy with the real openai SDK, real uvicorn servers, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from guard.errors import FetchError
from guard.keys import create_key
from guard.runtime import Runtime
from guard.ssrf import HostAllowlist, ImageFetcher, literal_ip, public_address
from guard.store import Store
from guard.tables import Decision
from tests.apptools import SSE_DONE, openai_client, png_bytes, served_guard, sse_data
from tests.serving import closed_port, serve

_MARK = re.compile(r"\[score=[0-9.]+\]")
DRAFT = "Sorry about the seam: we will send you a new pair."


# A local upstream that speaks the chat completions protocol --------------------------------------

SEEN_AUTH: list[str | None] = []


def _completion(model: str, content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


async def upstream_chat(request: Request) -> Response:
    SEEN_AUTH.append(request.headers.get("authorization"))
    body = await request.json()
    model = body["model"]
    text = json.dumps(body["messages"][-1]["content"])
    mark = _MARK.search(text)
    content = f"{DRAFT} {mark.group(0) if mark else ''}".strip()
    if model == "error":
        return PlainTextResponse("boom", status_code=500)
    if model == "bad-request":
        return JSONResponse({"error": {"message": "no such model", "type": "invalid_request_error"}}, 400)
    if model == "malformed":
        return JSONResponse({"choices": "nope"}) if not body.get("stream") else PlainTextResponse("hi")
    if model == "huge" and not body.get("stream"):
        return JSONResponse(_completion(model, "x" * 50_000))
    if model == "huge":
        content = " ".join(["x" * 100] * 500)  # 500 chunks, over 50 kB of stream
    if model == "slow":
        await asyncio.sleep(4)
    if not body.get("stream"):
        return JSONResponse(_completion(model, content))

    async def events() -> AsyncIterator[bytes]:
        base = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return sse_data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        yield chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(content.split(" ")):
            yield chunk({"content": word if i == 0 else " " + word})
        if model == "broken-stream":
            return
        yield chunk({}, "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
            yield sse_data({**base, "choices": [], "usage": usage})
        yield SSE_DONE

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def guard_pg(pg_url: str, redis_url: str, upstream: str) -> Iterator[tuple[str, Runtime]]:
    with served_guard(pg_url, redis_url=redis_url, upstream_url=upstream, upstream_timeout_s=15.0) as served:
        yield served


def _ask(score: float, image: str | None = None, question: str = "My pocket seam came open") -> list[Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": f"{question} [score={score}]"}]
    if image is not None:
        parts.append({"type": "image_url", "image_url": {"url": image}})
    return [
        {"role": "system", "content": "You are a helpful shop assistant."},
        {"role": "user", "content": parts},
    ]


DATA_URL = "data:image/png;base64," + base64.b64encode(png_bytes()).decode()


@pytest.mark.integration
def test_openai_sdk_all_four_actions_plain_and_streaming(guard_pg: tuple[str, Runtime], pg_url: str) -> None:
    base, _app = guard_pg
    client = openai_client(base)
    seen: dict[str, str] = {}
    for score in (0.9, 0.55, 0.45, 0.2):
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=_ask(score, DATA_URL), extra_headers={"x-guard-conversation-id": f"p-{score}"}
        )
        completion = raw.parse()
        action = raw.headers["x-guard-action"]
        extra = completion.model_extra or {}
        assert (
            extra["guard"]["action"] == action
            and extra["guard"]["decision_id"] == raw.headers["x-guard-decision"]
        )
        assert (extra["guard"]["uncertain"], extra["guard"]["uncertain_reason"]) == (False, None)
        assert "x-guard-uncertain" not in raw.headers
        content = completion.choices[0].message.content or ""
        seen[action] = content
        assert completion.choices[0].finish_reason == "stop" and completion.usage is not None

        stream = client.chat.completions.create(
            model="m", messages=_ask(score, DATA_URL), stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        case = re.compile(r"RG-[0-9A-F]+")  # each decision has its own case reference
        assert case.sub("", streamed) == case.sub("", content), "streaming gives the same guarded text"
        last = [c for c in chunks if c.choices][-1]
        assert (last.model_extra or {})["guard"]["action"] == action
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 12
    assert set(seen) == {"send", "follow_up", "review", "escalate"}
    assert seen["send"].startswith(DRAFT) and seen["follow_up"].startswith(DRAFT)
    assert len(seen["follow_up"]) > len(seen["send"])
    assert DRAFT not in seen["review"] and DRAFT not in seen["escalate"]
    assert SEEN_AUTH[-1] == "Bearer sk-client", "with no guard key, the client's key goes upstream"
    vague = client.chat.completions.with_raw_response.create(model="m", messages=_ask(0.9, DATA_URL, "这啥"))
    guard = (vague.parse().model_extra or {})["guard"]
    assert (guard["action"], guard["uncertain"], guard["uncertain_reason"]) == (
        "review",
        True,
        "issue_not_stated",
    )
    assert vague.headers["x-guard-uncertain"] == "issue_not_stated"

    store = Store.open(pg_url)
    try:
        deadline = time.monotonic() + 10
        while True:
            with store.session() as s:
                rows = list(s.scalars(select(Decision)))
            if len(rows) >= 9 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        store.close()
    assert len(rows) == 9 and all(r.image_sha256 for r in rows), "the data: URL photo was guarded with"
    assert {r.conversation_id for r in rows} >= {"p-0.9", "p-0.2"}


@pytest.mark.integration
def test_the_guard_key_never_goes_upstream_and_binds_the_channel(guard_pg: tuple[str, Runtime]) -> None:
    base, app = guard_pg
    key = create_key(app.store, "shop")
    app.keys._any = None
    with pytest.raises(openai.AuthenticationError):
        openai_client(base, "sk-not-a-guard-key").chat.completions.create(model="m", messages=_ask(0.9))
    SEEN_AUTH.clear()
    completion = openai_client(base, key).chat.completions.create(model="m", messages=_ask(0.9))
    assert (completion.model_extra or {})["guard"]["action"] == "send"
    assert SEEN_AUTH == [None]
    deadline = time.monotonic() + 10
    decision_id = (completion.model_extra or {})["guard"]["decision_id"]
    while (row := app.store.get_decision(decision_id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert row is not None and row.row.channel == "shop"


@pytest.mark.parametrize(
    ("model", "stream", "status", "code"),
    [
        ("error", False, 502, "upstream_error"),
        ("malformed", False, 502, "upstream_malformed"),
        ("malformed", True, 502, "upstream_malformed"),
        ("broken-stream", True, 502, "upstream_malformed"),
        ("huge", False, 502, "upstream_too_large"),
        ("huge", True, 502, "upstream_too_large"),
        ("slow", False, 504, "upstream_timeout"),
        ("bad-request", False, 400, None),
    ],
)
def test_upstream_failures_are_clear_json_errors(
    sqlite_url: str, upstream: str, model: str, stream: bool, status: int, code: str | None
) -> None:
    with served_guard(
        sqlite_url, upstream_url=upstream, upstream_timeout_s=1.5, upstream_max_bytes=20_000
    ) as (base, _):
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            openai_client(base).chat.completions.create(model=model, messages=_ask(0.9), stream=stream)
        assert time.monotonic() - started < 5
    assert info.value.status_code == status
    body = info.value.body
    assert isinstance(body, dict)
    if code is not None:
        assert body["code"] == code and body["message"]
    else:
        assert body["message"] == "no such model", "the upstream's own 4xx reaches the client"


def test_upstream_down_is_a_502_not_a_hang(sqlite_url: str) -> None:
    with served_guard(sqlite_url, upstream_url=f"http://127.0.0.1:{closed_port()}/v1") as (base, _):
        for stream in (False, True):
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as info:
                openai_client(base).chat.completions.create(model="m", messages=_ask(0.9), stream=stream)
            assert time.monotonic() - started < 5
            assert info.value.status_code == 502
            assert isinstance(info.value.body, dict) and info.value.body["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[]", 400, "invalid_json"),
        (json.dumps({"model": "m", "messages": []}).encode(), 422, "missing_field"),
        (json.dumps({"model": "m", "messages": [{"role": "system", "content": "x"}]}).encode(), 422, None),
        (json.dumps({"model": "m", "messages": _ask(0.9), "n": 2}).encode(), 422, "unsupported"),
        (json.dumps({"model": "m", "messages": _ask(0.9, "ftp://x/y.png")}).encode(), 422, None),
        (json.dumps({"model": "m", "messages": _ask(0.9, "data:image/png;base64,!!")}).encode(), 422, None),
        (b'{"model": "m", "pad": "' + b"x" * 3000 + b'"}', 413, "body_too_large"),
    ],
)
def test_bad_requests_are_4xx_json(
    sqlite_url: str, upstream: str, body: bytes, status: int, code: str | None
) -> None:
    with served_guard(sqlite_url, upstream_url=upstream, max_body_bytes=2000) as (base, _):
        resp = httpx2.post(
            base + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"]
    if code is not None:
        assert resp.json()["error"]["code"] == code


def test_image_urls_outside_the_allowlist_or_on_private_addresses_are_refused(
    sqlite_url: str, upstream: str
) -> None:
    with served_guard(sqlite_url, upstream_url=upstream, image_fetch_allow_hosts="localhost,127.0.0.1") as (
        base,
        _,
    ):
        for url in (
            "http://cdn.example.com/seam.png",  # not allowed
            "http://localhost:1/seam.png",  # allowed, but resolves to loopback
            "http://127.0.0.1/seam.png",  # allowed, but loopback
            "http://2130706433/seam.png",  # 127.0.0.1 spelled as a number
            "http://[::ffff:127.0.0.1]/seam.png",
        ):
            with pytest.raises(openai.UnprocessableEntityError) as info:
                openai_client(base).chat.completions.create(model="m", messages=_ask(0.9, url))
            assert isinstance(info.value.body, dict) and info.value.body["code"] == "image_url_not_allowed", (
                url
            )


# SSRF unit tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe"),
        ("[::1]", "::1"),
        ("example.com", None),
        ("cafe.example", None),
    ],
)
def test_ip_literals_in_any_spelling(host: str, address: str | None) -> None:
    found = literal_ip(host)
    assert (None if found is None else str(found)) == address


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
    ],
)
def test_only_public_addresses_are_fetched(address: str, public: bool) -> None:
    assert public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("patterns", "host", "allowed"),
    [
        ("cdn.example.com", "cdn.example.com", True),
        ("cdn.example.com", "CDN.example.com.", True),
        ("cdn.example.com", "evil-cdn.example.com", False),
        ("*.example.com", "img.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "example.com.evil.net", False),
        ("", "cdn.example.com", False),
    ],
)
def test_host_allowlist(patterns: str, host: str, allowed: bool) -> None:
    assert HostAllowlist.parse(patterns).allows(host) is allowed


async def _fetch_from_local_server(path: str, **options: Any) -> bytes:
    image = png_bytes()

    async def photo(request: Request) -> Response:
        return Response(image, media_type="image/png")

    async def redirect(request: Request) -> Response:
        return Response(status_code=302, headers={"location": request.query_params["to"]})

    async def big(request: Request) -> Response:
        return Response(b"x" * 5000, media_type="image/png")

    app = Starlette(routes=[Route("/seam.png", photo), Route("/go", redirect), Route("/big.png", big)])
    with serve(app) as base:
        port = base.rsplit(":", 1)[1]

        async def resolver(host: str, _port: int) -> list[str]:
            return {"photos.example": ["127.0.0.1"], "evil.example": ["127.0.0.1"]}[host]

        fetcher = ImageFetcher(
            HostAllowlist.parse(options.pop("allow", "photos.example")),
            max_bytes=options.pop("max_bytes", 2000),
            timeout_s=3,
            resolver=resolver,
            # Only for this test: the local server stands in for a public image host.
            address_ok=lambda ip: str(ip) == "127.0.0.1",
        )
        return await fetcher.fetch(f"http://photos.example:{port}{path.format(port=port)}")


def test_the_fetcher_reads_an_allowed_image_and_follows_only_allowed_redirects() -> None:
    assert asyncio.run(_fetch_from_local_server("/seam.png")) == png_bytes()
    assert asyncio.run(_fetch_from_local_server("/go?to=/seam.png")) == png_bytes()
    with pytest.raises(FetchError, match="not in GUARD_IMAGE_FETCH_ALLOW_HOSTS"):
        asyncio.run(_fetch_from_local_server("/go?to=http://evil.example:{port}/seam.png"))
    with pytest.raises(FetchError, match="private or local"):
        asyncio.run(_fetch_from_local_server("/go?to=http://10.0.0.1/seam.png"))
    with pytest.raises(FetchError) as info:
        asyncio.run(_fetch_from_local_server("/big.png"))
    assert info.value.code == "image_too_large" and info.value.status == 413


def test_a_resolver_answer_on_a_private_address_is_refused() -> None:
    async def resolver(host: str, _port: int) -> list[str]:
        return ["93.184.216.34", "10.0.0.7"]

    fetcher = ImageFetcher(
        HostAllowlist.parse("photos.example"), max_bytes=100, timeout_s=2, resolver=resolver
    )
    with pytest.raises(FetchError, match="private or local"):
        asyncio.run(fetcher.fetch("http://photos.example/seam.png"))
