"""``/metrics`` as Prometheus reads it: parsed with prometheus_client's own parser, every family
typed (counters as counters, histograms, gauges), label values escaped, one registry per app."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from guard.cache import RedisCache
from guard.metrics import Metrics, MiddlewareMetrics
from tests.apptools import guard_client
from tests.promtext import families, sample
from tests.serving import closed_port

TYPES = {
    "guard_decisions": "counter",
    "guard_degraded": "counter",
    "guard_decision_latency_seconds": "histogram",
    "guard_score": "histogram",
    "guard_cache_hits": "counter",
    "guard_cache_misses": "counter",
    "guard_scorer_errors": "counter",
    "guard_scorer_latency_seconds": "histogram",
    "guard_scorer_breaker_open": "gauge",
    "guard_scorer_breaker_opened": "counter",
    "guard_scorer_breaker_rejected": "counter",
    "guard_decision_log_pending": "gauge",
    "guard_decision_log_written": "counter",
    "guard_decision_log_failures": "counter",
    "guard_decision_log_replayed": "counter",
    "guard_decision_log_rejected": "counter",
    "guard_spool_appends": "counter",
    "guard_spool_fsyncs": "counter",
    "guard_spool_errors": "counter",
    "guard_spool_failing": "gauge",
    "guard_unguarded": "counter",
    "guard_webhook_attempts": "counter",
    "guard_webhook_dropped": "counter",
}


def post(client: TestClient, reply: str) -> None:
    resp = client.post("/v1/guard", json={"question": "口袋开线怎么办？", "reply": reply})
    assert resp.status_code == 200, resp.text


def test_metrics_parse_with_prometheus_clients_parser(sqlite_url: str, tmp_path: Path) -> None:
    with guard_client(sqlite_url, spool_dir=str(tmp_path), scorer_breaker_failures=5) as client:
        post(client, "ok [score=0.8]")
        post(client, "ok [score=0.8]")  # a cache hit
        post(client, "fine [score=0.45]")
        post(client, "broken [raise]")
        resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = resp.text
    found = families(text)
    assert {name: found[name].type for name in TYPES if name in found} == TYPES
    assert all(f.type != "unknown" for f in found.values()), "every family has its # TYPE"

    assert sample(text, "guard_decisions_total", action="send", channel="default") == 2
    assert sample(text, "guard_decisions_total", action="review", channel="default") == 1
    assert sample(text, "guard_decisions_total", action="escalate", channel="default") == 1
    assert sample(text, "guard_degraded_total", reason="scorer_unavailable") == 1
    assert sample(text, "guard_scorer_errors_total", kind="RuntimeError") == 1
    assert sample(text, "guard_cache_hits_total") == 1
    assert sample(text, "guard_cache_misses_total") == 3
    # Scores of the decisions that were not degraded, by the channel whose policy decided.
    assert sample(text, "guard_score_count", channel="default") == 3
    assert abs(sample(text, "guard_score_sum", channel="default") - 2.05) < 1e-9
    assert sample(text, "guard_score_bucket", channel="default", le="0.5") == 1
    assert sample(text, "guard_score_bucket", channel="default", le="0.8") == 3
    assert sample(text, "guard_decision_latency_seconds_count") == 4
    assert sample(text, "guard_decision_latency_seconds_bucket", le="+Inf") == 4
    assert sample(text, "guard_scorer_latency_seconds_count") == 3  # the cache hit asked no scorer
    assert sample(text, "guard_scorer_breaker_open") == 0
    assert sample(text, "guard_spool_failing") == 0
    assert sample(text, "guard_spool_appends_total") == 4
    assert sample(text, "guard_decision_log_pending") >= 0


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    nasty = 'a "quoted"\\back\nslash'
    metrics.decisions.labels(action="send", channel=nasty).inc(3)
    text = metrics.render()
    assert '\\"quoted\\"' in text and "\\\\back\\nslash" in text
    assert sample(text, "guard_decisions_total", action="send", channel=nasty) == 3
    assert metrics.value("guard_decisions_total", action="send", channel=nasty) == 3
    assert metrics.value("guard_decisions_total", action="review", channel=nasty) == 0


def test_every_app_and_middleware_has_a_registry_of_its_own() -> None:
    one, two = Metrics(), Metrics()  # the old global registry would refuse the second
    one.cache_hits.inc(2)
    assert one.value("guard_cache_hits_total") == 2 and two.value("guard_cache_hits_total") == 0
    assert not [f for f in prometheus_client.REGISTRY.collect() if f.name.startswith("guard_")]
    host = CollectorRegistry()  # a host app's registry, given to the middleware
    mw = MiddlewareMetrics(host)
    mw.unguarded.labels(reason="not_json").inc()
    text = prometheus_client.generate_latest(host).decode()
    assert sample(text, "guard_middleware_unguarded_total", reason="not_json") == 1
    assert not [s for s in text_string_to_metric_families(text) if s.name == "guard_decisions"]


def test_the_redis_breaker_and_its_errors_are_in_the_metrics() -> None:
    metrics = Metrics()
    cache = RedisCache(f"redis://127.0.0.1:{closed_port()}/0", ttl_s=60, timeout_s=0.2, cooldown_s=30)
    cache.register_metrics(metrics)
    assert metrics.value("guard_cache_breaker_open") == 0

    async def miss() -> None:
        try:
            assert await cache.get("k") is None
            assert await cache.get("k") is None  # skipped: no second error
        finally:
            await cache.close()

    asyncio.run(miss())
    text = metrics.render()
    assert sample(text, "guard_cache_breaker_open") == 1
    assert sample(text, "guard_cache_errors_total") == 1
    assert families(text)["guard_cache_errors"].type == "counter"


WORKER = """
import os, sys, time
from guard.metrics import Metrics

