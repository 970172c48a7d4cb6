"""Decision log sustained writes into SQLite (WAL) and PostgreSQL, with and without the spool.

    .venv/bin/python benchmarks/decision_log.py [--n 20000] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Baseline in the same run: ``Store.record`` in batches, straight (no queue, no spool). Then the
decision log as the guard runs it: every decision handed over by 32 concurrent producers,
appended to the fsync'd spool (group commit) and written in batches by the background writer.
Prints decisions/s until every decision is in SQL. Target: >= 5,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.decision_log import DecisionLog
from guard.records import DecisionRecord, DecisionRow
from guard.spool import Spool
from guard.store import Store, migrate
from guard.tables import utcnow


def make(i: int) -> DecisionRecord:
    return DecisionRecord(
        DecisionRow.from_columns(
            {
                "id": uuid.uuid4().hex,
                "created_at": utcnow(),
                "conversation_id": f"c-{i}",
                "channel": "default",
                "locale": "zh",
                "question": "口袋开线怎么办？" * 3,
                "image_sha256": None,
                "reply": "感谢您的反馈，本品支持7天无理由退换" * 3,
                "candidates": None,
                "score": 0.55,
                "band": "[0.5,0.6)",
                "action": "follow_up",
                "final_reply": "感谢您的反馈\n\n已为您登记口袋开线问题，专员将在2小时内联系您。",
                "follow_up": "已为您登记口袋开线问题，专员将在2小时内联系您。",
                "holding_message": None,
                "issue_phrase": "口袋开线",
                "policy_channel": "default",
                "policy_version": 1,
                "scorer_name": "bundled",
                "scorer_version": "1",
                "inputs_used": ["question", "reply"],
                "cached": True,
                "degraded": False,
                "reason": None,
                "latency_ms": 1.2,
                "timings_ms": {"total": 1.2, "score": 0.4},
            }
        )
    )


def direct(store: Store, n: int, batch: int) -> float:
    records = [make(i) for i in range(n)]
    t = time.perf_counter()
    for i in range(0, n, batch):
        store.record(records[i : i + batch])
    return n / (time.perf_counter() - t)


async def logged(store: Store, n: int, batch: int, spool_dir: Path | None, url: str) -> tuple[float, float]:
    spool = Spool(spool_dir, url) if spool_dir is not None else None
    log = DecisionLog(store, batch_size=batch, spool=spool)
    log.start()
    records = [make(i) for i in range(n)]
    it = iter(records)
    t = time.perf_counter()

    async def producer() -> None:
        for r in it:
            await log.put(r)

    await asyncio.gather(*(producer() for _ in range(32)))
    accepted = time.perf_counter() - t
    await log.flush()
    total = time.perf_counter() - t
    await log.stop()
    return n / accepted, n / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        targets: list[tuple[str, str, str | None]] = [("SQLite (WAL)", f"sqlite:///{tmp}/bench.db", None)]
        name = f"guard_bench_{uuid.uuid4().hex[:8]}"
        admin = args.pg.replace("postgresql+psycopg://", "postgresql://")
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=3) as c:
                c.execute(f'CREATE DATABASE "{name}"')
            targets.append(("PostgreSQL", args.pg.rsplit("/", 1)[0] + "/" + name, name))
        except psycopg.Error as exc:
            print(f"PostgreSQL skipped: {exc}")
        try:
            for label, url, _ in targets:
                migrate(url)
                store = Store.open(url)
                base = direct(store, args.n, args.batch)
                mem = asyncio.run(logged(store, args.n, args.batch, None, url))
                spooled = asyncio.run(logged(store, args.n, args.batch, Path(tmp) / "spool", url))
                store.close()
                rows.append((label, base, mem, spooled))
        finally:
            for _, _, dbname in targets:
                if dbname:
                    with psycopg.connect(admin, autocommit=True) as c:
                        c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    print(f"\ndecision log, {args.n} decisions, batches of {args.batch}, 32 producers (decisions/s)")
    print(f"{'database':14} {'baseline':>10} {'log':>10} {'log+spool':>10} {'accepted':>10}   target >= 5000")
    for label, base, mem, spooled in rows:
        print(f"{label:14} {base:10.0f} {mem[1]:10.0f} {spooled[1]:10.0f} {spooled[0]:10.0f}")
    print("baseline: Store.record straight; log: in-memory queue + writer; log+spool: as served;")
    print("accepted: rate at which puts returned (fsync'd in the spool), before SQL caught up.")
    print(
        f"load average (1 min): {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end;"
        f" {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
