"""``GuardMiddleware``: put the guard in the reply path of a Starlette or FastAPI chatbot.

Pure ASGI, in the manner of ``starlette/middleware/gzip.py``: nothing about a request is kept
on the middleware; each guarded request gets its own :class:`_Exchange`. For a guarded route it

1. watches the request body as the app reads it (the app still gets every byte) and, once the
   body is complete, finds the question and the photo in it and starts reading the photo at
   once, so decoding (or registering it with a guard server) overlaps the app's own generation;
2. lets the app run, holds back ``http.response.start`` and buffers the body;
3. finds the draft reply, asks the guard, and sends the response rewritten per the decision: the
   draft (``send``), the draft plus follow-up (``follow_up``), or the holding message
   (``review``/``escalate``), with ``X-Guard-Action`` / ``X-Guard-Decision`` headers, the decision
   in a JSON field (``decision_field``), the status and other headers kept and
   ``Content-Length`` corrected.

Other routes, websockets and lifespan pass straight through. A guarded response that is not of
the expected shape (an error status, not JSON, a body over ``max_response_bytes``, no reply at
the path) passes through unguarded and is counted in ``metrics``
(``guard_middleware_unguarded_total{reason=...}``). ``text/event-stream`` responses are buffered
and guarded (``streaming="guard"``) or passed through (``streaming="pass"``).

The guard is reached through a :class:`Checker`: :class:`LocalGuard` runs it in-process (the
same resources as ``guard serve``), :class:`HttpChecker` calls a guard server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

import httpx2
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guard.body import replay
from guard.errors import ImageError
from guard.images import DecodedImage, decode_base64, decode_image
from guard.metrics import Metrics
from guard.pipeline import CheckRequest, CheckResult, Pipeline
from guard.runtime import Runtime
from guard.scoring.base import Scorer
from guard.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_FALLBACK = (
    "感谢您的耐心，我们的专员会尽快回复您。\n"
    "Thank you for your patience: a colleague will get back to you shortly."
)


# What the middleware finds and what the guard answers --------------------------------------


@dataclass(frozen=True)
class RequestParts:
    """What the guard needs from the customer's request."""

    question: str
    photo: bytes | None = None
    conversation_id: str | None = None
    channel: str | None = None
    locale: str | None = None


@dataclass(frozen=True)
class RequestData:
    """The request as an extractor sees it: the raw body and, where it parses, its JSON or form."""

    scope: Scope
    body: bytes
    json: Any = None
    form: dict[str, str] | None = None
    files: dict[str, bytes] | None = None


Extractor = Callable[[RequestData], RequestParts | Awaitable[RequestParts | None] | None]


@dataclass(frozen=True)
class Verdict:
    """The guard's decision as the middleware uses it, whichever checker made it."""

    action: str
    text: str
    """What the customer should see: the draft, the draft plus follow-up, or the holding message."""
    decision_id: str | None = None
    score: float | None = None
    escalation_id: str | None = None
    follow_up: str | None = None
    degraded: bool = False
    reason: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Verdict:
        text = body.get("reply") if body.get("reply") is not None else body.get("holding_message")
        return cls(
            action=str(body["action"]),
            text=str(text or ""),
            decision_id=body.get("decision_id"),
            score=body.get("score"),
            escalation_id=body.get("escalation_id"),
            follow_up=body.get("follow_up"),
            degraded=bool(body.get("degraded")),
            reason=body.get("reason"),
        )

    @classmethod
    def from_result(cls, result: CheckResult) -> Verdict:
        return cls.from_json(result.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "action": self.action,
            "score": self.score,
            "escalation_id": self.escalation_id,
            "follow_up": self.follow_up,
            "degraded": self.degraded,
            "reason": self.reason,
        }


class CheckerError(Exception):
    """The guard could not be asked (server down, bad answer) or refused the input."""


class Checker(Protocol):
    """How the middleware reaches the guard. ``prepare_image`` starts as soon as the photo is seen."""

    async def prepare_image(self, data: bytes) -> object: ...

    async def check(self, parts: RequestParts, reply: str, image: object | None) -> Verdict: ...


