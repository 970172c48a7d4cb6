"""The OpenAI-compatible proxy: ``POST /v1/chat/completions`` through the guard.

The request goes to the upstream model server (``GUARD_UPSTREAM_URL``) unchanged, while the
photo of the last user message is fetched and decoded at the same time. The assistant message
that comes back is guarded against that user message (its text parts and its first image), and
the client gets a normal chat completion whose content is what the customer should see: the
draft, the draft plus follow-up, or the holding message. Every choice's customer-visible text
(content and refusal) is guarded, each choice on its own; tool calls pass through beside it, and
an answer with no visible text at all is marked ``X-Guard-Action: unguarded``
(guard/completions.py). The decision is in the headers ``X-Guard-Action`` / ``X-Guard-Decision``
and in an extra ``guard`` field that OpenAI SDKs ignore (never the draft). With ``stream: true``
the upstream stream is read to the end, guarded, and streamed back in the same chunk format (the
``guard`` field rides on the last chunk, the one with the finish reason).

Upstream failures are JSON errors, never hangs: unreachable -> 502 ``upstream_unavailable``,
too slow -> 504 ``upstream_timeout``, 5xx or a malformed answer -> 502, 4xx -> passed through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from guard.body import parse_json, read_body
from guard.completions import (
    StreamRead,
    Visible,
    malformed,
    plain_choices,
    plain_visible,
    rewrite_plain,
    rewrite_stream,
)
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
from guard.images import DecodedImage, decode_base64
from guard.keys import request_channel
from guard.pipeline import CheckRequest, CheckResult, Pipeline
from guard.settings import Settings
from guard.sse import Event, EventReader
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


def _guard_field(name: str) -> bool:
    """A field of the request that is the guard's, not the model's: ``channel``, ``guard*``."""
    return name == "channel" or name.startswith("guard")


def _asked_channel(doc: dict[str, Any]) -> str | None:
    asked = doc.get("channel")
    if asked is not None and (not isinstance(asked, str) or not 0 < len(asked) <= 100):
        raise InvalidField("wrong_type", "'channel' must be a channel name (a string of 1-100 characters)")
    return asked


def guard_summary(result: CheckResult) -> dict[str, Any]:
    """The ``guard`` field added to the completion. Never the draft: a held draft stays in the queue
    and in ``GET /v1/decisions/{id}`` for the key's own channel."""
    return {
        "decision_id": result.decision_id,
        "action": result.action,
        "score": None if result.score is None else round(result.score, 4),
        "band": result.band,
        "escalation_id": result.queue_item_id,
        "follow_up": result.follow_up,
        "degraded": result.degraded,
        "reason": result.reason,
        "durable": result.durable,
        "uncertain": result.uncertain,
        "uncertain_reason": result.uncertain_reason,
    }


NO_TEXT = "no_text_to_guard"
UNGUARDED = {"x-guard-action": "unguarded", "x-guard-reason": NO_TEXT}
NO_TEXT_SUMMARY: dict[str, Any] = {"action": None, "reason": NO_TEXT}
"""The headers and the ``guard`` field of an answer with no customer-visible text (tool calls only)."""


def guard_headers(result: CheckResult) -> dict[str, str]:
    headers = {"x-guard-action": result.action, "x-guard-decision": result.decision_id}
    if result.uncertain_reason is not None:
        headers["x-guard-uncertain"] = result.uncertain_reason
    return headers


