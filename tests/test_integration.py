"""The guard against real PostgreSQL and real Redis, as in production."""

from __future__ import annotations

import pytest
import redis
from sqlalchemy import select

from guard.cache import KEY_PREFIX
from guard.tables import Decision, QueueItem
from tests.apptools import b64, flush, guard_client, png_bytes, runtime_of
from tests.fakes import FakeScorer

pytestmark = pytest.mark.integration


def test_all_four_actions_logged_in_postgres_with_redis_cache(pg_url: str, redis_url: str) -> None:
    scorer = FakeScorer()
    with guard_client(pg_url, scorer, redis_url=redis_url) as client:
        actions = {}
        for score in (0.9, 0.55, 0.45, 0.2):
            resp = client.post(
                "/v1/guard",
                json={
                    "conversation_id": f"pg-{score}",
                    "question": "The box arrived crushed and the mug inside is cracked.",
                    "reply": f"draft [score={score}]",
                    "image": {"data": b64(png_bytes())},
                },
            )
            assert resp.status_code == 200, resp.text
            actions[resp.json()["action"]] = resp.json()
        assert set(actions) == {"send", "follow_up", "review", "escalate"}

        again = client.post(
            "/v1/guard",
            json={
                "question": "The box arrived crushed and the mug inside is cracked.",
                "reply": "draft [score=0.9]",
                "image": {"data": b64(png_bytes())},
            },
        ).json()
        assert again["cached"] is True and again["action"] == "send"
        assert scorer.calls == 4, "the repeat came from Redis"
        keys = redis.Redis.from_url(redis_url).keys(KEY_PREFIX + "*")
        assert len(keys) >= 4

        flush(client)
        with runtime_of(client).store.session() as s:
            decisions = list(s.scalars(select(Decision)))
            items = list(s.scalars(select(QueueItem)))
        assert len(decisions) == 5
        # the held ones; an answered one may also be copied for audit (sampled by decision id)
        assert sorted(i.kind for i in items if i.kind != "audit") == ["escalate", "review"]
        assert all(i.state == "pending" for i in items)
        assert {d.action for d in decisions} == {"send", "follow_up", "review", "escalate"}
        assert all(d.image_sha256 and d.policy_version == 1 for d in decisions)
        assert runtime_of(client).store.get_image(decisions[0].image_sha256 or "") is not None


def test_the_cache_survives_a_restart_when_it_is_redis(sqlite_url: str, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    scorer = FakeScorer()
    body = {"question": "Why was I charged twice?", "reply": "We refunded the duplicate $42.78 [score=0.93]"}
    with guard_client(sqlite_url, scorer, redis_url=redis_url) as client:
        assert client.post("/v1/guard", json=body).json()["cached"] is False
    with guard_client(sqlite_url, scorer, redis_url=redis_url) as client:
        assert client.post("/v1/guard", json=body).json()["cached"] is True
    assert scorer.calls == 1


def test_a_dead_redis_costs_the_request_nothing(sqlite_url: str) -> None:
    with guard_client(sqlite_url, FakeScorer(), redis_url="redis://127.0.0.1:1/0") as client:
        resp = client.post("/v1/guard", json={"question": "q", "reply": "fine [score=0.8]"})
        assert resp.status_code == 200 and resp.json()["action"] == "send"
        ready = client.get("/readyz").json()
        assert ready["ready"] is True and ready["checks"]["cache"] is False
