"""The API-key check in front of every ``/v1/`` route (pure ASGI): a valid key, sent as
``Authorization: Bearer <key>`` or ``X-Guard-Key: <key>``, binds the request to its channel
(``scope["state"]["guard_channel"]``). The keys themselves are in ``guard.keys``."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from guard.errors import Unauthorized
from guard.keys import PROTECTED_PREFIX, KeysUnavailable, presented_key
from guard.responses import send_error
from guard.runtime import runtime


def _has_header(scope: Scope, name: bytes) -> bool:
    return any(n == name for n, _ in scope.get("headers", ()))


class AuthMiddleware:
    """Pure ASGI: a valid key (``Authorization: Bearer`` or ``X-Guard-Key``) on every ``/v1/`` route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        keys = runtime(scope).keys
        key = presented_key(scope)
        state = scope.setdefault("state", {})
        try:
            if key is not None and (key.startswith("rg_") or _has_header(scope, b"x-guard-key")):
                channel = await keys.channel_of(key)
                if channel is None:
                    await send_error(
                        send,
                        Unauthorized(
                            "unauthorized", "the API key is not valid (unknown, revoked or mistyped)"
                        ),
                    )
                    return
                state["guard_channel"] = channel
                state["guard_key"] = key
            elif await keys.open_to(scope):
                # No guard key yet: a bearer token that is not one is the client's upstream key (proxy).
                state["guard_channel"] = None
            else:
                await send_error(
                    send,
                    Unauthorized(
                        "unauthorized",
                        "a guard API key is required: send 'Authorization: Bearer <key>' or "
                        "'X-Guard-Key: <key>' (create one with: guard keys create --channel NAME)",
                    ),
                )
                return
        except KeysUnavailable as exc:
            await send_error(send, exc)
            return
        await self.app(scope, receive, send)
