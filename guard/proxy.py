"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` through the guard.

The request goes to the upstream model server (``GUARD_UPSTREAM_URL``) unchanged, while the
photo of the last user message is fetched and decoded at the same time. The assistant message
that comes back is guarded against that user message (its text parts and its first image), and
the client gets a normal chat completion whose content is what the customer should see: the
draft, the draft plus follow-up, or the holding message. The decision is in the headers
``X-Guard-Action`` / ``X-Guard-Decision`` and in an extra ``guard`` field that OpenAI SDKs
ignore. With ``stream: true`` the upstream stream is read to the end, guarded, and streamed back
in the same chunk format (the ``guard`` field rides on the chunk with the finish reason).

Upstream failures are JSON errors, never hangs: unreachable -> 502 ``upstream_unavailable``,
too slow -> 504 ``upstream_timeout``, 5xx or a malformed answer -> 502, 4xx -> passed through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from guard.body import read_body
from guard.edge_text import LIMITS, checked, repaired
from guard.errors import (
    BadRequest,
    FetchError,
    ImageError,
    InvalidField,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from guard.images import DecodedImage, decode_base64, decode_image
from guard.pipeline import CheckRequest, CheckResult, Pipeline
from guard.settings import Settings
from guard.ssrf import ImageFetcher

log = logging.getLogger(__name__)


@dataclass
class UserTurn:
    text: str
    image_url: str | None


def last_user_turn(doc: dict[str, Any]) -> UserTurn:
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidField("missing_field", "'messages' must be a non-empty list")
    for message in reversed(messages):
        if not isinstance(message, dict):
            raise InvalidField("wrong_type", "every message must be an object")
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return UserTurn(content, None)
        if not isinstance(content, list):
            raise InvalidField("wrong_type", "a user message's 'content' must be a string or a list of parts")
        texts: list[str] = []
        image: str | None = None
        for part in content:
            if not isinstance(part, dict):
                raise InvalidField("wrong_type", "every content part must be an object")
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif part.get("type") == "image_url" and image is None:
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if not isinstance(url, str) or not url:
                    raise InvalidField("wrong_type", "'image_url' must be {\"url\": <http(s) or data: URL>}")
                image = url
        return UserTurn("\n".join(texts), image)
    raise InvalidField("missing_field", "there is no user message to guard the reply against")


def guard_summary(result: CheckResult) -> dict[str, Any]:
    """The ``guard`` field added to the completion."""
    return {
        "decision_id": result.decision_id,
        "action": result.action,
        "score": None if result.score is None else round(result.score, 4),
        "band": result.band,
        "escalation_id": result.escalation_id,
        "follow_up": result.follow_up,
        "degraded": result.degraded,
        "draft": result.draft,
    }


def guard_headers(result: CheckResult) -> dict[str, str]:
    return {"x-guard-action": result.action, "x-guard-decision": result.decision_id}


def customer_text(result: CheckResult) -> str:
    return result.reply if result.reply is not None else result.holding_message or ""


@dataclass
class _Stream:
    """What was read from an upstream stream."""

    first: dict[str, Any] | None = None
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage_chunk: dict[str, Any] | None = None
    other_output: bool = False
    """Tool calls or other choices: nothing this proxy can rewrite."""
    raw: list[bytes] = field(default_factory=list)
    done: bool = False


def _header(request: Request, name: str, column: str) -> str | None:
    """A header holding a decision field, within its column's limit and storable (else a 422)."""
    value = request.headers.get(name)
    return None if value is None else checked(value, f"'{name}'", limit=LIMITS[column])


class Proxy:
    def __init__(
        self,
        settings: Settings,
        guard: Pipeline,
        fetcher: ImageFetcher,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.fetcher = fetcher
        self._client = httpx2.AsyncClient(
            transport=transport,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx2.Timeout(
                settings.upstream_timeout_s, connect=min(5.0, settings.upstream_timeout_s)
            ),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def handle(self, request: Request) -> Response:
        s = self.settings
        if not s.upstream_url:
            raise Unavailable("upstream_not_configured", "the proxy has no upstream: set GUARD_UPSTREAM_URL")
        body = await read_body(request, s.max_body_bytes, s.body_timeout_s)
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest("invalid_json", f"the body is not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise BadRequest("invalid_json", "the body must be a JSON object")
        if doc.get("n", 1) != 1:
            raise InvalidField("unsupported", "'n' other than 1 is not supported through the guard")
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidField("wrong_type", "'stream' must be true or false")
        turn = last_user_turn(doc)
        image_task = asyncio.create_task(self._image(turn.image_url)) if turn.image_url else None
        try:
            state = request.scope.get("state", {})
            headers = self._upstream_headers(request, state.get("guard_key"))
            url = s.upstream_url.rstrip("/") + "/chat/completions"
            check = CheckRequest(
                question=checked(turn.text[-s.max_question_chars :], "the last user message"),
                reply="",
                channel=state.get("guard_channel")
                or _header(request, "x-guard-channel", "channel")
                or "default",
                conversation_id=_header(request, "x-guard-conversation-id", "conversation_id"),
            )
            try:
                async with asyncio.timeout(s.upstream_timeout_s):
                    if stream:
                        return await self._streaming(url, body, headers, check, image_task)
                    return await self._complete(url, body, headers, check, image_task)
            except TimeoutError:
                raise UpstreamTimeout(
                    "upstream_timeout", f"the upstream did not answer within {s.upstream_timeout_s}s"
                ) from None
        finally:
            if image_task is not None and not image_task.done():
                image_task.cancel()
                with contextlib.suppress(BaseException):
                    await image_task

    def _upstream_headers(self, request: Request, guard_key: str | None) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": request.headers.get("accept", "*/*")}
        if self.settings.upstream_api_key:
            headers["authorization"] = f"Bearer {self.settings.upstream_api_key}"
        else:
            client_auth = request.headers.get("authorization")
            if client_auth and (guard_key is None or guard_key not in client_auth):
                headers["authorization"] = client_auth
        return headers

    async def _image(self, url: str) -> DecodedImage:
        s = self.settings
        try:
            if url[:5].lower() == "data:":
                data = decode_base64(url, max_bytes=s.max_body_bytes)
            else:
                data = await self.fetcher.fetch(url)
            image = await asyncio.to_thread(
                decode_image, data, max_pixels=s.max_image_pixels, max_bytes=s.max_body_bytes
            )
        except FetchError:
            raise  # already says it is about the URL
        except ImageError as exc:
            raise ImageError(exc.code, f"image_url: {exc.message}") from None
        self.guard.start_reading(image)  # its text is read while the upstream generates
        return image

    async def _send(self, url: str, body: bytes, headers: dict[str, str]) -> httpx2.Response:
        request = self._client.build_request("POST", url, content=body, headers=headers)
        try:
            return await self._client.send(request, stream=True)
        except httpx2.TimeoutException:
            raise UpstreamTimeout("upstream_timeout", "the upstream model server timed out") from None
        except httpx2.HTTPError as exc:
            raise UpstreamError(
                "upstream_unavailable", f"the upstream model server cannot be reached: {exc}"
            ) from None

    async def _read(self, response: httpx2.Response) -> bytes:
        limit = self.settings.upstream_max_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise UpstreamError("upstream_too_large", f"the upstream answer is over {limit} bytes")
                chunks.append(chunk)
        except httpx2.HTTPError as exc:
            raise UpstreamError("upstream_unavailable", f"the upstream answer broke off: {exc}") from None
        return b"".join(chunks)

    async def _upstream_error(self, response: httpx2.Response) -> Response:
        raw = await self._read(response)
        if 400 <= response.status_code < 500:
            try:
                return JSONResponse(json.loads(raw), status_code=response.status_code)
            except ValueError:
                pass
        detail = raw[:300].decode("utf-8", "replace")
        raise UpstreamError("upstream_error", f"the upstream answered HTTP {response.status_code}: {detail}")

    async def _decide(
        self, check: CheckRequest, draft: str, image_task: asyncio.Task[DecodedImage] | None
    ) -> CheckResult:
        image = await image_task if image_task is not None else None
        req = CheckRequest(
            question=check.question,
            reply=repaired(draft),  # the upstream's text: nobody to refuse it to
            channel=check.channel,
            conversation_id=check.conversation_id,
            image=image,
        )
        return await self.guard.check(req)

    async def _complete(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        check: CheckRequest,
        image_task: asyncio.Task[DecodedImage] | None,
    ) -> Response:
        response = await self._send(url, body, headers)
        try:
            if response.status_code != 200:
                return await self._upstream_error(response)
            raw = await self._read(response)
        finally:
            await response.aclose()
        try:
            doc = json.loads(raw)
            message = doc["choices"][0]["message"]
            draft = message.get("content")
            if draft is not None and not isinstance(draft, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise UpstreamError(
                "upstream_malformed", "the upstream answer is not a chat completion"
            ) from None
        if not draft or not draft.strip():  # a tool call: nothing to guard
            doc["guard"] = {"action": None, "reason": "no_text_to_guard"}
            return JSONResponse(doc, headers={"x-guard-action": "unguarded"})
        result = await self._decide(check, draft, image_task)
        message["content"] = customer_text(result)
        doc["guard"] = guard_summary(result)
        return JSONResponse(doc, headers=guard_headers(result))

    async def _streaming(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        check: CheckRequest,
        image_task: asyncio.Task[DecodedImage] | None,
    ) -> Response:
        response = await self._send(url, body, headers)
        try:
            if response.status_code != 200:
                return await self._upstream_error(response)
            ctype = response.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise UpstreamError(
                    "upstream_malformed", f"the upstream did not stream (content-type {ctype!r})"
                )
            got = await self._read_stream(response)
        finally:
            await response.aclose()
        if got.first is None or not (got.done or got.finish_reason):
            raise UpstreamError("upstream_malformed", "the upstream stream ended before the answer did")
        draft = "".join(got.text)
        sse: dict[str, str] = {"cache-control": "no-cache"}
        if got.other_output or not draft.strip():
            return Response(
                b"".join(got.raw),
                media_type="text/event-stream",
                headers={**sse, "x-guard-action": "unguarded"},
            )
        result = await self._decide(check, draft, image_task)
        first = got.first
        keep = ("id", "object", "created", "model", "system_fingerprint")
        base: dict[str, Any] = {k: first[k] for k in keep if k in first}

        def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> bytes:
            doc: dict[str, Any] = {
                **base,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"

        out = [
            chunk({"role": "assistant", "content": ""}, None),
            chunk({"content": customer_text(result)}, None),
            chunk({}, got.finish_reason or "stop", guard=guard_summary(result)),
        ]
        if got.usage_chunk is not None:
            out.append(b"data: " + json.dumps(got.usage_chunk).encode() + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return Response(
            b"".join(out), media_type="text/event-stream", headers={**sse, **guard_headers(result)}
        )

    async def _read_stream(self, response: httpx2.Response) -> _Stream:
        limit = self.settings.upstream_max_bytes
        got = _Stream()
        size = 0
        try:
            async for line in response.aiter_lines():
                size += len(line) + 1
                if size > limit:
                    raise UpstreamError("upstream_too_large", f"the upstream stream is over {limit} bytes")
                got.raw.append(line.encode() + b"\n")
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    got.done = True
                    break
                self._take_chunk(got, data)
        except httpx2.HTTPError as exc:
            raise UpstreamError("upstream_unavailable", f"the upstream stream broke off: {exc}") from None
        return got

    @staticmethod
    def _take_chunk(got: _Stream, data: str) -> None:
        try:
            doc = json.loads(data)
            choices = doc["choices"]
            if not isinstance(choices, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(
                "upstream_malformed",
                "the upstream stream has a chunk that is not a chat completion chunk",
            ) from None
        if got.first is None:
            got.first = doc
        if not choices:
            if doc.get("usage") is not None:
                got.usage_chunk = doc
            return
        for choice in choices:
            if not isinstance(choice, dict):
                raise UpstreamError("upstream_malformed", "the upstream stream has a malformed choice")
            if choice.get("index", 0) != 0:
                got.other_output = True
                continue
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise UpstreamError("upstream_malformed", "the upstream stream has a malformed delta")
            content = delta.get("content")
            if isinstance(content, str):
                got.text.append(content)
            if delta.get("tool_calls"):
                got.other_output = True
            if choice.get("finish_reason"):
                got.finish_reason = choice["finish_reason"]
