"""The error tree written as the documented JSON ``{"error": {"code": ..., "message": ...}}``:
the exception handlers the app installs, and the raw ASGI form for pure middleware."""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Send

from guard.errors import GuardError, Unauthorized

log = logging.getLogger(__name__)

HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}
"""Codes for Starlette's own refusals (no route, wrong method); any other is ``http_error``."""


def error_response(exc: GuardError) -> JSONResponse:
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def guard_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GuardError)
    return error_response(exc)


async def http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    body = {"error": {"code": code, "message": str(exc.detail)}}
    return JSONResponse(body, status_code=exc.status_code)


async def unexpected(_request: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return error_response(GuardError("internal_error", "the guard failed unexpectedly; the error is logged"))


EXCEPTION_HANDLERS = {GuardError: guard_error, HTTPException: http_error, Exception: unexpected}


async def send_error(send: Send, exc: GuardError) -> None:
    """Answer with ``exc`` from pure ASGI code (before any route runs)."""
    body = json.dumps(exc.to_json()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b'Bearer realm="reply-guard"'))
    else:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
