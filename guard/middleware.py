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

A gzip or deflate answer is decoded, guarded and sent uncompressed. Every response that is not
guarded (other routes, websockets, and on a guarded route an error status, not JSON, a body over
``max_response_bytes``, no reply at the path, ...) is marked ``X-Guard-Action: unguarded`` with an
``X-Guard-Reason`` and counted in ``metrics`` (``guard_middleware_unguarded_total{reason=...}``);
with ``unguarded="hold"`` a guarded route sends the fallback message instead. ``text/event-stream``
responses are buffered and guarded (``streaming="guard"``) or passed through (``streaming="pass"``).
Lifespan passes straight through.

The guard is reached through a :class:`Checker`: :class:`LocalGuard` runs it in-process (the
same resources as ``guard serve``), :class:`HttpChecker` calls a guard server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import zlib
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
from guard.json_path import MISSING, Path, get_path, make_path, parse_path, set_path
from guard.metrics import MiddlewareMetrics
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
        unguarded: Literal["pass", "hold"] = "pass",
        stream_decision: Literal["field", "event"] = "field",
        fallback_message: str = DEFAULT_FALLBACK,
        metrics: MiddlewareMetrics | None = None,
    ) -> None:
        """``routes``: exact paths, or prefixes ending in ``*``. ``question``/``photo``/``conversation``:
        JSON paths in the request (for multipart, the names of the form fields; the photo is a file
        field). ``reply``: JSON path of the draft in the response; ``stream_reply``: the same inside
        each ``data:`` event of a ``text/event-stream`` response. ``extract`` replaces the request
        paths with a callable. ``on_error``: when the guard cannot be asked, ``hold`` sends
        ``fallback_message`` (action ``escalate``), ``pass`` sends the draft unguarded. ``unguarded``:
        a response on a guarded route that cannot be guarded (an error status, not JSON, no reply at
        the path, ...) is passed on marked ``X-Guard-Action: unguarded`` (``pass``) or replaced by
        ``fallback_message`` (``hold``). ``stream_decision``: the decision of a guarded stream rides as
        ``decision_field`` on its last JSON event (``field``, safe for OpenAI-style stream consumers)
        or comes as an ``event: <decision_field>`` of its own (``event``)."""
        if streaming not in ("guard", "pass") or on_error not in ("hold", "pass"):
            raise ValueError("streaming must be 'guard' or 'pass'; on_error must be 'hold' or 'pass'")
        if unguarded not in ("pass", "hold") or stream_decision not in ("field", "event"):
            raise ValueError("unguarded must be 'pass' or 'hold'; stream_decision must be 'field' or 'event'")
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
        self.unguarded_policy = unguarded
        self.stream_decision = stream_decision
        self.fallback_message = fallback_message
        self.metrics = metrics or MiddlewareMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        if (
            scope["type"] == "websocket"
            or scope["method"] not in self.methods
            or not self._guarded(scope["path"])
        ):
            reason = "websocket" if scope["type"] == "websocket" else "route_not_guarded"
            self.unguarded(reason)
            await self.app(scope, receive, _marking(send, reason))
            return
        exchange = _Exchange(self, scope, receive, send)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            await exchange.close()

    def _guarded(self, path: str) -> bool:
        return path in self.exact or any(path.startswith(p) for p in self.prefixes)

    def unguarded(self, reason: str) -> None:
        self.metrics.unguarded.labels(reason=reason).inc()

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
                self.metrics.photo_rejected.inc()
                log.warning("guard middleware: the photo is left out: %s", exc)
        return parts, image

    async def verdict(self, parts: RequestParts, reply: str, image: object | None) -> Verdict | None:
        try:
            return await self.checker.check(parts, reply, image)
        except Exception as exc:
            self.metrics.errors.labels(kind=type(exc).__name__).inc()
            log.error("guard middleware: the guard could not be asked: %r", exc)
            if self.on_error == "pass":
                return None
            return Verdict(
                action="escalate", text=self.fallback_message, degraded=True, reason="guard_unavailable"
            )


_GUARD_HEADERS = (b"x-guard-action", b"x-guard-decision", b"x-guard-reason", b"x-guard-uncertain")


