"""The headless chromium the browser tests drive (Debian's, through Playwright). One browser serves
a browser test module: ``tests/conftest.py``'s module-scoped ``browser`` fixture starts it the first
time a test of the module asks for it and closes it after the module (Playwright's sync API runs an
event loop in the main thread while it lives, which later tests' asyncio.run() cannot share); each
test opens its own context (cookies, viewport) in it. In CI (CI=true) a
browser that cannot start fails the test; elsewhere it skips."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

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
