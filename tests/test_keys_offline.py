"""A guard restarted while PostgreSQL is down serves with its keys as the running guard did: a real
`guard serve` started behind a cut TCP proxy answers with the keys of its local copy, and a key
revoked while the previous guard ran stays revoked."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx2
import pytest

from guard.app import create_app
from guard.keys import create_key
from guard.settings import Settings
from guard.store import Store, migrate
from tests.fakes import FakeScorer
from tests.serving import closed_port, guard_serve, serve, serve_env
from tests.test_faults import logged, proxied, wait_for

pytestmark = pytest.mark.integration


def _check(base: str, key: str) -> httpx2.Response:
    return httpx2.post(
        base + "/v1/guard",
        json={"question": "口袋开线怎么办？", "reply": "我们会处理"},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_guard_started_while_postgres_is_down_serves_its_keys(pg_url: str, tmp_path: Path) -> None:
    migrate(pg_url)
    proxy, url = proxied(pg_url)
    spool = tmp_path / "spool"
    store = Store.open(pg_url)
    try:
        kept = create_key(store, "shop")
        revoked = create_key(store, "shop")
        with serve(
            create_app(
                Settings(database_url=url, spool_dir=str(spool), auth="required", ocr="off"),
                scorer=FakeScorer(),
            )
        ) as base:
            assert _check(base, kept).status_code == 200
            assert _check(base, revoked).status_code == 200
            assert store.revoke_api_key(revoked.split("_")[1])
        (copy,) = spool.glob("keys-*.json")
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert kept not in copy.read_text(), "only hashes are kept"
    finally:
        store.close()

    proxy.cut()  # PostgreSQL is down from here on
    port = closed_port()
    env = serve_env(url, spool, GUARD_AUTH="required", GUARD_SQL_TIMEOUT_S="1")
    try:
        with guard_serve(env, port, tmp_path / "guard.log"):
            base = f"http://127.0.0.1:{port}"
            answered = _check(base, kept)
            assert answered.status_code == 200, answered.text
            assert answered.json()["policy"]["channel"] in ("shop", "default")
            assert _check(base, revoked).status_code == 401, "a revoked key stays revoked"
            assert _check(base, "rg_0123456789abcdef_" + "x" * 43).status_code == 401
            proxy.mend()  # and the decision made meanwhile reaches SQL
            decision_id = answered.json()["decision_id"]
            wait_for(lambda: decision_id in logged(pg_url), 30, "the decision to reach SQL")
    finally:
        proxy.close()
