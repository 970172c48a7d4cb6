"""Added latency of GuardMiddleware on a cache hit: a bare echo chatbot against the same app guarded.

    .venv/bin/python benchmarks/middleware_overhead.py [--seconds 10] [--repeat 2] [--concurrency 32]

Both apps are served by uvicorn on a free loopback port in a child process (so the load
generator does not share the server's interpreter); the load is ``wrk`` when it is installed
(``apt-get install -y wrk``), else an httpx2 async client, at 32 concurrent connections for a
fixed duration. The bare app echoes the question as ``{"reply": ...}`` at once. The guarded app
is the same app behind ``GuardMiddleware`` with an in-process ``LocalGuard`` (fake scorer,
in-process cache, SQLite WAL, and the decision log as served: every decision appended to the
fsync'd spool before its response, then written to SQL); every request asks about the same
(question, reply), so after the warm-up each one is a cache hit. Bare and guarded alternate
``--repeat`` times and the best run of each is kept, so that a noisy neighbour hurts both alike.
Measured at 1 connection (the latency a lone request gains) and at ``--concurrency`` (32).
Targets: added p50 <= 1 ms, guarded throughput >= 50% of bare, at 32 connections.

The load and serving helpers here are shared with benchmarks/cache_hits.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "口袋开线了怎么办？The pocket seam on my new jeans came open."
BODY = json.dumps({"question": QUESTION, "conversation_id": "bench-1"}, ensure_ascii=False)


# Serving in a child process ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_server(factory: Callable[..., Any], kwargs: dict[str, Any], port: int) -> None:
    import uvicorn

    uvicorn.run(factory(**kwargs), host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def served(factory: Callable[..., Any], start_timeout_s: float = 60.0, **kwargs: Any) -> Iterator[str]:
    """Serve ``factory(**kwargs)`` (a module-level function) with uvicorn in a child process."""
    port = free_port()
    proc = multiprocessing.get_context("spawn").Process(
        target=_run_server, args=(factory, kwargs, port), daemon=True
    )
    proc.start()
    deadline = time.monotonic() + start_timeout_s
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if not proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the benchmark server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.join(15)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


# Load --------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


UNIQUE = "@N@"
"""In a body given to ``load``, replaced by a token unique to each request (every request a cache miss)."""

_UNIQUE_LUA = """
local n = 0
local k = 0
function setup(thread)
  k = k + 1
  thread:set("tid", os.time() .. "-" .. k .. "-" .. math.random(1, 1000000000))
