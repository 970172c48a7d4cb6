"""A guard restarted while PostgreSQL is down serves as the running guard did (issue 12, item 5): a
private PostgreSQL (initdb + pg_ctl, stopped for real); a non-default policy is published while a
served guard runs, PostgreSQL is stopped, and a real `guard serve` process started: it answers
/v1/guard with the published policy's bands (from its local policy copy, 0600 beside the key
copy), and the decision reaches SQL once PostgreSQL is back."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from guard.app import create_app
from guard.policies import parse_policy
from guard.settings import Settings
from guard.store import Store, migrate
from tests.apptools import new_key
from tests.fakes import FakeScorer
from tests.own_postgres import own_postgres
from tests.serving import closed_port, guard_serve, serve, serve_env
from tests.test_faults import logged, metric, wait_for

pytestmark = pytest.mark.integration

SHOP_POLICY = {"on_error": "review", "bands": [{"lo": 0.0, "hi": 1.0, "action": "review"}]}
"""Every draft to review, whatever its score: never what the default policy does with all of them."""


async def _rerank(request: Request) -> Response:
    """A rerank server (the remote scorer's protocol) that scores every document 0.9: the guard
    starts in a second, where the bundled scorer's model takes 10 s to load on a busy machine."""
    doc = await request.json()
    return JSONResponse(
        {"results": [{"index": i, "relevance_score": 0.9} for i in range(len(doc["documents"]))]}
    )


def _check(base: str, key: str) -> httpx2.Response:
    return httpx2.post(
        base + "/v1/guard",
        json={"question": "口袋开线怎么办？", "reply": "我们会为您补寄一条新的"},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_guard_restarted_while_postgres_is_down_decides_under_the_published_policy(tmp_path: Path) -> None:
    started = time.perf_counter()
    port = closed_port()
    spool = tmp_path / "spool"
    rerank = Starlette(routes=[Route("/v1/rerank", _rerank, methods=["POST"])])
    with own_postgres() as pg, serve(rerank) as scorer:
        migrate(pg.url)
        key = new_key(pg.url, "shop")
        env = serve_env(
            pg.url,
            spool,
            GUARD_AUTH="required",
            GUARD_SQL_TIMEOUT_S="1",
            GUARD_SCORER="remote",
            GUARD_REMOTE_URL=scorer + "/v1",
        )
        running = Settings(
            database_url=pg.url, spool_dir=str(spool), auth="required", ocr="off", sql_timeout_s=1
        )
        with serve(create_app(running, scorer=FakeScorer())) as base:  # the guard that ran
            first = _check(base, key).json()
            assert first["policy"] == {"channel": "default", "version": 1}, first  # the seeded default
            store = Store.open(pg.url)
            try:  # published while the guard runs: it reads it within its policy TTL (2 s)
                store.publish_policy(parse_policy(SHOP_POLICY, channel="shop"), author="test")
            finally:
                store.close()
            deadline = time.monotonic() + 15
            while _check(base, key).json()["policy"] != {"channel": "shop", "version": 1}:
                assert time.monotonic() < deadline, "the running guard never read the published policy"
                time.sleep(0.2)
            copies = lambda: list(spool.glob("policies-*.json"))  # noqa: E731
            wait_for(lambda: any('"shop"' in c.read_text() for c in copies()), 10, "the local policy copy")
            (copy,) = copies()
            assert stat.S_IMODE(copy.stat().st_mode) == 0o600
            assert any(spool.glob("keys-*.json")), "beside the key copy"
            wait_for(
                lambda: metric(base, "guard_decision_log_pending") == 0, 10, "the decisions so far in SQL"
            )
            pg.stop()  # PostgreSQL is down from here on, for real
        base = f"http://127.0.0.1:{port}"
        with guard_serve(env, port, tmp_path / "guard.log"):  # restarted during the outage: a process
            t = time.perf_counter()
            answered = _check(base, key)
            took = time.perf_counter() - t
            assert answered.status_code == 200, answered.text
            body = answered.json()
            assert body["policy"] == {"channel": "shop", "version": 1}, (
                "the published policy, not the default"
            )
            assert (body["action"], body["band"]) == ("review", "[0.0,1.0]")
            assert body["durable"] is True and body["escalation_id"]
            assert httpx2.get(base + "/readyz", timeout=10).json()["checks"]["sql"] is False
            pg.start()  # back: the decision made meanwhile reaches SQL
            wait_for(lambda: body["decision_id"] in logged(pg.url), 30, "the decision to reach SQL")
            assert logged(pg.url)[body["decision_id"]] == ("review", 1)
        print(f"answered during the outage in {took:.2f}s; whole test {time.perf_counter() - started:.1f}s")
