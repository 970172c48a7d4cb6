"""RSS of the guard after 10,000 and after 100,000 mixed check requests, driven in-process.

    .venv/bin/python benchmarks/memory.py [--requests 100000] [--max-seconds 900] [--concurrency 32]

Serves ``create_app`` (fake scorer, in-process cache of the default size, SQLite WAL, the decision
log as served: spool + batched writer) and drives its ASGI interface directly (no sockets, so
only the guard's own memory is measured) with ``--concurrency`` clients posting to
``POST /v1/guard``. The mix, by request number: 60% cache hits (a pool of 200 (question, reply)
pairs seen again and again), 40% misses (a reply never seen before), and scores spread so that
about a third of the decisions are held (review/escalate: a queue item each) and some get a
follow-up. RSS (``/proc/self/statm``, after ``gc.collect()``) is printed every 10,000 requests.
Like ``guard serve``, it caps glibc's malloc arenas at 2 first (guard/app.py ``limit_malloc_arenas``).
Target: RSS after 100,000 within 10% of RSS after the first 10,000. ``--max-seconds``
bounds the run: if it ends first, the table says how many requests were made.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.app import create_app, limit_malloc_arenas
from guard.runtime import runtime
from guard.settings import Settings
from guard.store import Store, migrate
from tests.fakes import FakeScorer

PAGE = os.sysconf("SC_PAGE_SIZE")
SCORES = ("0.9", "0.55", "0.3", "0.1", "0.95", "0.7")  # send, follow-up, held ... per the default policy


def rss_mb() -> float:
    gc.collect()
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def body(i: int) -> bytes:
    hit = i % 5 < 3
    k = i % 200 if hit else i
    score = SCORES[k % len(SCORES)]
    return json.dumps(
        {
            "question": f"口袋开线了怎么办？订单 {k % 200}",
            "reply": f"感谢您的反馈，本品支持7天无理由退换。 [score={score}] {'' if hit else f'#{i}'}",
            "conversation_id": f"c-{i % 5000}",
        },
        ensure_ascii=False,
    ).encode()


async def call(app: Any, payload: bytes, state: Mapping[str, Any]) -> tuple[int, str]:
    done = asyncio.Event()
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                done.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/guard",
        "raw_path": b"/v1/guard",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
        "state": dict(state),  # the lifespan state, as a server hands it to each request
    }
    await app(scope, receive, send)
    done.set()
    action = json.loads(b"".join(chunks)).get("action", "?") if status == 200 else f"http {status}"
    return status, action


async def run(args: argparse.Namespace, tmp: str) -> None:
    url = f"sqlite:///{tmp}/guard.db"
    migrate(url)
    app = create_app(Settings(database_url=url, spool_dir=f"{tmp}/spool"), scorer=FakeScorer())
    actions: Counter[str] = Counter()
    marks: list[tuple[int, float, float, float, int]] = []  # (requests, RSS MB, s, load, log backlog)
    deadline = time.monotonic() + args.max_seconds
    t0 = time.perf_counter()
    async with app.router.lifespan_context(app) as state:
        log = runtime({"state": state}).decision_log
        marks.append((0, rss_mb(), 0.0, os.getloadavg()[0], 0))
        nxt = 0
        made = 0

        async def client() -> None:
            nonlocal nxt, made
            while nxt < args.requests and time.monotonic() < deadline:
                i = nxt
                nxt += 1
                _, action = await call(app, body(i), state)
                actions[action] += 1
                made += 1
                if made % args.every == 0:
                    marks.append((made, rss_mb(), time.perf_counter() - t0, os.getloadavg()[0], log.pending))
                    m = marks[-1]
                    print(
                        f"  {m[0]:>7} requests  RSS {m[1]:7.1f} MB  {m[2]:6.0f} s  load {m[3]:.1f}"
                        f"  not yet in SQL {m[4]}",
                        flush=True,
                    )

        await asyncio.gather(*(client() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - t0
        await log.flush()
        final = (made, rss_mb(), elapsed, os.getloadavg()[0], log.pending)
    store = Store.open(url)
    rows, queued = store.count_decisions(), len(store.queue())
    store.close()

    print()
    print(f"{made} requests in {elapsed:.0f} s ({made / elapsed:.0f}/s), {args.concurrency} concurrent")
    print("actions: " + ", ".join(f"{k} {v}" for k, v in sorted(actions.items())))
    print(f"decisions in SQLite: {rows}; queue items (held): {queued}")
    print()
    print("| requests | RSS MB | growth vs 10,000 | seconds | load average | decisions not yet in SQL |")
    print("|---:|---:|---:|---:|---:|---:|")
    ref = next((m[1] for m in marks if m[0] == args.every), None)
    for m in [*marks, final] if final[0] != marks[-1][0] else marks:
        growth = "" if ref is None or m[0] < args.every else f"{100 * (m[1] - ref) / ref:+.1f}%"
        print(f"| {m[0]} | {m[1]:.1f} | {growth} | {m[2]:.0f} | {m[3]:.1f} | {m[4]} |")
    if ref is not None:
        change = 100 * (final[1] - ref) / ref
        verdict = "met" if abs(change) <= 10 else "MISSED"
        print(f"\nRSS after {made} vs after {args.every}: {change:+.1f}% (target within 10%): {verdict}")
    if made < args.requests:
        print(f"stopped by --max-seconds {args.max_seconds:.0f} after {made} of {args.requests} requests")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--every", type=int, default=10_000, help="RSS checkpoint interval (the reference)")
    ap.add_argument(
        "--max-seconds", type=float, default=900.0, help="stop after this long, whatever the count"
    )
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; load average at start: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    limit_malloc_arenas()  # as guard serve does
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(args, tmp))


if __name__ == "__main__":
    main()
