"""Throughput of ``guard serve --workers N``: how decisions per second grow with worker processes.

    .venv/bin/python benchmarks/replicas.py [--workers 1,2,4] [--seconds 10] [--repeat 2]
        [--concurrency 32] [--scorer-threads T] [--pg postgresql://postgres@127.0.0.1:5432/postgres]
        [--redis redis://127.0.0.1:6379/12]

Runs the real command, ``guard serve --workers N`` (one uvicorn parent, N worker processes on one
port), with the bundled scorer, OCR off, Redis as the shared cache, a temporary PostgreSQL
database (dropped after) and a spool folder, as deployed (docs/deployment.md). Each worker gets
``GUARD_SCORER_THREADS = max(1, CPUs // N)`` (or ``--scorer-threads``), so N workers never ask for
more scorer threads than the machine has cores. The CPU time the guard's processes used is read
from /proc around each run: CPU per decision is what a decision costs whatever else the machine runs.
Two loads at ``--concurrency`` connections (``wrk`` when installed, else an httpx2 client): cache
misses (a pair from tests/data/cases_own.jsonl with a token unique to each request, so every
request is scored: CPU-bound, where workers matter) and cache hits (one fixed pair: the
per-request overhead of the guard itself). The worker counts alternate ``--repeat`` times, each
started afresh; the best run of each is kept. At the end the decisions in SQL are
counted against the answers (none may be missing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cache_hits import count_decisions, scratch_stores
from benchmarks.cache_misses import bodies
from benchmarks.middleware_overhead import UNIQUE, free_port, generator, load, loadavg

BIN = Path(sys.executable).parent
STARTED = "Application startup complete."
JSON = {"Content-Type": "application/json"}


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by process ``pid`` and the live processes under it."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


@contextlib.contextmanager
def guard_serve(
    workers: int, database_url: str, redis_url: str, tmp: str, scorer_threads: int | None = None
) -> Iterator[tuple[str, int]]:
    """``guard serve --workers N`` on a free loopback port until every worker has started."""
    port = free_port()
    log_path = Path(tmp) / f"serve-{workers}-{port}.log"
    env = {
        **os.environ,
        "GUARD_DATABASE_URL": database_url,
        "GUARD_REDIS_URL": redis_url,
        "GUARD_SPOOL_DIR": f"{tmp}/spool",
        "GUARD_OCR": "off",
        "GUARD_SCORER_THREADS": str(scorer_threads or max(1, (os.cpu_count() or 1) // workers)),
    }
    cmd = [str(BIN / "guard"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while log_path.read_text(errors="replace").count(STARTED) < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"guard serve did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}"
        assert httpx2.get(base + "/healthz", timeout=10).status_code == 200
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4", help="worker counts to measure, comma-separated")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each measured run")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each; the best is kept")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--scorer-threads",
        type=int,
        default=None,
        help="GUARD_SCORER_THREADS of every worker (default: CPUs // N)",
    )
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    args = ap.parse_args()
    counts = [int(n) for n in args.workers.split(",")]

    print(f"load generator: {generator()}; {args.concurrency} connections; {os.cpu_count()} CPUs")
    print(f"load average at start: {loadavg()}")
    misses = bodies()
    hit = misses[0].replace(UNIQUE, "fixed")
    best: dict[tuple[int, str], dict[str, float]] = {}
    answered = 0
    with scratch_stores(args.pg, args.redis) as url, tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for n in counts:
                with guard_serve(n, url, args.redis, tmp, args.scorer_threads) as (base, pid):
                    with httpx2.Client(timeout=60) as warm:  # every worker scores a few first
                        for i in range(4 * n):
                            sent_body = misses[i % len(misses)].replace(UNIQUE, f"warm-{n}-{i}")
                            warm.post(base + "/v1/guard", content=sent_body.encode(), headers=JSON)
                    for label, sent in (("miss", misses), ("hit", [hit])):
                        cpu = cpu_seconds(pid)
                        r = load(
                            base + "/v1/guard",
                            method="POST",
                            bodies=sent,
                            seconds=args.seconds,
                            concurrency=args.concurrency,
                            timeout_s=30,  # a loaded machine: slow answers are measured, not dropped
                        )
                        ok = r["requests"] - r["errors"]
                        # CPU per decision: what a decision costs whatever else the machine runs.
                        r["cpu_ms"] = 1000 * (cpu_seconds(pid) - cpu) / max(ok, 1)
                        answered += int(ok)
                        print(
                            f"workers={n} {label}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.1f} ms,"
                            f" p99 {r['p99_ms']:.1f} ms, {r['errors']:.0f} errors, guard CPU"
                            f" {r['cpu_ms']:.2f} ms per decision; load average {loadavg()}",
                            flush=True,
                        )
                        if (n, label) not in best or r["rps"] > best[(n, label)]["rps"]:
                            best[(n, label)] = r
        in_sql = count_decisions(url)
    print(f"\ndecisions in SQL {in_sql:,} for {answered:,} answers in the measured runs (plus warm-ups)")
    base_miss, base_hit = best[(counts[0], "miss")]["rps"], best[(counts[0], "hit")]["rps"]
    print(
        "\n| workers | cache misses req/s | p50 ms | p99 ms | vs 1 worker | CPU ms per miss"
        " | cache hits req/s | p50 ms | p99 ms | vs 1 worker | CPU ms per hit |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        m, h = best[(n, "miss")], best[(n, "hit")]
        print(
            f"| {n} | {m['rps']:,.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['rps'] / base_miss:.2f}x"
            f" | {m['cpu_ms']:.2f} | {h['rps']:,.0f} | {h['p50_ms']:.1f} | {h['p99_ms']:.1f}"
            f" | {h['rps'] / base_hit:.2f}x | {h['cpu_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
