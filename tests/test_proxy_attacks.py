"""Attacks on the OpenAI-compatible proxy, with the real openai SDK and real uvicorn servers: an
upstream scripted per model answers in every shape a chat completion can take, and the customer
must never see text the guard did not decide on."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai import OpenAI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from guard.keys import create_key
from guard.runtime import Runtime
from tests.apptools import SSE_DONE, openai_client, served_guard, sse_data

HELD = "Buy our premium plan today and get a free mug [score=0.1]"
"""A draft the guard holds back (escalate): the customer must never see it."""
GOOD = "We are sending you a new pair today [score=0.95]"

SEEN_BODIES: list[dict[str, Any]] = []

TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "open_ticket", "arguments": '{"order": "2024051366182"}'},
}


def _message(content: Any = None, **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **fields}


# What the upstream answers, by model: the choices' messages; streams are made from them.
ANSWERS: dict[str, list[dict[str, Any]]] = {
    "held": [_message(HELD)],
    "refusal": [_message(None, refusal=HELD)],
    "text-and-tool-call": [_message(HELD, tool_calls=[TOOL_CALL])],
    "good-text-and-tool-call": [_message(GOOD, tool_calls=[TOOL_CALL])],
    "second-choice": [_message(GOOD), _message(HELD)],
    "only-second-choice": [_message(None), _message(HELD)],
    "text-parts": [_message([{"type": "text", "text": HELD}])],
    "extra-fields": [_message(GOOD, reasoning_content=HELD, audio={"transcript": HELD})],
    "tool-call-only": [_message(None, tool_calls=[TOOL_CALL])],
}


def _stream_chunks(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The choices of each chunk of a stream of ``messages``: word by word, choices interleaved,
    tool calls as one delta, then each choice's finish reason."""
    per_choice: list[list[dict[str, Any]]] = []
    for message in messages:
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        for name in ("content", "refusal"):
            value = message.get(name)
            text = "".join(p["text"] for p in value) if isinstance(value, list) else value
            deltas.extend({name: w} for w in re.findall(r"\S+\s*", text or ""))
        deltas.extend(
            {k: v} for k, v in message.items() if k not in ("role", "content", "refusal", "tool_calls")
        )
        if message.get("tool_calls"):
            deltas.append({"tool_calls": [{"index": 0, **TOOL_CALL}]})
        per_choice.append(deltas)
    chunks = []
    for step in range(max(len(d) for d in per_choice)):
        for index, deltas in enumerate(per_choice):
            if step < len(deltas):
                chunks.append([{"index": index, "delta": deltas[step], "finish_reason": None}])
    for index, message in enumerate(messages):
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        chunks.append([{"index": index, "delta": {}, "finish_reason": finish}])
    return chunks


async def upstream_chat(request: Request) -> Response:
    body = await request.json()
    SEEN_BODIES.append(body)
    model = body["model"]
    base = {"id": "chatcmpl-x", "created": 1700000000, "model": model}
    messages = ANSWERS[model]
    if not body.get("stream"):
        choices = [
            {"index": i, "message": m, "finish_reason": "tool_calls" if m.get("tool_calls") else "stop"}
            for i, m in enumerate(messages)
        ]
        return JSONResponse({**base, "object": "chat.completion", "choices": choices})

    async def events() -> AsyncIterator[bytes]:
        for choices in _stream_chunks(messages):
            yield sse_data({**base, "object": "chat.completion.chunk", "choices": choices})
        yield SSE_DONE

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def guard(sqlite_url: str, upstream: str) -> Iterator[tuple[str, Runtime]]:
    with served_guard(sqlite_url, upstream_url=upstream, upstream_timeout_s=10.0) as served:
        yield served


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
    client = openai_client(guard[0])
    headers, text, completion = _plain(client, "held")
    assert headers["x-guard-action"] == "escalate"
    assert "premium plan" not in text, "the held draft is not in the plain response"
    assert completion.choices[0].message.content and "draft" not in completion.model_extra["guard"]
    headers, text, chunks = _stream(client, "held")
    assert headers["x-guard-action"] == "escalate"
    assert "premium plan" not in text, "the held draft is not in the stream"
    assert "draft" not in (chunks[-1].model_extra or {})["guard"]


def _visible(texts: list[str | None]) -> str:
    return " ".join(t or "" for t in texts)


