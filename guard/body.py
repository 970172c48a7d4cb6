"""Reading a request body within its limits, and handing a read body on: HTTP plumbing shared by
the check API, the proxy and the middleware (a leaf: it imports only the error tree)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from guard.errors import BadRequest, BodyTimeout, BodyTooLarge


def replay(body: bytes) -> Receive:
    """An ASGI receive that hands over ``body`` (already read) once, then a disconnect."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def read_body(request: Request, limit: int, timeout_s: float | None) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, and (408) when it has
    not all arrived within ``timeout_s`` seconds (GUARD_BODY_TIMEOUT_S; None: no limit)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("invalid_content_length", "Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLarge(
                "body_too_large", f"the request body is {declared} bytes; the limit is {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):  # a slow upload holds a connection at most this long
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(
                        "body_too_large", f"the request body is over the limit of {limit} bytes"
                    )
                chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("client_disconnected", "the client went away before the body was read") from None
    except TimeoutError:
        raise BodyTimeout(
            "body_timeout", f"the request body did not arrive within {timeout_s}s (GUARD_BODY_TIMEOUT_S)"
        ) from None
    return b"".join(chunks)


async def read_form(request: Request, timeout_s: float | None, **limits: Any) -> FormData:
    """``request.form(**limits)``, refused (408) when the body has not all arrived within
    ``timeout_s`` seconds (GUARD_BODY_TIMEOUT_S): the admin pages' forms, the sign-in included."""
    try:
        async with asyncio.timeout(timeout_s):
            return await request.form(**limits)
    except ClientDisconnect:
        raise BadRequest("client_disconnected", "the client went away before the form was read") from None
    except HTTPException as exc:  # Starlette's answer to a malformed or over-limit form
        raise BadRequest("invalid_form", f"The form could not be read: {exc.detail}") from None
    except TimeoutError:
        raise BodyTimeout(
            "body_timeout", f"the form did not arrive within {timeout_s}s (GUARD_BODY_TIMEOUT_S)"
        ) from None


def parse_json(data: bytes | str, what: str = "the body") -> Any:
    """``data`` as JSON, or BadRequest ``invalid_json`` for anything else: bad syntax, bad UTF-8,
    or nesting deeper than Python's parser follows (``[[[[...]]]]`` 100,000 levels deep)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise BadRequest("invalid_json", f"{what} is nested too deeply to read") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("invalid_json", f"{what} is not valid JSON ({exc})") from None