end
function request()
  n = n + 1
  local body = bodies[(n % #bodies) + 1]:gsub("@N@", tid .. "-" .. n)
  return wrk.format(nil, nil, nil, body)
end
"""


def _wrk(
    url: str, method: str, bodies: list[str], seconds: float, concurrency: int, timeout_s: float = 2.0
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False, encoding="utf-8") as f:
        f.write(f"wrk.method = {json.dumps(method)}\n")
        if bodies:
            # JSON strings are valid Lua strings too
            f.write(f"wrk.body = {json.dumps(bodies[0], ensure_ascii=False)}\n")
            f.write('wrk.headers["Content-Type"] = "application/json"\n')
        if any(UNIQUE in b for b in bodies):
            f.write(f"bodies = {{{', '.join(json.dumps(b, ensure_ascii=False) for b in bodies)}}}\n")
            f.write(_UNIQUE_LUA)
        script = f.name
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{min(2, concurrency)}",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                f"--timeout={max(1, round(timeout_s))}s",
                "--latency",
                "-s",
                script,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + timeout_s + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    pct = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))  # "2.22s " ends in a space
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(pct["50"]),
        "p99_ms": _ms(pct["99"]),
        "requests": float(total),
        "errors": float(
            (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
        ),
    }


async def _httpx(
    url: str, method: str, bodies: list[str], seconds: float, concurrency: int
) -> dict[str, float]:
    import uuid

    import httpx2

    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"} if bodies else {}
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            n = 0
            while time.perf_counter() < stop:
                n += 1
                body = bodies[n % len(bodies)].replace(UNIQUE, uuid.uuid4().hex) if bodies else None
                t = time.perf_counter()
                try:
                    r = await client.request(method, url, content=body, headers=headers)
                    ok = r.status_code < 300
                except httpx2.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t) * 1000)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))],
        "requests": float(len(latencies)),
        "errors": float(errors),
    }


def load(
    url: str,
    *,
    method: str = "GET",
    body: str | None = None,
    seconds: float,
    concurrency: int,
    bodies: list[str] | None = None,
    timeout_s: float = 2.0,
) -> dict[str, float]:
    """req/s, p50 and p99 (ms), request and error counts of ``concurrency`` clients for ``seconds``.

    ``bodies`` (instead of ``body``) are sent in turn; UNIQUE in them becomes a per-request token.
    ``timeout_s``: wrk's per-request timeout (its default, 2 s; the httpx client waits 30 s).
    """
    sent = bodies if bodies is not None else [] if body is None else [body]
    if shutil.which("wrk"):
        return _wrk(url, method, sent, seconds, concurrency, timeout_s)
    return asyncio.run(_httpx(url, method, sent, seconds, concurrency))


def generator() -> str:
    return "wrk -t2" if shutil.which("wrk") else "httpx2 async client"


def loadavg() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


# The apps ----------------------------------------------------------------------------------


def echo_app(lifespan: Callable[[Any], contextlib.AbstractAsyncContextManager[None]] | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def chat(request: Request) -> JSONResponse:
        doc = await request.json()
        return JSONResponse({"reply": f"您好，关于您的问题：{doc['question']} 我们可以为您换货。"})

    return Starlette(routes=[Route("/chat", chat, methods=["POST"])], lifespan=lifespan)


def bare_app() -> Any:
    return echo_app()


def guarded_app(tmp: str) -> Any:
    from guard.middleware import GuardMiddleware, LocalGuard
    from guard.settings import Settings
    from guard.store import migrate
    from tests.fakes import FakeScorer

    url = f"sqlite:///{tmp}/guard.db"
    migrate(url)
    checker = LocalGuard(Settings(database_url=url, spool_dir=f"{tmp}/spool"), scorer=FakeScorer())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        async with checker:
            yield

    return GuardMiddleware(echo_app(lifespan), checker=checker, routes=["/chat"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each measured run")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs of each; the best is kept")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    print(f"load generator: {generator()}; 1 and {args.concurrency} connections; {os.cpu_count()} CPUs")
    print(f"load average at start: {loadavg()}")
    best: dict[tuple[str, int], dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        served(bare_app) as bare,
        served(guarded_app, tmp=tmp) as guarded,
    ):
        for base in (bare, guarded):  # warm-up; fills the guard's cache
            load(base + "/chat", method="POST", body=BODY, seconds=2, concurrency=4)
        for concurrency in (1, args.concurrency):
            for _ in range(args.repeat):
                for name, base in (("bare", bare), ("guarded", guarded)):
                    r = load(
                        base + "/chat",
                        method="POST",
                        body=BODY,
                        seconds=args.seconds,
                        concurrency=concurrency,
                    )
                    print(
                        f"  c={concurrency:<3} {name:8} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms"
                        f"  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']:.0f}  (load {loadavg()})"
                    )
                    if (name, concurrency) not in best or r["rps"] > best[name, concurrency]["rps"]:
                        best[name, concurrency] = r
    print()
    print("| app | connections | req/s | p50 ms | p99 ms | requests | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (name, concurrency), r in best.items():
        print(
            f"| {name} | {concurrency} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f}"
            f" | {r['requests']:.0f} | {r['errors']:.0f} |"
        )
    print()
    for concurrency in (1, args.concurrency):
        b, g = best["bare", concurrency], best["guarded", concurrency]
        added = g["p50_ms"] - b["p50_ms"]
        ratio = g["rps"] / b["rps"]
        print(
            f"{concurrency} connection(s): added p50 {added:.2f} ms (target <= 1 ms):"
            f" {'met' if added <= 1 else 'MISSED'}; guarded throughput {100 * ratio:.0f}% of bare"
            f" (target >= 50%): {'met' if ratio >= 0.5 else 'MISSED'}"
        )
    print(f"load average at end: {loadavg()}")


if __name__ == "__main__":
    main()
