"""Helpers to run the guard app in tests: migrated database, fake or real scorer, flushing the log,
the guard and a scripted model server served by real uvicorn servers."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from openai import OpenAI
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from guard.admin import auth
from guard.admin.queries import AdminQueries
from guard.admin.records import Case
from guard.admin.routes import Admin
from guard.app import create_app
from guard.keys import create_key
from guard.runtime import OutcomeHook, Runtime, runtime
from guard.scoring.base import Scorer
from guard.settings import Settings
from guard.store import Store, migrate
from tests.fakes import FakeScorer
from tests.serving import serve


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


def new_key(database_url: str, channel: str = "default") -> str:
    """A new API key of ``channel``, created in the (migrated) database through a Store of its own."""
    store = Store.open(database_url)
    try:
        return create_key(store, channel)
    finally:
        store.close()


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


# -- the guard and an upstream model server, served for real (the proxy's tests) -----------------


@contextmanager
def served_guard(database_url: str, **overrides: Any) -> Iterator[tuple[str, Runtime]]:
    """The guard (fake scorer, migrated database, settings ``overrides``) served by uvicorn:
    its base URL and its runtime."""
    migrate(database_url)
    app = KeepsState(create_app(Settings(database_url=database_url, **overrides), scorer=FakeScorer()))
    with serve(app) as base:
        yield base, app.runtime


@contextmanager
def chat_upstream(handler: Callable[[Request], Awaitable[Response]]) -> Iterator[str]:
    """A model server whose ``POST /v1/chat/completions`` is ``handler``, served by uvicorn: its
    base URL (``http://127.0.0.1:<port>/v1``, what ``GUARD_UPSTREAM_URL`` takes)."""
    app = Starlette(routes=[Route("/v1/chat/completions", handler, methods=["POST"])])
    with serve(app) as base:
        yield base + "/v1"


def sse_data(doc: Any) -> bytes:
    """One server-sent event carrying ``doc`` as JSON: a chunk of a streamed chat completion."""
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
"""The event that ends an OpenAI-style stream."""


def openai_client(base: str, key: str = "sk-client", *, timeout: float = 10) -> OpenAI:
    """The openai SDK pointed at a guard (or a guarded app) served at ``base``, without retries."""
    return OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=timeout)


ADMIN_PASSWORD = "correct horse battery"
"""The password the admin tests give their users."""
ADMIN_ROLES = {"sup": "supervisor", "owner": "policy_owner", "boss": "admin"}
"""The users most admin tests sign in as: one of each role."""
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_users(queries: AdminQueries, users: Mapping[str, str] = ADMIN_ROLES) -> None:
    """Create ``users`` (name: role), each with ``ADMIN_PASSWORD``."""
    for name, role in users.items():
        queries.create_user(name, auth.hash_password(ADMIN_PASSWORD), role, actor="test")


def agree_with_all(queries: AdminQueries, cases: list[Case], actor: str) -> None:
    """Supervisor ``actor`` agrees with the guard on every case: an audit item is marked right, a
    review approved as it is, an escalation taken over."""
    for case in cases:
        if case.item.kind == "audit":
            assert queries.mark_audit(case.item.id, "right", None, actor)
        else:
            state = "approved" if case.item.kind == "review" else "taken_over"
            assert queries.resolve_case(case.item.id, state, actor, final_reply="x", note=None)


def login(client: Any, username: str, password: str = ADMIN_PASSWORD) -> Any:
    """Post the admin sign-in form (with the login page's CSRF token); the response, not followed."""
    token = CSRF.search(client.get("/admin/login").text)
    assert token is not None
    return client.post(
        "/admin/login",
        data={"username": username, "password": password, "csrf_token": token.group(1), "next": "/admin/"},
        follow_redirects=False,
    )


def signed_in(client: Any, username: str) -> str:
    """Sign ``username`` in; returns the session's CSRF token."""
    r = login(client, username)
    assert r.status_code == 303, r.text
    found = CSRF.search(client.get("/admin/dashboard").text)
    assert found is not None
    return found.group(1)
