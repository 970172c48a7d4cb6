"""Shared fixtures. Real Redis and PostgreSQL on 127.0.0.1: in CI (CI=true) a test that cannot
reach them fails; elsewhere it skips."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from argon2 import PasswordHasher

from guard.admin import auth
from tests.apptools import chat_upstream

REDIS_URL = os.environ.get("GUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
PG_ADMIN_DSN = os.environ.get("GUARD_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
SHARED_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dev"
OWN_CASES = Path(__file__).resolve().parent / "data" / "cases_own.jsonl"


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        client.ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def pg_server() -> str:
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        _unavailable("PostgreSQL", exc)
    return PG_ADMIN_DSN


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with pg_database(pg_server) as url:
        yield url


@contextmanager
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (its SQLAlchemy URL), dropped afterwards: ``pg_url`` for
    fixtures of a wider scope (tests/test_replicas.py shares one between its guard processes)."""
    name = f"guard_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(pg_server)
    user, host, port = (
        params.get("user", "postgres"),
        params.get("host", "127.0.0.1"),
        params.get("port", 5432),
    )
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 with test-sized cost: the same code path, a fraction of the time (a module's every
    test: ``pytestmark = pytest.mark.usefixtures("cheap_hashes")``)."""
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'guard.db'}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless chromium for one browser test module (tests/browsertools.py). Not session-wide:
    Playwright's sync API keeps an event loop running in the main thread while it lives, and the
    tests after it call asyncio.run()."""
    from tests.browsertools import launched

    yield from launched()


@pytest.fixture(scope="module")
def upstream(request: pytest.FixtureRequest) -> Iterator[str]:
    """A model server scripted by the test module: its ``upstream_chat(request)`` handler served as
    ``POST /v1/chat/completions`` (real uvicorn); the base URL ``GUARD_UPSTREAM_URL`` takes."""
    with chat_upstream(request.module.upstream_chat) as url:
        yield url
