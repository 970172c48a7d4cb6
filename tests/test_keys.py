"""API keys: created by the CLI, stored as hashes, bound to a channel, required on /v1/*."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from guard.app import create_app
from guard.errors import ConfigError
from guard.keys import create_key, hash_key, is_loopback_host
from guard.settings import Settings
from guard.store import Store, migrate
from guard.tables import ApiKey
from tests.apptools import b64, flush, guard_client, png_bytes, runtime_of
from tests.fakes import FakeScorer

ROOT = Path(__file__).resolve().parents[1]
ROUTES = [
    ("/v1/guard", {"question": "q", "reply": "r"}),
    ("/v1/images", {"image": {"data": b64(png_bytes())}}),
    ("/v1/rerank", {"query": "q", "documents": ["a"]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "q"}]}),
]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.8.0.1", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("::", False),
        ("example.com", False),
        (None, False),
    ],
)
def test_loopback_hosts(host: str | None, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_once_a_key_exists_every_v1_route_needs_one(
    sqlite_url: str, path: str, body: dict[str, object]
) -> None:
    with guard_client(sqlite_url) as client:
        key = create_key(runtime_of(client).store, "default")
        runtime_of(client).keys._any = None  # forget "no keys yet" at once
        missing = client.post(path, json=body)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        assert "guard keys create" in missing.json()["error"]["message"]
        wrong = client.post(path, json=body, headers={"authorization": f"Bearer {key[:-2]}xx"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
        ok = client.post(path, json=body, headers={"authorization": f"Bearer {key}"})
        assert ok.status_code != 401, ok.text
        ok = client.post(path, json=body, headers={"x-guard-key": key})
        assert ok.status_code != 401, ok.text
        assert client.get("/healthz").status_code == 200, "health checks need no key"


def test_keys_are_stored_only_as_hashes_and_revocable(sqlite_url: str) -> None:
    migrate(sqlite_url)
    store = Store.open(sqlite_url)
    try:
        key = create_key(store, "shop", "web widget")
        key_id = key.split("_")[1]
        with store.session() as s:
            (row,) = s.scalars(select(ApiKey))
        assert row.key_hash == hash_key(key) and key not in (row.key_hash, row.id, row.name)
        assert store.api_key(key_id) == ("shop", hash_key(key))
        assert store.revoke_api_key(key_id) and store.api_key(key_id) is None
        assert not store.revoke_api_key(key_id)
    finally:
        store.close()


def test_without_keys_only_loopback_clients_of_a_loopback_guard_go_without(sqlite_url: str) -> None:
    migrate(sqlite_url)
    body = {"question": "q", "reply": "fine [score=0.9]"}
    app = create_app(Settings(database_url=sqlite_url), scorer=FakeScorer())
    with TestClient(app, client=("127.0.0.1", 5000)) as client:
        assert client.post("/v1/guard", json=body).status_code == 200
    with TestClient(app, client=("192.168.1.20", 5000)) as client:
        assert client.post("/v1/guard", json=body).status_code == 401
    required = create_app(Settings(database_url=sqlite_url, auth="required"), scorer=FakeScorer())
    with TestClient(required, client=("127.0.0.1", 5000)) as client:
        assert client.post("/v1/guard", json=body).status_code == 401


def test_a_guard_on_a_public_address_makes_a_key_on_first_start(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrate(sqlite_url)
    settings = Settings(database_url=sqlite_url, host="0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="guard.runtime"):
        with TestClient(create_app(settings, scorer=FakeScorer()), client=("127.0.0.1", 1)) as client:
            assert client.post("/v1/guard", json={"question": "q", "reply": "r"}).status_code == 401
        with TestClient(create_app(settings, scorer=FakeScorer()), client=("127.0.0.1", 1)):
            pass
    printed = [r.getMessage() for r in caplog.records if "rg_" in r.getMessage()]
    assert len(printed) == 1, "printed once, on the first start only"
    key = printed[0].split()[-1]
    with TestClient(create_app(settings, scorer=FakeScorer()), client=("203.0.113.9", 1)) as client:
        resp = client.post(
            "/v1/guard", json={"question": "q", "reply": "r"}, headers={"authorization": f"Bearer {key}"}
        )
        assert resp.status_code == 200


def test_an_unknown_auth_mode_is_refused(sqlite_url: str) -> None:
    migrate(sqlite_url)
    app = create_app(Settings(database_url=sqlite_url, auth="none"), scorer=FakeScorer())
    with pytest.raises(ConfigError, match="GUARD_AUTH='none' is not one of auto, required"), TestClient(app):
        pass


def test_cli_creates_lists_and_revokes_keys(sqlite_url: str) -> None:
    migrate(sqlite_url)
    env = {**os.environ, "GUARD_DATABASE_URL": sqlite_url}

    def guard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "guard.cli", *args], env=env, capture_output=True, text=True, timeout=60
        )

    created = guard("keys", "create", "--channel", "shop", "--name", "widget")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("rg_") and "shown only now" in created.stderr
    listed = guard("keys", "list")
    key_id = key.split("_")[1]
    assert key_id in listed.stdout and "channel='shop'" in listed.stdout and key not in listed.stdout
    assert guard("keys", "revoke", key_id).returncode == 0
    assert "revoked" in guard("keys", "list").stdout
    assert guard("keys", "revoke", key_id).returncode == 1


def test_a_key_decides_for_its_own_channel_only(sqlite_url: str) -> None:
    with guard_client(sqlite_url) as client:
        key = create_key(runtime_of(client).store, "vip")
        runtime_of(client).keys._any = None
        headers = {"authorization": f"Bearer {key}"}
        body = {"question": "q", "reply": "fine [score=0.8]"}
        ok = client.post("/v1/guard", json=body, headers=headers)
        assert ok.status_code == 200, ok.text
        flush(client)
        row = runtime_of(client).store.get_decision(ok.json()["decision_id"])
        assert row is not None and row.row.channel == "vip", "the key's channel, not the default"
        same = client.post("/v1/guard", json=body | {"channel": "vip"}, headers=headers)
        assert same.status_code == 200
        other = client.post("/v1/guard", json=body | {"channel": "default"}, headers=headers)
        assert other.status_code == 403 and other.json()["error"]["code"] == "channel_forbidden"
        rerank = client.post(
            "/v1/rerank", json={"query": "q", "documents": ["a"], "channel": "default"}, headers=headers
        )
        assert rerank.status_code == 403
