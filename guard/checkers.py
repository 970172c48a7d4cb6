"""How the middleware reaches the guard, and what it gets back.

A :class:`Checker` takes the parts of the customer's request (:class:`RequestParts`) and the
chatbot's draft and answers a :class:`Verdict`: :class:`LocalGuard` runs the guard in-process
(it opens the same ``Runtime`` as ``guard serve``), :class:`HttpChecker` calls a guard server.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

import httpx2
from starlette.types import Scope

from guard.edge_text import fitted, repaired
from guard.errors import ImageError, Unavailable
from guard.images import DecodedImage
from guard.pipeline import CheckRequest, CheckResult, Pipeline
from guard.runtime import Runtime
from guard.scoring.base import Scorer
from guard.settings import Settings


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
    queue_item_id: str | None = None
    """The queue item of a held decision (the API's ``escalation_id``)."""
    follow_up: str | None = None
    degraded: bool = False
    reason: str | None = None
    uncertain_reason: str | None = None
    """Why the guard could not judge the case (the photo carries the issue), or None."""
    durable: bool = True
    """The decision was in the guard's spool before it answered (False: in memory only)."""

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Verdict:
        text = body.get("reply") if body.get("reply") is not None else body.get("holding_message")
        return cls(
            action=str(body["action"]),
            text=str(text or ""),
            decision_id=body.get("decision_id"),
            score=body.get("score"),
            queue_item_id=body.get("escalation_id"),
            follow_up=body.get("follow_up"),
            degraded=bool(body.get("degraded")),
            reason=body.get("reason"),
            uncertain_reason=body.get("uncertain_reason") if body.get("uncertain") else None,
            durable=body.get("durable") is not False,
        )

    @classmethod
    def from_result(cls, result: CheckResult) -> Verdict:
        return cls.from_json(result.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "decision_id": self.decision_id,
            "action": self.action,
            "score": self.score,
            "escalation_id": self.queue_item_id,
            "follow_up": self.follow_up,
            "degraded": self.degraded,
            "reason": self.reason,
            "uncertain": self.uncertain_reason is not None,
            "uncertain_reason": self.uncertain_reason,
            "durable": self.durable,
        }


class CheckerError(Exception):
    """The guard could not be asked (server down, bad answer) or refused the input."""


class Checker(Protocol):
    """How the middleware reaches the guard. ``prepare_image`` starts as soon as the photo is seen."""

    async def prepare_image(self, data: bytes) -> object: ...

    async def check(self, parts: RequestParts, reply: str, image: object | None) -> Verdict: ...


def storable(parts: RequestParts, reply: str) -> tuple[RequestParts, str]:
    """The request and reply as every checker sends them (the middleware cannot refuse a request).

    NUL characters and unpaired surrogates are replaced with U+FFFD; a conversation id or channel
    over its column's limit is cut to it with a hash of the whole (guard/edge_text.py), so the
    decision of any answered request reaches SQL.
    """
    fixed = dataclasses.replace(
        parts,
        question=repaired(parts.question),
        conversation_id=None
        if parts.conversation_id is None
        else fitted(parts.conversation_id, "conversation_id"),
        channel=None if parts.channel is None else fitted(parts.channel, "channel"),
        locale=None if parts.locale is None else repaired(parts.locale),
    )
    return fixed, repaired(reply)


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
        try:
            image = await self.guard.images.decode(data)
        except (ImageError, Unavailable) as exc:
            raise CheckerError(f"the photo is not usable: {exc.message}") from None
        self.guard.start_reading(image)  # its text is read while the app generates
        return image

    async def check(self, parts: RequestParts, reply: str, image: object | None) -> Verdict:
        guard = self.guard
        parts, reply = storable(parts, reply)
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
        parts, reply = storable(parts, reply)
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