@pytest.mark.parametrize("model", [m for m in ANSWERS if m != "tool-call-only"])
def test_no_visible_text_passes_unguarded_in_any_shape(guard: tuple[str, Runtime], model: str) -> None:
    """Refusals, text beside tool calls, every choice, text parts: the held draft never reaches the
    customer, the answer is never ``unguarded``, and tool calls still come through."""
    client = openai_client(guard[0])
    headers, text, completion = _plain(client, model)
    assert headers["x-guard-action"] != "unguarded", "an answer with visible text is guarded"
    assert "premium plan" not in text, "the held draft is not in the plain response"
    assert "x-guard-decision" in headers and completion.model_extra["guard"]["decision_id"]
    shown = _visible(
        [c.message.content for c in completion.choices] + [c.message.refusal for c in completion.choices]
    )
    assert shown.strip(), "the customer is shown something"
    if "tool" in model:
        calls = completion.choices[0].message.tool_calls
        assert calls and calls[0].function.name == "open_ticket", "the tool call passes through"
    if model in ("good-text-and-tool-call", "second-choice", "extra-fields"):
        assert "new pair today" in shown, "a good draft is still sent"

    headers, text, chunks = _stream(client, model)
    assert headers["x-guard-action"] != "unguarded"
    assert "premium plan" not in text, "the held draft is not in the stream"
    streamed = _visible([d for c in chunks for ch in c.choices for d in (ch.delta.content, ch.delta.refusal)])
    assert streamed.strip()
    assert (chunks[-1].model_extra or {})["guard"]["decision_id"]
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert len(finishes) == len(ANSWERS[model]), "every choice ends with its finish reason"
    if "tool" in model:
        calls = [t for c in chunks for ch in c.choices for t in ch.delta.tool_calls or []]
        assert calls and calls[0].function and calls[0].function.name == "open_ticket"


def test_an_answer_with_only_tool_calls_is_marked_unguarded(guard: tuple[str, Runtime]) -> None:
    client = openai_client(guard[0])
    headers, _text, completion = _plain(client, "tool-call-only")
    assert headers["x-guard-action"] == "unguarded" and headers["x-guard-reason"] == "no_text_to_guard"
    assert completion.choices[0].message.tool_calls
    headers, _text, chunks = _stream(client, "tool-call-only")
    assert headers["x-guard-action"] == "unguarded" and headers["x-guard-reason"] == "no_text_to_guard"
    assert [t for c in chunks for ch in c.choices for t in ch.delta.tool_calls or []]


def _decision(base: str, key: str, decision_id: str) -> httpx2.Response:
    """GET /v1/decisions/{id}, waiting while the decision is on its way to SQL."""
    deadline = time.monotonic() + 10
    while True:
        resp = httpx2.get(f"{base}/v1/decisions/{decision_id}", headers={"x-guard-key": key}, timeout=5)
        if resp.status_code != 404 or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)


def test_a_key_stays_in_its_channel_on_every_route(guard: tuple[str, Runtime]) -> None:
    base, rt = guard
    shop, other = create_key(rt.store, "shop"), create_key(rt.store, "other")
    rt.keys._any = None  # the keys exist now: forget the "no key yet" answer
    client = openai_client(base, shop)

    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="held", messages=QUESTION, extra_body={"channel": "other"})
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "channel_forbidden"

    SEEN_BODIES.clear()
    raw = client.chat.completions.with_raw_response.create(
        model="held",
        messages=QUESTION,
        extra_body={"channel": "shop", "guard_note": "x"},
        extra_headers={"x-guard-channel": "other"},
    )
    assert SEEN_BODIES and not {"channel", "guard_note"} & set(SEEN_BODIES[-1]), "guard fields stay here"
    assert SEEN_BODIES[-1]["messages"] == QUESTION, "the model's fields go upstream as they came"
    decision_id = raw.headers["x-guard-decision"]
    mine = _decision(base, shop, decision_id)
    assert mine.status_code == 200 and mine.json()["channel"] == "shop", "X-Guard-Channel is not read"
    assert _decision(base, other, decision_id).status_code == 404, "another channel's decision is not there"

    check = httpx2.post(
        f"{base}/v1/guard",
        headers={"x-guard-key": shop},
        json={"question": "my seam came open", "reply": GOOD},
        timeout=10,
    ).json()
    assert _decision(base, other, check["decision_id"]).status_code == 404
    assert _decision(base, shop, check["decision_id"]).status_code == 200
