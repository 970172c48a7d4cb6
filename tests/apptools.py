"""Helpers to run the guard app in tests: migrated database, fake or real scorer, flushing the log."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image
from starlette.testclient import TestClient

from guard.app import GuardApp, create_app
from guard.scoring.base import Scorer
from guard.settings import Settings
from guard.store import migrate
from tests.fakes import FakeScorer


@contextmanager
def guard_client(database_url: str, scorer: Scorer | None = None, **overrides: Any) -> Iterator[TestClient]:
    migrate(database_url)
    settings = Settings(database_url=database_url, **overrides)
    app = create_app(settings, scorer=scorer or FakeScorer())
    # A loopback client: with no API key created, a loopback guard serves it without one (guard/keys.py).
    with TestClient(app, raise_server_exceptions=False, client=("127.0.0.1", 50000)) as client:
        yield client


def guard_app(client: TestClient) -> GuardApp:
    app: GuardApp = client.app.state.guard_app  # type: ignore[attr-defined]
    return app


def flush(client: TestClient) -> None:
    """Wait until every decision so far is written to SQL."""
    assert client.portal is not None
    client.portal.call(guard_app(client).decision_log.flush)


def png_bytes(size: tuple[int, int] = (32, 24), color: str = "red", fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
