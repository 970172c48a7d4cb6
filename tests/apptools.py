"""Helpers to run the guard app in tests: migrated database, fake or real scorer, flushing the log."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from guard.admin.queries import AdminQueries
from guard.admin.routes import Admin
from guard.app import create_app
from guard.runtime import OutcomeHook, Runtime, runtime
from guard.scoring.base import Scorer
from guard.settings import Settings
from guard.store import migrate
from tests.fakes import FakeScorer


@contextmanager
def guard_client(
    database_url: str,
    scorer: Scorer | None = None,
    *,
    on_outcome: OutcomeHook | None = None,
    **overrides: Any,
) -> Iterator[TestClient]:
    migrate(database_url)
    settings = Settings(database_url=database_url, **overrides)
    app = create_app(settings, scorer=scorer or FakeScorer(), on_outcome=on_outcome)
    # A loopback client: with no API key created, a loopback guard serves it without one (guard/keys.py).
    with TestClient(app, raise_server_exceptions=False, client=("127.0.0.1", 50000)) as client:
        yield client


def runtime_of(client: TestClient) -> Runtime:
    """The running guard of a TestClient (its lifespan state)."""
    return runtime({"state": client.app_state})


def queries_of(client: TestClient) -> AdminQueries:
    """The admin pages' queries of a TestClient's guard (over the runtime's database)."""
    admin = client.app_state["admin"]
    assert isinstance(admin, Admin)
    return admin.queries


class KeepsState:
    """An ASGI app around ``app`` that keeps its lifespan state, for tests that serve it with uvicorn."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.state = scope.setdefault("state", {})
        await self.app(scope, receive, send)

    @property
    def runtime(self) -> Runtime:
        return runtime({"state": self.state})


def flush(client: TestClient) -> None:
    """Wait until every decision so far is written to SQL."""
    assert client.portal is not None
    client.portal.call(runtime_of(client).decision_log.flush)


def png_bytes(size: tuple[int, int] = (32, 24), color: str = "red", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
