"""Faults under load, with real services on loopback: SQL down or read-only mid-load loses nothing.

Each scenario serves the guard with uvicorn on a free loopback port, drives a bounded client
loop at it, breaks a dependency part-way through, mends it, and then compares the database with
the decisions the clients were given: none missing, none doubled, no failed request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from sqlalchemy.engine import make_url

from guard.app import create_app
from guard.settings import Settings
from guard.store import Store, migrate
from tests.apptools import png_bytes
from tests.fakes import FakeScorer
from tests.promtext import sample
from tests.serving import serve

pytestmark = pytest.mark.integration


# A TCP proxy that can cut a database off -------------------------------------------------------


class TcpProxy:
    """Forwards loopback connections to ``target``; ``cut()`` drops them all and refuses new ones.

    ``hang()`` makes the database accept connections and never answer: bytes sent either way are
    swallowed and new connections are accepted and left waiting. ``mend()`` ends the hung ones.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.up = True
        self.hung = False
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()  # the database is "down": the connection dies at once
                continue
            if self.hung:
                with self._lock:
                    self._conns.append(client)  # accepted, never answered
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.hung:
                    dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def hang(self) -> None:
        self.hung = True

    def mend(self) -> None:
        if self.hung:
            self.cut()  # a hung connection lost bytes mid-protocol: end it, clients reconnect
            self.hung = False
        self.up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


# A bounded client loop ------------------------------------------------------------------------


@dataclass
class LoadResult:
    decisions: dict[str, str] = field(default_factory=dict)
    """decision id -> action, for every 200."""
    by_request: dict[int, str] = field(default_factory=dict)
    """request number -> action, for every 200."""
    failures: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)


def body(i: int) -> dict[str, Any]:
    """Request ``i``: a spread of scores (so of actions), repeated every 40 (cache hits)."""
    score = ["0.2", "0.45", "0.55", "0.65", "0.9"][i % 5]
    return {
        "question": f"口袋开线怎么办？ #{i % 40}",
        "reply": f"<script>x</script> 我们会处理 [score={score}] #{i % 40}",
        "conversation_id": f"c-{i}",
    }


def drive(
    base_url: str,
    duration_s: float,
    *,
    concurrency: int = 8,
    schedule: list[tuple[float, Callable[[], None]]] | None = None,
    timeout_s: float = 30.0,
) -> LoadResult:
    """POST for ``duration_s`` seconds, ``concurrency`` at a time; ``schedule``: (at, action), in a thread."""
    result = LoadResult()
    counter = iter(range(10**9))

    async def main() -> None:
        started = time.monotonic()
        stop = started + duration_s
        async with httpx2.AsyncClient(base_url=base_url, timeout=timeout_s) as client:

            async def events() -> None:
                for at, action in sorted(schedule or [], key=lambda e: e[0]):
                    await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                    await asyncio.to_thread(action)

            async def worker() -> None:
                while time.monotonic() < stop:
                    i = next(counter)
                    t = time.perf_counter()
                    try:
                        resp = await client.post("/v1/guard", json=body(i))
                    except httpx2.HTTPError as exc:
                        result.failures.append(f"#{i}: {type(exc).__name__}: {exc}")
                        continue
                    result.latencies_s.append(time.perf_counter() - t)
                    if resp.status_code != 200:
                        result.failures.append(f"#{i}: HTTP {resp.status_code}: {resp.text[:200]}")
                        continue
                    doc = resp.json()
                    result.decisions[doc["decision_id"]] = doc["action"]
                    result.by_request[i] = doc["action"]

            await asyncio.gather(events(), *(worker() for _ in range(concurrency)))

    asyncio.run(main())
    return result


def metric(base_url: str, name: str) -> float:
    return sample(httpx2.get(base_url + "/metrics", timeout=10).text, name)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def logged(url: str) -> dict[str, tuple[str, int]]:
    """decision id -> (action, rows with that id) straight from the database."""
    store = Store.open(url)
    try:
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT id, action, count(*) FROM decisions GROUP BY id, action"
            ).all()
            queue = conn.exec_driver_sql("SELECT decision_id FROM queue_items").all()
    finally:
        store.close()
    out = {r[0]: (r[1], int(r[2])) for r in rows}
    assert len(queue) == len({q[0] for q in queue}), "a queue item was written twice"
    return out


def assert_log_equals(url: str, result: LoadResult) -> None:
    rows = logged(url)
    missing = set(result.decisions) - set(rows)
    extra = set(rows) - set(result.decisions)
    assert not missing, f"{len(missing)} decisions returned to clients are not in the database"
    assert not extra, f"{len(extra)} rows in the database were never returned to a client"
    assert all(n == 1 for _, n in rows.values())
    assert {k: a for k, (a, _) in rows.items()} == result.decisions


@contextlib.contextmanager
def guard_server(url: str, spool: Path, **overrides: Any) -> Iterator[str]:
    settings = Settings(database_url=url, spool_dir=str(spool), **overrides)
    app = create_app(settings, scorer=FakeScorer())
    with serve(app) as base_url:
        yield base_url


