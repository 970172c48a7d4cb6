"""The check API on a cache hit, with Redis and PostgreSQL as the stores and every decision logged.

    .venv/bin/python benchmarks/cache_hits.py [--seconds 10] [--repeat 2] [--concurrency 32]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--redis redis://127.0.0.1:6379/12]

Creates a temporary PostgreSQL database (dropped after), flushes Redis db 12 (before and after),
and serves ``create_app`` (fake scorer, Redis cache, PostgreSQL, the decision log as served:
spool + batched writer) with uvicorn on a free loopback port in a child process. Every request
posts the same (question, reply) to ``POST /v1/guard``, so after the warm-up each one is a cache
hit that still makes and logs a decision. Baseline in the same run, on the same server:
``GET /healthz``. The two alternate ``--repeat`` times; the best run of each is kept. Load:
``wrk`` if installed, else an httpx2 async client (see benchmarks/middleware_overhead.py). At the
end the decisions in PostgreSQL are counted against the guard requests answered.
Targets: >= 2,000 decisions/s, p99 <= 20 ms at 32 concurrent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.middleware_overhead import generator, load, loadavg, served

BODY = json.dumps(
    {
        "question": "口袋开线了怎么办？",
        "reply": "感谢您的反馈，本品支持7天无理由退换，请在订单页申请退货。",
        "conversation_id": "bench-1",
    },
    ensure_ascii=False,
)


def guard_server(database_url: str, redis_url: str, spool_dir: str) -> Any:
    from guard.app import create_app
    from guard.settings import Settings
    from tests.fakes import FakeScorer

    settings = Settings(database_url=database_url, redis_url=redis_url, spool_dir=spool_dir)
    return create_app(settings, scorer=FakeScorer())


def count_decisions(url: str) -> int:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3) as c:
        row = c.execute("SELECT count(*) FROM decisions").fetchone()
        return int(row[0]) if row else 0


@contextlib.contextmanager
def scratch_stores(pg: str, redis_url: str) -> Iterator[str]:
    """A migrated temporary PostgreSQL database and an empty Redis db; yields the database's URL.

    ``pg`` is an admin URL of the server; the database is dropped and Redis flushed afterwards.
    """
    from guard.store import migrate

    cache = redis.Redis.from_url(redis_url, socket_timeout=3)
    cache.flushdb()
    name = f"guard_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg, autocommit=True, connect_timeout=3) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    try:
        url = "postgresql+psycopg://" + pg.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
        migrate(url)
        yield url
    finally:
        with psycopg.connect(pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cache.flushdb()
        cache.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each measured run")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each; the best is kept")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = ap.parse_args()

    print(f"load generator: {generator()}; {args.concurrency} connections; {os.cpu_count()} CPUs")
    print(f"load average at start: {loadavg()}")
    best: dict[str, dict[str, float]] = {}
    answered = 0
    with (
        scratch_stores(args.pg, args.redis) as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        with served(guard_server, database_url=url, redis_url=args.redis, spool_dir=f"{tmp}/spool") as base:
            warm = load(base + "/v1/guard", method="POST", body=BODY, seconds=2, concurrency=4)
            answered += int(warm["requests"] - warm["errors"])
            for _ in range(args.repeat):
                for label, path, method, body in (
                    ("GET /healthz (baseline)", "/healthz", "GET", None),
                    ("POST /v1/guard, cache hit", "/v1/guard", "POST", BODY),
                ):
                    r = load(
                        base + path,
                        method=method,
                        body=body,
                        seconds=args.seconds,
                        concurrency=args.concurrency,
                    )
                    if method == "POST":
                        answered += int(r["requests"] - r["errors"])
                    print(
                        f"  {label:26} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.2f} ms"
                        f"  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']:.0f}  (load {loadavg()})"
                    )
                    if label not in best or r["rps"] > best[label]["rps"]:
                        best[label] = r
            # the decision log writes in the background: wait until SQL stops growing
            deadline, last, stable = time.monotonic() + 120, -1, 0
            while time.monotonic() < deadline and stable < 3:
                now = count_decisions(url)
                stable = stable + 1 if now == last and now >= answered else 0
                last = now
                time.sleep(1)
        rows = count_decisions(url)
    print()
    print("| request | req/s | p50 ms | p99 ms | requests | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in best.items():
        print(
            f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}"
            f" | {r['requests']:.0f} | {r['errors']:.0f} |"
        )
    g = best["POST /v1/guard, cache hit"]
    print()
    print(f"decisions/s: {g['rps']:.0f} (target >= 2000): {'met' if g['rps'] >= 2000 else 'MISSED'}")
    print(f"p99: {g['p99_ms']:.1f} ms (target <= 20 ms): {'met' if g['p99_ms'] <= 20 else 'MISSED'}")
    print(
        f"decisions in PostgreSQL: {rows} for {answered} guard answers counted by the load generator"
        " (in-flight requests at the end of a run are answered but not counted, so rows >= answers)"
    )
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
