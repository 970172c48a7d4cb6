"""``GuardMiddleware``: put the guard in the reply path of a Starlette or FastAPI chatbot.

Pure ASGI, in the manner of ``starlette/middleware/gzip.py``: nothing about a request is kept
on the middleware; each guarded request gets its own :class:`_Exchange`. For a guarded route it

1. watches the request body as the app reads it (the app still gets every byte) and, once the
   body is complete, finds the question and the photo in it and starts reading the photo at
   once, so decoding (or registering it with a guard server) overlaps the app's own generation;
2. lets the app run, holds back ``http.response.start`` and buffers the body;
3. finds the draft reply, asks the guard, and sends the response rewritten per the decision: the
   draft (``send``), the draft plus follow-up (``follow_up``), or the holding message
   (``review``/``escalate``), with ``X-Guard-Action`` / ``X-Guard-Decision`` headers (and
   ``X-Guard-Uncertain``: its reason, when the guard could not judge the case), the decision
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
from collections.abc import Iterable
from typing import Any, Literal

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guard.body import replay
from guard.checkers import (
    Checker,
    CheckerError,
    Extractor,
    HttpChecker,
    LocalGuard,
    RequestData,
    RequestParts,
    Verdict,
)
from guard.errors import ImageError
from guard.images import decode_base64
from guard.json_path import MISSING, Path, get_path, parse_path, set_path
from guard.metrics import Metrics
from guard.sse import Event, parse_events

__all__ = [
    "DEFAULT_FALLBACK",
    "Checker",
    "CheckerError",
    "Extractor",
    "GuardMiddleware",
    "HttpChecker",
    "LocalGuard",
    "RequestData",
    "RequestParts",
    "Verdict",
    "get_path",
    "parse_path",
    "set_path",
]

log = logging.getLogger(__name__)

DEFAULT_FALLBACK = (
    "感谢您的耐心，我们的专员会尽快回复您。\n"
    "Thank you for your patience: a colleague will get back to you shortly."
)


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
            events = parse_events(body)
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
        headers = [(k, v) for k, v in self.start.get("headers", ()) if bytes(k).lower() not in _OWN_HEADERS]
        headers.append((b"content-length", str(len(new_body)).encode()))
        headers.append((b"x-guard-action", verdict.action.encode()))
        if verdict.decision_id:
            headers.append((b"x-guard-decision", verdict.decision_id.encode()))
        if verdict.uncertain_reason:
            headers.append((b"x-guard-uncertain", verdict.uncertain_reason.encode()))
        await self._send({**self.start, "headers": headers})
        await self._send({"type": "http.response.body", "body": new_body, "more_body": False})


_OWN_HEADERS = (b"content-length", b"x-guard-action", b"x-guard-decision", b"x-guard-uncertain")
"""Headers the middleware sets itself; the app's own are dropped."""


def _json_reply(body: bytes, path: Path) -> tuple[Any, str] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    draft = get_path(doc, path)
    if not isinstance(draft, str) or not draft.strip():
        return None
    return doc, draft


def _sse_texts(events: list[Event], path: Path) -> Iterable[str]:
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


def _sse_rewrite(events: list[Event], path: Path, verdict: Verdict, decision_field: str | None) -> bytes:
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
    if isinstance(template, dict | list) and get_path(template, path) is not MISSING:
        set_path(template, path, verdict.text)
        out.append("data: " + json.dumps(template, ensure_ascii=False))
    else:
        out.append("\n".join("data: " + line for line in verdict.text.split("\n")))
    if decision_field:
        out.append(f"event: {decision_field}\ndata: " + json.dumps(verdict.to_json(), ensure_ascii=False))
    if done:
        out.append("data: [DONE]")
    return ("\n\n".join(out) + "\n\n").encode()