def _headers(message: Message, *, drop: tuple[bytes, ...] = ()) -> list[tuple[bytes, bytes]]:
    """The message's headers without the guard's own (an app cannot set them) and without ``drop``."""
    return [
        (bytes(k), bytes(v))
        for k, v in message.get("headers", ())
        if bytes(k).lower() not in _GUARD_HEADERS + drop
    ]


def _unguarded_headers(message: Message, reason: str) -> list[tuple[bytes, bytes]]:
    return [*_headers(message), (b"x-guard-action", b"unguarded"), (b"x-guard-reason", reason.encode())]


def _marking(send: Send, reason: str) -> Send:
    """``send`` with the response (or the websocket's accept) marked as passed unguarded."""

    async def marked(message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept"):
            message = {**message, "headers": _unguarded_headers(message, reason)}
        await send(message)

    return marked


def _decompress(body: bytes, encoding: str, limit: int) -> bytes | None:
    """A gzip or deflate body decoded, or None when it is not one or would be over ``limit`` bytes."""
    wbits = 47 if encoding in ("gzip", "x-gzip") else 15  # 47: gzip or zlib header; deflate: zlib
    for bits in (wbits, -15):  # some servers send raw deflate
        decoder = zlib.decompressobj(bits)
        try:
            out = decoder.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or decoder.unconsumed_tail or not decoder.eof:
            return None
        return out
    return None


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
    except (ValueError, RecursionError):
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
        self.mode: Literal["hold", "json", "sse", "pass", "drop"] = "hold"
        """hold: waiting for the start; json/sse: buffering to guard; pass: passing unguarded;
        drop: reading the rest of a response that will be replaced by the fallback message."""
        self.encoding: str | None = None
        self.held_reason = ""
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
        elif self.mode == "drop":
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await self._hold(self.held_reason)
        elif message["type"] == "http.response.start":
            self.start = message
            mode = self._mode(message)
            if mode == "json":
                self.mode = "json"
            elif mode == "sse":
                self.mode = "sse"
            else:
                await self._pass(mode, more_body=True, started=False)
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

    def _mode(self, start: Message) -> str:
        """``json`` or ``sse`` to guard the response, else why it cannot be guarded."""
        status = start["status"]
        found: dict[bytes, str] = {}
        for name, value in start.get("headers", ()):
            if bytes(name).lower() in (b"content-type", b"content-encoding"):
                found[bytes(name).lower()] = bytes(value).decode("latin-1").split(";")[0].strip().lower()
        ctype, encoding = found.get(b"content-type", ""), found.get(b"content-encoding", "identity")
        if not 200 <= status < 300:
            return "error_status"
        if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            return "compressed"
        self.encoding = None if encoding == "identity" else encoding
        if ctype == "application/json" or ctype.endswith("+json"):
            return "json"
        if ctype == "text/event-stream":
            return "sse" if self.mw.streaming == "guard" else "streaming_passed"
        return "not_json"

    async def _pass(self, reason: str, *, more_body: bool, started: bool = True) -> None:
        """Send what is held as it was, marked unguarded, and let the rest through; or, with
        ``unguarded="hold"``, replace the response by the fallback message."""
        self.mw.unguarded(reason)
        assert self.start is not None
        if self.mw.unguarded_policy == "hold" and self.start["status"] not in (204, 304):
            self.chunks = []
            if more_body:
                self.mode, self.held_reason = "drop", reason
                return
            return await self._hold(reason)
        self.mode = "pass"
        await self._send({**self.start, "headers": _unguarded_headers(self.start, reason)})
        if started:
            await self._send(
                {"type": "http.response.body", "body": b"".join(self.chunks), "more_body": more_body}
            )
        self.chunks = []

    async def _hold(self, reason: str) -> None:
        """The fallback message instead of a response that could not be guarded."""
        text = self.mw.fallback_message
        doc = make_path(self.mw.reply, text)
        if self.mw.decision_field and isinstance(doc, dict):
            verdict = Verdict(action="escalate", text=text, degraded=True, reason=f"unguarded_{reason}")
            doc[self.mw.decision_field] = verdict.to_json()
        await self._respond(json.dumps(doc, ensure_ascii=False).encode(), "escalate", None, reason=reason)

    async def _respond(
        self,
        body: bytes,
        action: str,
        decision_id: str | None,
        *,
        reason: str | None = None,
        uncertain: str | None = None,
    ) -> None:
        """Send ``body`` (uncompressed) with the start's status and headers, marked with the decision
        (``uncertain``: why the guard could not judge the draft); with ``reason``, ``body`` is the
        fallback message's JSON held in place of the response."""
        assert self.start is not None
        drop: tuple[bytes, ...] = (b"content-length", b"content-encoding")
        headers = _headers(self.start, drop=drop if reason is None else (*drop, b"content-type"))
        if reason is not None:
            headers += [(b"content-type", b"application/json"), (b"x-guard-reason", reason.encode())]
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((b"x-guard-action", action.encode()))
        if decision_id:
            headers.append((b"x-guard-decision", decision_id.encode()))
        if uncertain:
            headers.append((b"x-guard-uncertain", uncertain.encode()))
        await self._send({**self.start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def _finish(self) -> None:
        body = b"".join(self.chunks)
        if self.encoding is not None:
            decoded = _decompress(body, self.encoding, self.mw.max_response_bytes)
            if decoded is None:
                return await self._pass("undecodable_body", more_body=False)
            body = decoded
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
        self.mw.metrics.guarded.labels(action=verdict.action).inc()
        if self.mode == "json":
            set_path(doc, self.mw.reply, verdict.text)
            if self.mw.decision_field and isinstance(doc, dict):
                doc[self.mw.decision_field] = verdict.to_json()
            new_body = json.dumps(doc, ensure_ascii=False).encode()
        else:
            new_body = _sse_rewrite(
                events, self.mw.stream_reply, verdict, self.mw.decision_field, self.mw.stream_decision
            )
        await self._respond(new_body, verdict.action, verdict.decision_id, uncertain=verdict.uncertain_reason)


def _json_reply(body: bytes, path: Path) -> tuple[Any, str] | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
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
        except (ValueError, RecursionError):
            yield event.data
            continue
        if isinstance(value, str):
            yield value


def _finishes(doc: Any) -> bool:
    """An OpenAI-style chunk that carries a ``finish_reason``."""
    choices = doc.get("choices") if isinstance(doc, dict) else None
    return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def _sse_rewrite(
    events: list[Event], path: Path, verdict: Verdict, decision_field: str | None, how: str = "field"
) -> bytes:
    """The guarded text as one event in the shape of the first; then the JSON events that carried no
    text (a chunk with the ``finish_reason``, the usage, ...; one that carried text and a finish
    reason comes with its text emptied); the decision (a field on the last JSON event, or an event
    of its own); and ``[DONE]`` if the stream had it."""
    template: Any = None
    rest: list[Any] = []
    done = False
    for event in events:
        if event.data is None:
            continue
        if event.data.strip() == "[DONE]":
            done = True
            continue
        try:
            doc: Any = json.loads(event.data)
        except (ValueError, RecursionError):
            doc = event.data
        if template is None:
            template = doc
        elif isinstance(doc, dict | list):
            text = get_path(doc, path)
            if isinstance(text, str) and text and not _finishes(doc):
                continue  # its text is in the guarded text
            if isinstance(text, str):
                set_path(doc, path, "")
            rest.append(doc)
    first: Any = None
    if isinstance(template, dict | list):
        parent = get_path(template, path[:-1]) if path[:-1] else template
        if (isinstance(parent, dict) and isinstance(path[-1], str)) or get_path(
            template, path
        ) is not MISSING:
            set_path(template, path, verdict.text)
            first = template
    carrier = next((d for d in reversed([first, *rest]) if isinstance(d, dict)), None)
    as_event = decision_field is not None and (how == "event" or carrier is None)
    if decision_field is not None and not as_event and carrier is not None:
        carrier[decision_field] = verdict.to_json()
    out: list[str] = []
    if first is not None:
        out.append("data: " + json.dumps(first, ensure_ascii=False))
    else:
        out.append("\n".join("data: " + line for line in verdict.text.split("\n")))
    out.extend("data: " + json.dumps(doc, ensure_ascii=False) for doc in rest)
    if as_event:
        out.append(f"event: {decision_field}\ndata: " + json.dumps(verdict.to_json(), ensure_ascii=False))
    if done:
        out.append("data: [DONE]")
    return ("\n\n".join(out) + "\n\n").encode()
