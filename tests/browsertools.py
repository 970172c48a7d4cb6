"""What the browser tests share: the headless chromium they drive (Debian's, through Playwright),
the guard they drive it against (served by uvicorn on a loopback port, on real PostgreSQL), and the
steps they all take (a page of its own, signing in, calling the API, waiting).

One browser serves a browser test module: ``tests/conftest.py``'s module-scoped ``browser`` fixture
starts it the first time a test of the module asks for it and closes it after the module
(Playwright's sync API runs an event loop in the main thread while it lives, which later tests'
asyncio.run() cannot share); each test opens its own context (cookies, viewport) in it. In CI
(CI=true) a browser that cannot start fails the test; elsewhere it skips."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from guard.admin.queries import AdminQueries
from guard.store import Store, migrate
from tests.apptools import ADMIN_PASSWORD, make_users, served_guard

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def launched() -> Iterator[Any]:
    """A started chromium, closed (and Playwright stopped) when the generator is closed."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable(f"playwright is not installed: {exc}")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        except Exception as exc:
            unavailable(f"chromium cannot start from {CHROMIUM}: {exc}")
        try:
            yield b
        finally:
            b.close()


# -- the guard they drive ------------------------------------------------------------------------

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
PASSWORD = ADMIN_PASSWORD
"""The password of every user ``served`` makes."""


@contextmanager
def served(pg_url: str, users: Mapping[str, str], *, secret_key: str) -> Iterator[tuple[str, Store]]:
    """The guard on the PostgreSQL database ``pg_url`` (migrated, fake scorer) served by uvicorn
    on a loopback port, with ``users`` (name: role, each with ``PASSWORD``): its base URL, and a
    ``Store`` of the test's own over the same database."""
    migrate(pg_url)
    store = Store.open(pg_url)
    try:
        make_users(AdminQueries(store.engine), users)
        with served_guard(pg_url, secret_key=secret_key) as (base, _runtime):
            yield base, store
    finally:
        store.close()


@pytest.fixture
def server(pg_url: str) -> Iterator[tuple[str, Store]]:
    """The served guard most browser modules drive: sam (a supervisor) and olga (a policy owner)."""
    with served(pg_url, {"sam": "supervisor", "olga": "policy_owner"}, secret_key="e2e-secret") as found:
        yield found


# -- the steps they take -------------------------------------------------------------------------


def new_page(
    browser: Any, *, width: int = 1280, height: int = 900, errors: list[str] | None = None, **options: Any
) -> tuple[Any, Any]:
    """A browser context of its own (cookies, a ``width`` x ``height`` viewport, Playwright's
    context ``options``) and a page in it, whose console errors are appended to ``errors`` when it
    is given."""
    context = browser.new_context(viewport={"width": width, "height": height}, **options)
    page = context.new_page()
    if errors is not None:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return context, page


def sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/admin/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def api(base: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET ``path`` (or POST ``body`` as JSON) on the served guard; the JSON it answers."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