class LocalGuard:
    """The guard in-process: opens the same resources as ``guard serve`` (SQL, cache, scorer, ...).

    Use it as an async context manager in the chatbot's lifespan, or wrap a running ``Pipeline``.
    """

    def __init__(
        self, settings: Settings | None = None, *, scorer: Scorer | None = None, guard: Pipeline | None = None
    ) -> None:
        self._settings = settings
        self._scorer = scorer
        self._guard = guard
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def guard(self) -> Pipeline:
        if self._guard is None:
            raise CheckerError(
                "the local guard is not open: use 'async with LocalGuard(...)' in the lifespan"
            )
        return self._guard

    async def __aenter__(self) -> LocalGuard:
        stack = contextlib.AsyncExitStack()
        opened = Runtime.open(self._settings or Settings.from_env(), scorer=self._scorer)
        rt = await stack.enter_async_context(opened)
        self._stack = stack
        self._guard = rt.pipeline
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
            self._guard = None

    async def prepare_image(self, data: bytes) -> object:
        s = self.guard.settings
        try:
            image = await asyncio.to_thread(
                decode_image, data, max_pixels=s.max_image_pixels, max_bytes=s.max_body_bytes
            )
        except ImageError as exc:
            raise CheckerError(f"the photo is not usable: {exc.message}") from None
        self.guard.start_reading(image)  # its text is read while the app generates
        return image

    async def check(self, parts: RequestParts, reply: str, image: object | None) -> Verdict:
        guard = self.guard
        req = CheckRequest(
            question=parts.question[-guard.settings.max_question_chars :],
            reply=reply,
            channel=parts.channel or "default",
            conversation_id=parts.conversation_id,
            locale=parts.locale,
            image=image if isinstance(image, DecodedImage) else None,
        )
        return Verdict.from_result(await guard.check(req))


