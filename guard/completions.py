"""The customer-visible text of a chat completion, plain or streamed, and putting the guarded text back.

What the customer would see of an assistant message is its ``content`` (a string, or a list of
``text`` parts) and its ``refusal``; both are guarded, in every choice. Tool calls
(``tool_calls``, the older ``function_call``) are not text the customer reads: they pass through
as they came, beside the guarded text. Any other field of the message or of a stream's deltas
(``audio``, ``reasoning_content``, ...) is dropped, so nothing the guard did not decide on
reaches the customer. Pure functions over the JSON documents; the proxy does the HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from guard.errors import UpstreamError

PASSED_ON = ("tool_calls", "function_call")
"""Message and delta fields that pass through unguarded: they are not text the customer reads."""


def malformed(what: str) -> UpstreamError:
    return UpstreamError("upstream_malformed", f"the upstream answer is not a chat completion ({what})")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(t for t in parts if isinstance(t, str))
    raise malformed("a message's content is neither text nor a list of parts")


def _refusal_text(refusal: Any) -> str:
    if refusal is None:
        return ""
    if isinstance(refusal, str):
        return refusal
    raise malformed("a refusal is not text")


@dataclass(frozen=True)
class Visible:
    """The customer-visible text of one choice: its content and its refusal."""

    content: str
    refusal: str

    @property
    def text(self) -> str:
        """What is guarded: the content and the refusal, one after the other."""
        return "\n".join(t for t in (self.content, self.refusal) if t.strip())

    def fields(self, guarded: str) -> dict[str, Any]:
        """Where the guarded text goes: in ``refusal`` when only the refusal had text, else in
        ``content`` (and a refusal guarded with it is cleared)."""
        if not self.content.strip() and self.refusal.strip():
            return {"content": None, "refusal": guarded}
        return {"content": guarded, "refusal": None}


def plain_choices(doc: Any) -> list[dict[str, Any]]:
    """The choices of a plain completion, each checked to have a message."""
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list) or not doc["choices"]:
        raise malformed("no choices")
    for choice in doc["choices"]:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise malformed("a choice without a message")
    return list(doc["choices"])


def plain_visible(choice: Mapping[str, Any]) -> Visible:
    message = choice["message"]
    return Visible(_content_text(message.get("content")), _refusal_text(message.get("refusal")))


def rewrite_plain(choice: dict[str, Any], visible: Visible, guarded: str | None) -> None:
    """Put the guarded text into the choice's message (None: it has no visible text, and keeps its
    empty content); keep its role and tool calls, drop the rest."""
    message = choice["message"]
    kept = {k: message[k] for k in ("role", "content", "refusal", *PASSED_ON) if k in message}
    choice["message"] = kept if guarded is None else {**kept, **visible.fields(guarded)}


@dataclass
class StreamedChoice:
    """One choice of a stream, as read: its text, and its tool-call deltas in order."""

    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    passed_on: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def visible(self) -> Visible:
        return Visible("".join(self.content), "".join(self.refusal))


@dataclass
class StreamRead:
    """What was read from an upstream stream."""

    first: dict[str, Any] | None = None
    choices: dict[int, StreamedChoice] = field(default_factory=dict)
    usage_chunk: dict[str, Any] | None = None
    done: bool = False

    @property
    def finished(self) -> bool:
        return self.done or any(c.finish_reason for c in self.choices.values())

    def take(self, data: str) -> None:
        """Take one ``data:`` payload (a chunk)."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            raise malformed("a stream chunk is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
            raise malformed("a stream chunk without choices")
        if self.first is None:
            self.first = doc
        if not doc["choices"] and doc.get("usage") is not None:
            self.usage_chunk = doc
        for choice in doc["choices"]:
            self._take_choice(choice)

    def _take_choice(self, choice: Any) -> None:
        if not isinstance(choice, dict):
            raise malformed("a malformed choice")
        index = choice.get("index", 0)
        delta = choice.get("delta") or {}
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(delta, dict):
            raise malformed("a malformed choice")
        got = self.choices.setdefault(index, StreamedChoice())
        got.content.append(_content_text(delta.get("content")))
        got.refusal.append(_refusal_text(delta.get("refusal")))
        passed = {k: delta[k] for k in PASSED_ON if delta.get(k)}
        if passed:
            got.passed_on.append(passed)
        if choice.get("finish_reason"):
            got.finish_reason = str(choice["finish_reason"])


def rewrite_stream(
    read: StreamRead, guarded: Mapping[int, tuple[str, dict[str, Any]]], summary: dict[str, Any]
) -> bytes:
    """The stream the client gets: per choice, the role, the guarded text in one delta, the tool-call
    deltas as they came, and a chunk with the finish reason (with the choice's own decision as
    ``guard`` when several choices were guarded); the last chunk carries ``summary`` as its ``guard``
    field, as a plain completion does; then the usage chunk and ``[DONE]``. ``guarded``: per choice
    index, the text the customer sees and its decision."""
    first = read.first or {}
    keep = ("id", "object", "created", "model", "system_fingerprint")
    base: dict[str, Any] = {k: first[k] for k in keep if k in first}

    def chunk(choice: dict[str, Any], **top: Any) -> bytes:
        doc = {**base, "choices": [choice], **top}
        return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"

    out: list[bytes] = []
    indexes = sorted(read.choices)
    for index in indexes:
        got = read.choices[index]
        out.append(
            chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        )
        if index in guarded:
            text, _ = guarded[index]
            delta = {k: v for k, v in got.visible.fields(text).items() if v is not None}
            out.append(chunk({"index": index, "delta": delta, "finish_reason": None}))
        out.extend(chunk({"index": index, "delta": d, "finish_reason": None}) for d in got.passed_on)
        finish: dict[str, Any] = {"index": index, "delta": {}, "finish_reason": got.finish_reason or "stop"}
        if len(guarded) > 1 and index in guarded:
            finish["guard"] = guarded[index][1]
        out.append(chunk(finish, guard=summary) if index == indexes[-1] else chunk(finish))
    if read.usage_chunk is not None:
        out.append(b"data: " + json.dumps(read.usage_chunk, ensure_ascii=False).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)