m = Metrics()
assert m.multiprocess == os.environ["PROMETHEUS_MULTIPROC_DIR"]
state = {"written": 0, "open": 0.0, "pending": 0.0}
m.counter_from("guard_decision_log_written_total", "written", lambda: state["written"])
m.gauge_from("guard_scorer_breaker_open", "open", lambda: state["open"], workers="livemax")
m.gauge_from("guard_decision_log_pending", "pending", lambda: state["pending"])
role = sys.argv[1]
for _ in range(int(sys.argv[2])):
    m.decisions.labels(action="send", channel="default").inc()
state["written"], state["open"], state["pending"] = int(sys.argv[2]), float(role == "open"), 3.0
if role == "killed":
    m.publish()
    os._exit(0)  # as kill -9: no close(), its live gauges stay in the folder
if role == "closed":
    m.close()
    sys.exit(0)
m.publish()
print(m.render(), flush=True)
"""


def test_multiprocess_mode_sums_every_worker_and_forgets_the_gauges_of_dead_ones(tmp_path: Path) -> None:
    """What guard serve --workers N sets up (PROMETHEUS_MULTIPROC_DIR): counters and histograms of
    every process, live or dead, add up; gauges count the live processes only."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(role: str, n: int) -> str:
        run = subprocess.run(
            [sys.executable, "-c", WORKER, role, str(n)], env=env, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout

    worker("killed", 5)
    worker("closed", 7)
    text = worker("open", 11)  # rendered by the last process, with the two before it dead
    assert sample(text, "guard_decisions_total", action="send", channel="default") == 23
    assert sample(text, "guard_decision_log_written_total") == 23
    assert sample(text, "guard_scorer_breaker_open") == 1.0  # the one live process's breaker
    # The killed process's backlog is forgotten (its pid is gone), the closed one's was dropped.
    assert sample(text, "guard_decision_log_pending") == 3.0
    assert families(text)["guard_decisions"].type == "counter"
    # One process alone, without the folder, renders its own registry, _created samples and all.
    assert Metrics().multiprocess is None