class HttpChecker:
    """A guard server over HTTP: the photo goes to ``POST /v1/images``, the check to ``/v1/guard``."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 15.0,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx2.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpChecker:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _post(self, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = await self._client.post(path, **kwargs)
        except httpx2.HTTPError as exc:
            raise CheckerError(f"the guard at {self._client.base_url} cannot be reached: {exc}") from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code >= 300 or not isinstance(body, dict):
            raise CheckerError(f"the guard answered {resp.status_code} to {path}: {resp.text[:300]}")
        return body

    async def prepare_image(self, data: bytes) -> object:
        body = await self._post("/v1/images", files={"image": ("photo", data)})
        return str(body["image_id"])

    async def check(self, parts: RequestParts, reply: str, image: object | None) -> Verdict:
        doc: dict[str, Any] = {
            "question": parts.question,
            "reply": reply,
            "channel": parts.channel or "default",
        }
        if parts.conversation_id:
            doc["conversation_id"] = parts.conversation_id
        if parts.locale:
            doc["locale"] = parts.locale
        if isinstance(image, str):
            doc["image"] = {"id": image}
        body = await self._post("/v1/guard", json=doc)
        try:
            return Verdict.from_json(body)
        except KeyError:
            raise CheckerError("the guard's answer has no action") from None


# JSON paths ------------------------------------------------------------------------------

Path = tuple[str | int, ...]
_PART = re.compile(r"([^\[\]]*)((?:\[\d+\])*)")
_MISSING = object()


def parse_path(path: str) -> Path:
    """``"choices[0].message.content"`` (or with a leading ``$.``) -> ("choices", 0, "message", "content")."""
    text = path[2:] if path.startswith("$.") else path
    tokens: list[str | int] = []
    for part in text.split("."):
        match = _PART.fullmatch(part)
        if match is None or not (match.group(1) or match.group(2)):
            raise ValueError(f"{path!r} is not a JSON path like 'a.b[0].c'")
        if match.group(1):
            tokens.append(match.group(1))
        tokens.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return tuple(tokens)


def get_path(doc: Any, path: Path) -> Any:
    for token in path:
        if isinstance(token, int):
            if not isinstance(doc, list) or token >= len(doc):
                return _MISSING
        elif not isinstance(doc, dict) or token not in doc:
            return _MISSING
        doc = doc[token]
    return doc


def set_path(doc: Any, path: Path, value: Any) -> None:
    parent = get_path(doc, path[:-1])
    parent[path[-1]] = value


# The middleware ----------------------------------------------------------------------------


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        checker: Checker,
        routes: Iterable[str] = ("/chat",),
        methods: Iterable[str] = ("POST",),
        question: str = "question",
        photo: str | None = "image",
        reply: str = "reply",
        conversation: str | None = "conversation_id",
        channel: str = "default",
        extract: Extractor | None = None,
        decision_field: str | None = "guard",
        streaming: Literal["guard", "pass"] = "guard",
        stream_reply: str = "text",
        max_request_bytes: int = 10 * 1024 * 1024,
        max_response_bytes: int = 1024 * 1024,
        on_error: Literal["hold", "pass"] = "hold",
        fallback_message: str = DEFAULT_FALLBACK,
        metrics: Metrics | None = None,
    ) -> None:
        """``routes``: exact paths, or prefixes ending in ``*``. ``question``/``photo``/``conversation``:
        JSON paths in the request (for multipart, the names of the form fields; the photo is a file
        field). ``reply``: JSON path of the draft in the response; ``stream_reply``: the same inside
        each ``data:`` event of a ``text/event-stream`` response. ``extract`` replaces the request
        paths with a callable. ``on_error``: when the guard cannot be asked, ``hold`` sends
        ``fallback_message`` (action ``escalate``), ``pass`` sends the draft unguarded."""
        if streaming not in ("guard", "pass") or on_error not in ("hold", "pass"):
            raise ValueError("streaming must be 'guard' or 'pass'; on_error must be 'hold' or 'pass'")
        self.app = app
        self.checker = checker
        self.exact = frozenset(r for r in routes if not r.endswith("*"))
        self.prefixes = tuple(r[:-1] for r in routes if r.endswith("*"))
        self.methods = frozenset(m.upper() for m in methods)
        self.question = parse_path(question)
        self.photo = None if photo is None else parse_path(photo)
        self.reply = parse_path(reply)
        self.conversation = None if conversation is None else parse_path(conversation)
        self.channel = channel
        self.extract = extract
        self.decision_field = decision_field
        self.streaming = streaming
        self.stream_reply = parse_path(stream_reply)
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self.on_error = on_error
        self.fallback_message = fallback_message
        self.metrics = metrics or Metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.methods or not self._guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            await exchange.close()

    def _guarded(self, path: str) -> bool:
        return path in self.exact or any(path.startswith(p) for p in self.prefixes)

    def unguarded(self, reason: str) -> None:
        self.metrics.inc("guard_middleware_unguarded_total", reason=reason)

    # Request side

    async def request_parts(self, scope: Scope, body: bytes) -> RequestParts | None:
        data = await _request_data(scope, body)
        if self.extract is not None:
            found = self.extract(data)
            return await found if inspect.isawaitable(found) else found
        if data.json is not None:
            question = get_path(data.json, self.question)
            if not isinstance(question, str):
                return None
            photo = None if self.photo is None else _photo_bytes(get_path(data.json, self.photo))
            conversation = None if self.conversation is None else get_path(data.json, self.conversation)
        elif data.form is not None:
            question = data.form.get(_name(self.question))
            if question is None:
                return None
            photo = None if self.photo is None or data.files is None else data.files.get(_name(self.photo))
            conversation = None if self.conversation is None else data.form.get(_name(self.conversation))
        else:
            return None
        return RequestParts(
            question=question,
            photo=photo,
            conversation_id=conversation if isinstance(conversation, str) else None,
            channel=self.channel,
        )

    async def prepare(self, scope: Scope, body: bytes) -> tuple[RequestParts, object | None] | None:
        """The request's parts and the photo as the checker prepared it (started at once)."""
        parts = await self.request_parts(scope, body)
        if parts is None:
            return None
        image = None
        if parts.photo:
            try:
                image = await self.checker.prepare_image(parts.photo)
            except CheckerError as exc:
                self.metrics.inc("guard_middleware_photo_rejected_total")
                log.warning("guard middleware: the photo is left out: %s", exc)
        return parts, image

    async def verdict(self, parts: RequestParts, reply: str, image: object | None) -> Verdict | None:
        try:
            return await self.checker.check(parts, reply, image)
        except Exception as exc:
            self.metrics.inc("guard_middleware_errors_total", kind=type(exc).__name__)
            log.error("guard middleware: the guard could not be asked: %r", exc)
            if self.on_error == "pass":
                return None
            return Verdict(
                action="escalate", text=self.fallback_message, degraded=True, reason="guard_unavailable"
            )