def proxied(pg_url: str) -> tuple[TcpProxy, str]:
    url = make_url(pg_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    return proxy, url.set(port=proxy.port).render_as_string(hide_password=False)


# Scenarios ------------------------------------------------------------------------------------


def test_postgres_cut_off_mid_load_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    migrate(pg_url)
    proxy, url = proxied(pg_url)
    try:
        with guard_server(url, tmp_path / "spool", log_batch_size=50) as base_url:
            # Down for 6 s, past the policy (2 s) and API key (5 s) caches.
            result = drive(base_url, 10, schedule=[(2, proxy.cut), (8, proxy.mend)])
            assert result.failures == []
            wait_for(lambda: len(logged(pg_url)) >= len(result.decisions), 60, "the spool to drain")
            assert metric(base_url, "guard_decision_log_failures_total") > 0, "the outage did not happen"
        assert_log_equals(pg_url, result)
        assert list((tmp_path / "spool").rglob("*.jsonl")) == []
    finally:
        proxy.close()


def test_postgres_hung_mid_load_costs_requests_at_most_the_sql_timeout(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL accepts connections and never answers for 6 s: past the policy (2 s) and key (5 s)
    caches, so their lookups hit the hung database; each waits GUARD_SQL_TIMEOUT_S at most."""
    migrate(pg_url)
    proxy, url = proxied(pg_url)
    try:
        with guard_server(url, tmp_path / "spool", log_batch_size=50, sql_timeout_s=0.5) as base_url:
            result = drive(base_url, 10, schedule=[(2, proxy.hang), (8, proxy.mend)], timeout_s=10)
            assert result.failures == []
            slowest = max(result.latencies_s)
            waited = sum(t >= 0.45 for t in result.latencies_s)
            n = len(result.latencies_s)
            print(f"postgres hung: {n} requests, slowest {slowest:.2f}s, {waited} >= 0.45s")
            assert slowest < 2.5, f"a request took {slowest:.2f}s with SQL hung (timeout 0.5 s)"
            assert slowest >= 0.45, "no request waited for the hung database: the test tested nothing"
            wait_for(lambda: len(logged(pg_url)) >= len(result.decisions), 60, "the spool to drain")
        assert_log_equals(pg_url, result)
    finally:
        proxy.close()


def test_postgres_read_only_mid_load_loses_nothing(pg_url: str, pg_server: str, tmp_path: Path) -> None:
    migrate(pg_url)
    name = make_url(pg_url).database

    def read_only(on: bool) -> None:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'
            )
            conn.execute(  # existing sessions keep their setting: end them
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )

    with guard_server(pg_url, tmp_path / "spool", log_batch_size=50) as base_url:
        result = drive(base_url, 10, schedule=[(2, lambda: read_only(True)), (8, lambda: read_only(False))])
        assert result.failures == []
        wait_for(lambda: len(logged(pg_url)) >= len(result.decisions), 60, "the spool to drain")
    assert_log_equals(pg_url, result)


def test_sqlite_locked_by_another_writer_mid_load_loses_nothing(sqlite_url: str, tmp_path: Path) -> None:
    migrate(sqlite_url)
    locker: dict[str, Any] = {}

    def lock() -> None:
        conn = Store.open(sqlite_url).engine.raw_connection()
        conn.execute("BEGIN EXCLUSIVE")
        locker["conn"] = conn

    def unlock() -> None:
        locker["pending"] = metric(base_url, "guard_decision_log_pending")
        conn = locker.pop("conn")
        conn.rollback()
        conn.close()

    with guard_server(sqlite_url, tmp_path / "spool", log_batch_size=50) as base_url:
        result = drive(base_url, 8, schedule=[(2, lock), (6, unlock)])
        assert result.failures == []
        wait_for(lambda: len(logged(sqlite_url)) >= len(result.decisions), 60, "the spool to drain")
        assert locker["pending"] > 0, "the lock did not hold the writer back"
    assert_log_equals(sqlite_url, result)


def test_lookups_on_a_hung_or_dead_database_answer_503_at_once(pg_url: str, tmp_path: Path) -> None:
    """Registered photos and decision lookups need SQL: hung or down, a clear 503, never a hang or a 500."""
    migrate(pg_url)
    proxy, url = proxied(pg_url)
    photo = base64.b64encode(png_bytes()).decode()
    missing = "/v1/decisions/" + "0" * 32
    try:
        with (
            guard_server(url, tmp_path / "spool", sql_timeout_s=0.5) as base_url,
            httpx2.Client(base_url=base_url, timeout=10) as client,
        ):
            registered = client.post("/v1/images", json={"image": {"data": photo}})
            assert registered.status_code == 201
            image_id = registered.json()["image_id"]
            guarded = {"question": "口袋开线了", "reply": "[score=0.9]", "image": {"id": image_id}}
            asks = [
                ("GET", missing, None),
                ("POST", "/v1/images", {"image": {"data": photo}}),
                (
                    "POST",
                    "/v1/guard",
                    {"question": "口袋开线了", "reply": "[score=0.9]", "image": {"id": image_id}},
                ),
            ]
            for fault in (proxy.hang, proxy.cut):
                assert client.get(missing).status_code == 404  # the key check is answered (kept 5 s)
                fault()
                for method, path, doc in asks:
                    t = time.perf_counter()
                    resp = client.request(method, path, json=doc)
                    took = time.perf_counter() - t
                    assert resp.status_code == 503, (fault.__name__, path, resp.text)
                    assert resp.json()["error"]["code"] == "database_unavailable"
                    assert took < 2.5, f"{path} took {took:.2f}s with the database {fault.__name__}"
                proxy.mend()
            assert client.get(missing).status_code == 404
            assert client.post("/v1/guard", json=guarded).status_code == 200
    finally:
        proxy.close()