def customer_text(result: CheckResult) -> str:
    return result.reply if result.reply is not None else result.holding_message or ""


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
        doc = parse_json(body)
        if not isinstance(doc, dict):
            raise BadRequest("invalid_json", "the body must be a JSON object")
        if doc.get("n", 1) != 1:
            raise InvalidField("unsupported", "'n' other than 1 is not supported through the guard")
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise InvalidField("wrong_type", "'stream' must be true or false")
        turn = last_user_turn(doc)
        channel = request_channel(request.scope, _asked_channel(doc))
        if any(_guard_field(name) for name in doc):  # the guard's own fields never go upstream
            body = json.dumps({k: v for k, v in doc.items() if not _guard_field(k)}).encode()
        image_task = asyncio.create_task(self._image(turn.image_url)) if turn.image_url else None
        try:
            state = request.scope.get("state", {})
            headers = self._upstream_headers(request, state.get("guard_key"))
            url = s.upstream_url.rstrip("/") + "/chat/completions"
            check = CheckRequest(
                question=checked(turn.text[-s.max_question_chars :], "the last user message"),
                reply="",
                channel=channel,
                conversation_id=_header(request, "x-guard-conversation-id", "conversation_id"),
            )
            try:
                async with asyncio.timeout(s.upstream_timeout_s):
                    return await self._forward(url, body, headers, check, image_task, stream=stream)
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
            image = await self.guard.images.decode(data)  # its own bounded pool, under a deadline
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

    async def _chunks(self, response: httpx2.Response, what: str) -> AsyncGenerator[bytes]:
        """The bytes of the upstream's ``what`` (answer, stream) as they arrive: over
        GUARD_UPSTREAM_MAX_BYTES, or broken off, it is a 502."""
        limit = self.settings.upstream_max_bytes
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise UpstreamError("upstream_too_large", f"the upstream {what} is over {limit} bytes")
                yield chunk
        except httpx2.HTTPError as exc:
            raise UpstreamError("upstream_unavailable", f"the upstream {what} broke off: {exc}") from None

    async def _read(self, response: httpx2.Response) -> bytes:
        return b"".join([chunk async for chunk in self._chunks(response, "answer")])

    async def _upstream_error(self, response: httpx2.Response) -> Response:
        raw = await self._read(response)
        if 400 <= response.status_code < 500:
            try:
                return JSONResponse(json.loads(raw), status_code=response.status_code)
            except (ValueError, RecursionError):
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

    async def _guard_choices(
        self, check: CheckRequest, visible: dict[int, Visible], image_task: asyncio.Task[DecodedImage] | None
    ) -> dict[int, CheckResult]:
        """One decision per choice that has customer-visible text, taken concurrently."""
        texts = {index: v.text for index, v in visible.items() if v.text.strip()}
        results = await asyncio.gather(*(self._decide(check, text, image_task) for text in texts.values()))
        return dict(zip(texts, results, strict=True))

    async def _forward(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        check: CheckRequest,
        image_task: asyncio.Task[DecodedImage] | None,
        *,
        stream: bool,
    ) -> Response:
        """Send the request upstream, read its answer (a stream to its end), guard the text of every
        choice and answer in the upstream's format; any answer but a 200 as the error it is."""
        response = await self._send(url, body, headers)
        try:
            if response.status_code != 200:
                return await self._upstream_error(response)
            got = await self._read_stream(response) if stream else await self._read(response)
        finally:
            await response.aclose()
        if isinstance(got, StreamRead):
            return await self._streamed(got, check, image_task)
        return await self._completed(got, check, image_task)

    async def _completed(
        self, raw: bytes, check: CheckRequest, image_task: asyncio.Task[DecodedImage] | None
    ) -> Response:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise malformed("not JSON") from None
        choices = plain_choices(doc)
        visible = {i: plain_visible(choice) for i, choice in enumerate(choices)}
        results = await self._guard_choices(check, visible, image_task)
        for i, choice in enumerate(choices):
            result = results.get(i)
            rewrite_plain(choice, visible[i], None if result is None else customer_text(result))
            if result is not None and len(results) > 1:
                choice["guard"] = guard_summary(result)
        doc["guard"], answer_headers = self._answer(results)
        return JSONResponse(doc, headers=answer_headers)

    async def _streamed(
        self, got: StreamRead, check: CheckRequest, image_task: asyncio.Task[DecodedImage] | None
    ) -> Response:
        if got.first is None or not got.finished:
            raise UpstreamError("upstream_malformed", "the upstream stream ended before the answer did")
        visible = {index: choice.visible for index, choice in got.choices.items()}
        results = await self._guard_choices(check, visible, image_task)
        guarded = {i: (customer_text(r), guard_summary(r)) for i, r in results.items()}
        summary, answer_headers = self._answer(results)
        return Response(
            rewrite_stream(got, guarded, summary),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **answer_headers},
        )

    def _answer(self, results: dict[int, CheckResult]) -> tuple[dict[str, Any], dict[str, str]]:
        """The ``guard`` summary and the headers of an answer: its first guarded choice's decision, or
        "unguarded" when no choice had text (tool calls only: nothing the customer reads; counted)."""
        if not results:
            self.guard.metrics.unguarded.labels(reason=NO_TEXT).inc()
            return NO_TEXT_SUMMARY, UNGUARDED
        primary = results[min(results)]
        return guard_summary(primary), guard_headers(primary)

    async def _read_stream(self, response: httpx2.Response) -> StreamRead:
        ctype = response.headers.get("content-type", "")
        if not ctype.startswith("text/event-stream"):
            raise UpstreamError("upstream_malformed", f"the upstream did not stream (content-type {ctype!r})")
        got = StreamRead()
        reader = EventReader()
        async with contextlib.aclosing(self._chunks(response, "stream")) as chunks:
            async for chunk in chunks:
                if self._take_events(got, reader.feed(chunk)):
                    return got  # [DONE]: what follows is not read
        self._take_events(got, reader.end())
        return got

    @staticmethod
    def _take_events(got: StreamRead, events: list[Event]) -> bool:
        """Take each event's data (a chunk) into ``got``; True once the stream said ``[DONE]``."""
        for event in events:
            if event.data is None:
                continue
            data = event.data.strip()
            if data == "[DONE]":
                got.done = True
                return True
            got.take(data)
        return False