def _name(path: Path) -> str:
    return ".".join(str(t) for t in path)


def _photo_bytes(value: Any) -> bytes | None:
    if isinstance(value, dict):
        value = value.get("data")
    if not isinstance(value, str) or not value:
        return None
    try:
        return decode_base64(value, max_bytes=50 * 1024 * 1024)
    except ImageError:
        return None


async def _request_data(scope: Scope, body: bytes) -> RequestData:
    ctype = ""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            ctype = bytes(value).decode("latin-1").split(";")[0].strip().lower()
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form_scope = {k: v for k, v in scope.items() if k != "state"}
        try:
            form = await Request(form_scope, replay(body)).form(max_files=4, max_fields=64)
        except Exception:
            return RequestData(scope, body)
        try:
            fields: dict[str, str] = {}
            files: dict[str, bytes] = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    files.setdefault(key, await value.read())
                else:
                    fields.setdefault(key, value)
            return RequestData(scope, body, form=fields, files=files)
        finally:
            await form.close()
    try:
        return RequestData(scope, body, json=json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return RequestData(scope, body)


class _Exchange:
    """One guarded request/response: everything about it lives here, never on the middleware."""

    def __init__(self, mw: GuardMiddleware, scope: Scope, receive: Receive, send: Send) -> None:
        self.mw = mw
        self.scope = scope
        self._receive = receive
        self._send = send
        self.request_chunks: list[bytes] = []
        self.request_size = 0
        self.request_skipped: str | None = None
        self.prepared: asyncio.Task[tuple[RequestParts, object | None] | None] | None = None
        self.start: Message | None = None
        self.mode: Literal["hold", "json", "sse", "pass"] = "hold"
        self.chunks: list[bytes] = []
        self.size = 0

    async def close(self) -> None:
        if self.prepared is not None and not self.prepared.done():
            self.prepared.cancel()
            with contextlib.suppress(BaseException):
                await self.prepared

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and self.prepared is None and self.request_skipped is None:
            chunk = message.get("body", b"")
            self.request_size += len(chunk)
            if self.request_size > self.mw.max_request_bytes:
                self.request_skipped = "request_too_large"
                self.request_chunks = []
            else:
                self.request_chunks.append(chunk)
                if not message.get("more_body", False):
                    body = b"".join(self.request_chunks)
                    self.request_chunks = []
                    self.prepared = asyncio.create_task(self.mw.prepare(self.scope, body))
        return message

    async def send(self, message: Message) -> None:
        if self.mode == "pass":
            await self._send(message)
        elif message["type"] == "http.response.start":
            self.start = message
            self.mode = self._mode(message)
            if self.mode == "pass":
                await self._send(message)
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
            self.size += len(self.chunks[-1])
            if self.size > self.mw.max_response_bytes:
                await self._pass("response_too_large", more_body=message.get("more_body", False))
            elif not message.get("more_body", False):
                await self._finish()
        else:  # trailers, pathsend, ...: nothing this middleware can rewrite
            await self._pass("unsupported_message", more_body=True)
            await self._send(message)

    def _mode(self, start: Message) -> Literal["json", "sse", "pass"]:
        status = start["status"]
        ctype = ""
        for name, value in start.get("headers", ()):
            if bytes(name).lower() == b"content-type":
                ctype = bytes(value).decode("latin-1").split(";")[0].strip().lower()
        if not 200 <= status < 300:
            self.mw.unguarded("error_status")
            return "pass"
        if ctype == "application/json" or ctype.endswith("+json"):
            return "json"
        if ctype == "text/event-stream":
            if self.mw.streaming == "guard":
                return "sse"
            self.mw.unguarded("streaming_passed")
            return "pass"
        self.mw.unguarded("not_json")
        return "pass"

    async def _pass(self, reason: str, *, more_body: bool) -> None:
        """Send what is held as it was, and let the rest through."""
        self.mw.unguarded(reason)
        self.mode = "pass"
        assert self.start is not None
        await self._send(self.start)
        await self._send(
            {"type": "http.response.body", "body": b"".join(self.chunks), "more_body": more_body}
        )
        self.chunks = []

    async def _finish(self) -> None:
        body = b"".join(self.chunks)
        if self.mode == "json":
            found = _json_reply(body, self.mw.reply)
            if found is None:
                return await self._pass("reply_not_found", more_body=False)
            doc, draft = found
        else:
            events = _sse_events(body)
            draft = "".join(_sse_texts(events, self.mw.stream_reply))
            if not draft:
                return await self._pass("reply_not_found", more_body=False)
        if self.prepared is None:
            return await self._pass(self.request_skipped or "request_not_read", more_body=False)
        try:
            prepared = await self.prepared
        except Exception:
            log.exception("guard middleware: reading the request failed")
            return await self._pass("request_unreadable", more_body=False)
        if prepared is None:
            return await self._pass("question_not_found", more_body=False)
        parts, image = prepared
        verdict = await self.mw.verdict(parts, draft, image)
        if verdict is None:
            return await self._pass("guard_unavailable", more_body=False)
        self.mw.metrics.inc("guard_middleware_guarded_total", action=verdict.action)
        if self.mode == "json":
            set_path(doc, self.mw.reply, verdict.text)
            if self.mw.decision_field and isinstance(doc, dict):
                doc[self.mw.decision_field] = verdict.to_json()
            new_body = json.dumps(doc, ensure_ascii=False).encode()
        else:
            new_body = _sse_rewrite(events, self.mw.stream_reply, verdict, self.mw.decision_field)
        assert self.start is not None
        headers = [
            (k, v)
            for k, v in self.start.get("headers", ())
            if bytes(k).lower() not in (b"content-length", b"x-guard-action", b"x-guard-decision")
        ]
        headers.append((b"content-length", str(len(new_body)).encode()))
        headers.append((b"x-guard-action", verdict.action.encode()))
        if verdict.decision_id:
            headers.append((b"x-guard-decision", verdict.decision_id.encode()))
        await self._send({**self.start, "headers": headers})
        await self._send({"type": "http.response.body", "body": new_body, "more_body": False})


def _json_reply(body: bytes, path: Path) -> tuple[Any, str] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    draft = get_path(doc, path)
    if not isinstance(draft, str) or not draft.strip():
        return None
    return doc, draft


@dataclass
class _Event:
    fields: list[tuple[str, str]]
    data: str | None


def _sse_events(body: bytes) -> list[_Event]:
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields: list[tuple[str, str]] = []
        data: list[str] = []
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields.append((name, value))
        events.append(_Event(fields, "\n".join(data) if data else None))
    return events


def _sse_texts(events: list[_Event], path: Path) -> Iterable[str]:
    for event in events:
        if event.data is None or event.data.strip() == "[DONE]":
            continue
        try:
            value = get_path(json.loads(event.data), path)
        except ValueError:
            yield event.data
            continue
        if isinstance(value, str):
            yield value


def _sse_rewrite(events: list[_Event], path: Path, verdict: Verdict, decision_field: str | None) -> bytes:
    """One event with the guarded text (in the shape of the first one), the decision, then [DONE]."""
    template: Any = None
    done = False
    for event in events:
        if event.data is None:
            continue
        if event.data.strip() == "[DONE]":
            done = True
            continue
        if template is None:
            try:
                template = json.loads(event.data)
            except ValueError:
                template = event.data
    out: list[str] = []
    if isinstance(template, dict | list) and get_path(template, path) is not _MISSING:
        set_path(template, path, verdict.text)
        out.append("data: " + json.dumps(template, ensure_ascii=False))
    else:
        out.append("\n".join("data: " + line for line in verdict.text.split("\n")))
    if decision_field:
        out.append(f"event: {decision_field}\ndata: " + json.dumps(verdict.to_json(), ensure_ascii=False))
    if done:
        out.append("data: [DONE]")
    return ("\n\n".join(out) + "\n\n").encode()
