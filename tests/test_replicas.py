"""Many guard processes, one PostgreSQL and one Redis: real ``guard serve`` processes on loopback.

Replica A is ``guard serve --workers 2`` (two worker processes on one port), replica B a single
process on another port; each replica has a spool folder of its own, and both share one fresh
PostgreSQL database, the test Redis and GUARD_SECRET_KEY, as replicas on separate hosts would
(docs/deployment.md). The load is spread over both ports, on new connections, so A's two workers
share it too. The tests run in order over the same processes: the last one kills some of them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.engine import make_url

from guard.admin import auth
from guard.admin.queries import AdminQueries
from guard.keys import create_key
from guard.policies import Band, Policy
from guard.spool import spool_key
from guard.store import Store, migrate
from tests import serving
from tests.conftest import pg_database
from tests.promtext import families, sample
from tests.serving import closed_port
from tests.test_faults import logged, wait_for

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
SECRET = "replica-test-secret-key-shared-by-every-replica"
PASSWORD = "correct horse battery staple"
POLICY_REFRESH_S = 2.0
"""How soon a published policy is in force in every process (guard/pipeline.py PolicyBook)."""
KEY_TTL_S = 5.0
"""How soon a revoked key is refused by every process (guard/keys.py KeyRing)."""
SLACK_S = 2.0
"""Added to both on a shared, loaded 2-core machine (one SQL read, a late event loop: 1 s was seen
to be short under load). Either test still fails without the background re-read: the first answer
of each process after the wait would use what it had read before."""
STARTED = "Application startup complete."

PAIRS = [
    (
        "口袋开线怎么办？",
        "很抱歉给您带来不便，口袋开线可以免费退换，请在订单页面申请换货，我们会包邮寄出新品。",
    ),
    ("口袋开线怎么办？", "感谢您的反馈，本品支持7天无理由退换"),
    ("拉链坏了拉不上怎么办？", "拉链坏了很抱歉，您可以申请免费维修或换货，我们承担运费。"),
    ("拉链坏了拉不上怎么办？", "您好，今天天气不错。"),
    (
        "The zipper on my jacket broke, what can I do?",
        "Sorry about the broken zipper. We can replace the jacket for free; start an exchange from "
        "your order page and we'll cover the shipping.",
    ),
    ("The zipper on my jacket broke, what can I do?", "Our store opens at 9am."),
    ("衣服洗了之后褪色了", "衣服褪色很抱歉，请提供照片，我们为您办理退款或换货。"),
]
"""Questions and drafts the bundled scorer sends, follows up and escalates (scores 0.05-0.97)."""


def body(i: int, *, distinct: bool) -> dict[str, Any]:
    question, reply = PAIRS[i % len(PAIRS)]
    if distinct:
        question = f"{question} (订单 {100000 + i})"
    return {"question": question, "reply": reply, "conversation_id": f"c-{i}"}


def free_port() -> int:
    """A free loopback port in this test's range (17400-17499), else any free one."""
    try:
        return serving.free_port(17400, 17499)
    except RuntimeError:
        return closed_port()


# The command ----------------------------------------------------------------------------------


def test_serve_with_workers_hands_uvicorn_a_factory_and_creates_the_first_key_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    from guard import cli

    url = f"sqlite:///{tmp_path / 'guard.db'}"
    migrate(url)
    calls: list[tuple[Any, dict[str, Any]]] = []
    folders: list[str] = []

    def run(app: Any, **kw: Any) -> None:
        calls.append((app, kw))
        folders.append(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        assert Path(folders[-1]).is_dir()

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setenv("GUARD_DATABASE_URL", url)
    monkeypatch.setenv("GUARD_HOST", "127.0.0.1")
    monkeypatch.setenv("GUARD_PORT", "8000")
    argv = ["serve", "--host", "0.0.0.0", "--port", "17499", "--workers", "3"]
    argv += ["--forwarded-allow-ips", "10.0.0.5"]
    assert cli.main(argv) == 0
    ((app, options),) = calls
    assert app == "guard.app:serve_app" and options["factory"] is True and options["workers"] == 3
    assert options["forwarded_allow_ips"] == "10.0.0.5" and options["proxy_headers"] is True
    # The workers read the address from the environment the command leaves them.
    assert (os.environ["GUARD_HOST"], os.environ["GUARD_PORT"]) == ("0.0.0.0", "17499")
    # A first start beyond loopback: one key for all the workers, created and shown by the command.
    store = Store.open(url)
    try:
        assert store.count_api_keys() == 1
    finally:
        store.close()
    assert "rg_" in capsys.readouterr().err
    # The workers' metrics go to a fresh folder of their own (multiprocess mode), gone afterwards.
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ and not Path(folders[0]).exists()
    assert cli.main(argv) == 0 and len(calls) == 2
    assert folders[1] != folders[0]
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"left by a previous run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    assert cli.main(argv) == 0 and folders[2] == str(given)
    assert given.is_dir() and not list(given.iterdir()), "a previous run's counts would be added in"
    store = Store.open(url)
    try:
        assert store.count_api_keys() == 1, "a second start created another first key"
    finally:
        store.close()
    with pytest.raises(SystemExit):
        cli.main(["serve", "--workers", "0"])


# The processes --------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    workers: int
    port: int
    spool: Path
    log: Path
    env: dict[str, str]
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    _log_from: int = 0
    metrics: Path | None = None
    """PROMETHEUS_MULTIPROC_DIR given to the command (else, with workers, it makes a temporary one)."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spool_root(self) -> Path:
        return self.spool / spool_key(self.env["GUARD_DATABASE_URL"])

    def start(self) -> None:
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        cmd = [str(BIN / "guard"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                env={
                    **self.env,
                    "GUARD_SPOOL_DIR": str(self.spool),
                    **({"PROMETHEUS_MULTIPROC_DIR": str(self.metrics)} if self.metrics else {}),
                },
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log_text(self) -> str:
        return self.log.read_bytes()[self._log_from :].decode(errors="replace")

    def wait_started(self, processes: int, timeout_s: float = 90.0) -> None:
        """Until ``processes`` worker processes have finished their start-up since :meth:`start`."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.log_text().count(STARTED) < processes:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"replica {self.name} did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        assert httpx2.get(f"{self.base_url}/healthz", timeout=5).status_code == 200

    def worker_pids(self) -> set[int]:
        """The processes serving this replica (the pids of uvicorn's workers, or the server's)."""
        assert self.proc is not None
        if self.workers == 1:
            return {self.proc.pid}
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        pids = set()
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline:  # not multiprocessing's resource tracker
                pids.add(int(pid))
        return pids

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def spool_owners(root: Path) -> tuple[set[int], set[int]]:
    """(pids of the lock files, pids of the segment files) in a spool folder."""

    def pid(name: str) -> int:
        return int(name.split(".", 1)[0].split("-")[1])

    locks = {pid(p.name) for p in root.glob("*.lock")}
    segments = {pid(p.name) for p in root.glob("*.jsonl")}
    return locks, segments


@dataclass
class Cluster:
    url: str
    a: Replica
    b: Replica
    key: str
    doomed_key: str
    doomed_key_id: str
    received: dict[str, str] = field(default_factory=dict)
    """decision id -> action, for every decision any replica answered with, in every test."""

    @property
    def replicas(self) -> tuple[Replica, Replica]:
        return self.a, self.b


@pytest.fixture(scope="module")
def cluster(pg_server: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    with pg_database(pg_server) as url:
        migrate(url)
        store = Store.open(url)
        try:
            key = create_key(store, "default", "replica test")
            doomed = create_key(store, "default", "revoked mid-test")
        finally:
            store.close()
        queries = AdminQueries.open(url)
        try:
            for name in ("sup_a", "sup_b"):
                queries.create_user(name, auth.hash_password(PASSWORD), "supervisor", actor="test")
        finally:
            queries.close()
        env = {
            **os.environ,
            "GUARD_DATABASE_URL": url,
            "GUARD_REDIS_URL": redis_url,
            "GUARD_SECRET_KEY": SECRET,
            "GUARD_AUTH": "required",
            "GUARD_OCR": "off",
            "GUARD_SCORER_THREADS": "1",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        a = Replica("A", 2, free_port(), tmp / "spool-a", tmp / "a.log", env, tmp, metrics=tmp / "metrics-a")
        b: Replica | None = None
        try:
            a.start()  # a port is taken once its server listens: pick B's after A is up
            a.wait_started(2)
            b = Replica("B", 1, free_port(), tmp / "spool-b", tmp / "b.log", env, tmp)
            b.start()
            b.wait_started(1)
            yield Cluster(url, a, b, key, doomed, doomed.split("_")[1])
        finally:
            for r in (a, b):
                if r is not None:
                    r.stop()


# Load -----------------------------------------------------------------------------------------


@dataclass
class Load:
    decisions: dict[str, str] = field(default_factory=dict)
    per_replica: dict[str, int] = field(default_factory=dict)
    cached: int = 0
    failures: list[str] = field(default_factory=list)


def spread(
    cluster: Cluster,
    bodies: list[dict[str, Any]],
    *,
    concurrency: int = 8,
    until: float | None = None,
    schedule: list[tuple[float, Callable[[], None]]] | None = None,
) -> Load:
    """POST ``bodies`` round-robin over the replicas, each on a new connection (so a replica's
    workers share it); with ``until`` (seconds), keep cycling through them until then."""
    load = Load()
    order = iter(range(10**9))
    replicas = cluster.replicas

    async def main() -> None:
        started = time.monotonic()
        limits = httpx2.Limits(max_keepalive_connections=0)
        headers = {"Authorization": f"Bearer {cluster.key}"}
        async with httpx2.AsyncClient(timeout=30, limits=limits, headers=headers) as client:

            async def events() -> None:
                for at, action in sorted(schedule or [], key=lambda e: e[0]):
                    await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                    await asyncio.to_thread(action)

            async def worker() -> None:
                while True:
                    i = next(order)
                    if until is None and i >= len(bodies):
                        return
                    if until is not None and time.monotonic() - started > until:
                        return
                    replica = replicas[i % len(replicas)]
                    try:
                        resp = await client.post(f"{replica.base_url}/v1/guard", json=bodies[i % len(bodies)])
                    except httpx2.HTTPError as exc:
                        load.failures.append(f"{replica.name}#{i}: {type(exc).__name__}")
                        await asyncio.sleep(0.05)  # a replica that is down refuses at once
                        continue
                    if resp.status_code != 200:
                        load.failures.append(f"{replica.name}#{i}: HTTP {resp.status_code} {resp.text[:200]}")
                        continue
                    doc = resp.json()
                    load.decisions[doc["decision_id"]] = doc["action"]
                    load.per_replica[replica.name] = load.per_replica.get(replica.name, 0) + 1
                    load.cached += bool(doc["cached"])

            await asyncio.gather(events(), *(worker() for _ in range(concurrency)))

    asyncio.run(main())
    cluster.received.update(load.decisions)
    return load


def assert_recorded_once(url: str, received: dict[str, str]) -> dict[str, tuple[str, int]]:
    rows = logged(url)  # also: no queue item twice
    missing = set(received) - set(rows)
    assert not missing, f"{len(missing)} answered decisions are not in SQL"
    assert all(rows[d][1] == 1 for d in received), "a decision is recorded more than once"
    assert {d: rows[d][0] for d in received} == received
    return rows


# Tests ----------------------------------------------------------------------------------------


def test_load_over_replicas_is_recorded_once_and_each_process_keeps_its_own_spool(cluster: Cluster) -> None:
    # 240 distinct inputs and 120 repeats of 7 pairs: the repeats hit the shared Redis cache,
    # including on the replica that did not score them first.
    bodies = [body(i, distinct=True) for i in range(240)] + [body(i, distinct=False) for i in range(120)]
    started = time.monotonic()
    load = spread(cluster, bodies)
    took = time.monotonic() - started
    assert not load.failures, load.failures[:5]
    assert len(load.decisions) == 360, "every request gets a decision of its own"
    assert load.per_replica["A"] == load.per_replica["B"] == 180
    # (The first of each pair, and a copy sent while it was being scored, are misses: 7-16 of them.)
    assert load.cached >= 95, f"only {load.cached} of 120 repeats were served from the shared cache"
    assert {"send", "follow_up", "escalate"} <= set(load.decisions.values())

    # Each process writes its own spool segments, named by its pid, in its replica's folder.
    a_pids, b_pids = cluster.a.worker_pids(), cluster.b.worker_pids()
    assert len(a_pids) == 2 and len(b_pids) == 1
    a_locks, a_segments = spool_owners(cluster.a.spool_root)
    b_locks, b_segments = spool_owners(cluster.b.spool_root)
    assert a_locks == a_pids and b_locks == b_pids
    assert a_segments == a_pids and b_segments == b_pids
    written = {
        pid for pid in a_pids if any(p.stat().st_size for p in cluster.a.spool_root.glob(f"*-{pid}-*.jsonl"))
    }
    assert written == a_pids, "both workers of A served part of the load, each into its own segments"

    wait_for(lambda: set(cluster.received) <= set(logged(cluster.url)), 30, "SQL to hold every decision")
    rows = assert_recorded_once(cluster.url, cluster.received)
    assert len(rows) == len(cluster.received), "SQL holds a decision no client was given"
    print(f"360 requests over 3 processes in {took:.1f} s; {load.cached} cached")


def _decided(text: str) -> float:
    """guard_decisions_total over every action and channel."""
    return sum(
        s.value for s in families(text)["guard_decisions"].samples if s.name == "guard_decisions_total"
    )


def test_metrics_of_a_port_served_by_two_workers_sum_both_workers_on_every_scrape(cluster: Cluster) -> None:
    """Replica A is one port over two workers: whichever worker a scrape reaches, /metrics sums
    both (prometheus_client's multiprocess mode, set up by guard serve --workers)."""

    def scrape() -> str:
        r = httpx2.get(f"{cluster.a.base_url}/metrics", timeout=30)  # a new connection each time
        assert r.status_code == 200, r.text[:300]
        return r.text

    assert cluster.a.metrics is not None
    folder = cluster.a.metrics

    def per_worker() -> dict[int, float]:
        """Each live worker's own decisions, read from its file in the multiprocess folder."""
        counts = {}
        for pid in cluster.a.worker_pids():
            merged = MultiProcessCollector.merge([str(folder / f"counter_{pid}.db")], accumulate=True)
            counts[pid] = sum(s.value for m in merged for s in m.samples if s.name == "guard_decisions_total")
        return counts

    own0 = per_worker()
    before = [scrape() for _ in range(6)]
    assert len({_decided(t) for t in before}) == 1, "two scrapes disagree: a worker's counts are missing"
    decided0 = _decided(before[0])
    latency0 = sample(before[0], "guard_decision_latency_seconds_count")
    written0 = sample(before[0], "guard_decision_log_written_total")

    n = 80
    answered: dict[str, str] = {}

    async def load() -> None:
        limits = httpx2.Limits(max_keepalive_connections=0)  # each request may reach either worker
        headers = {"Authorization": f"Bearer {cluster.key}"}
        async with httpx2.AsyncClient(timeout=30, limits=limits, headers=headers) as client:
            todo = iter(range(n))

            async def worker() -> None:
                for i in todo:
                    r = await client.post(
                        f"{cluster.a.base_url}/v1/guard", json=body(5000 + i, distinct=True)
                    )
                    assert r.status_code == 200, r.text[:300]
                    answered[r.json()["decision_id"]] = r.json()["action"]

            await asyncio.gather(*(worker() for _ in range(8)))

    asyncio.run(load())
    cluster.received.update(answered)
    assert len(answered) == n
    after = [scrape() for _ in range(8)]
    assert {_decided(t) - decided0 for t in after} == {n}, "a scrape missed some worker's decisions"
    assert {sample(t, "guard_decision_latency_seconds_count") - latency0 for t in after} == {n}
    own = per_worker()
    took = {pid: own[pid] - own0.get(pid, 0.0) for pid in own}
    assert sum(took.values()) == n and all(took.values()), f"both workers must have decided: {took}"
    # Counts the parts keep (the decision log's) are published by every worker within a second.
    wait_for(
        lambda: sample(scrape(), "guard_decision_log_written_total") - written0 >= n,
        15,
        "every worker's written decisions in /metrics",
    )
    assert sample(scrape(), "guard_scorer_breaker_open") == 0.0  # a gauge of the live workers, no pid
    print(f"{n} decisions over A's two workers, counted whole by each of {len(after)} scrapes")


def _signed_in(base_url: str, username: str) -> tuple[httpx2.Client, str]:
    """A client signed in to the admin pages of ``base_url`` and its session's CSRF token."""
    client = httpx2.Client(base_url=base_url, timeout=30)
    token = re.compile(r'name="csrf_token" value="([^"]+)"')
    page = client.get("/admin/login")
    found = token.search(page.text)
    assert found is not None
    form = {"username": username, "password": PASSWORD, "csrf_token": found.group(1), "next": "/admin/"}
    r = client.post("/admin/login", data=form)
    assert r.status_code == 303, r.text[:500]
    found = token.search(client.get("/admin/queue").text)
    assert found is not None
    return client, found.group(1)


def test_two_supervisors_on_two_replicas_cannot_both_claim_a_case(cluster: Cluster) -> None:
    escalating = spread(cluster, [body(7 * k + 1, distinct=True) for k in range(3000, 3010)])  # 0.05
    assert set(escalating.decisions.values()) == {"escalate"}, escalating.failures[:3]
    wait_for(lambda: set(cluster.received) <= set(logged(cluster.url)), 30, "SQL to hold every decision")
    store = Store.open(cluster.url)
    try:
        # Held cases only: a sent decision sampled for audit is pending too, but cannot be claimed.
        cases = [item.id for item in store.queue("pending") if item.kind != "audit"][:8]
    finally:
        store.close()
    assert len(cases) == 8, "the load made too few escalations"
    sup_a, token_a = _signed_in(cluster.a.base_url, "sup_a")
    sup_b, token_b = _signed_in(cluster.b.base_url, "sup_b")
    # One session works on every replica (shared GUARD_SECRET_KEY, sessions in SQL).
    cross = httpx2.get(f"{cluster.b.base_url}/admin/queue", cookies=sup_a.cookies, timeout=30)
    assert cross.status_code == 200 and "sup_a" in cross.text

    outcomes: dict[tuple[str, str], int] = {}
    barrier = threading.Barrier(2)

    def act(client: httpx2.Client, token: str, who: str, op: str) -> None:
        for case in cases:
            barrier.wait(10)  # both supervisors press their button on the same case at once
            r = client.post(f"/admin/cases/{case}/act", data={"op": op, "csrf_token": token})
            outcomes[(who, case)] = r.status_code

    threads = [
        threading.Thread(target=act, args=(sup_a, token_a, "sup_a", "take_over")),
        threading.Thread(target=act, args=(sup_b, token_b, "sup_b", "approve")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sup_a.close()
    sup_b.close()

    with psycopg.connect(make_url(cluster.url).set(drivername="postgresql").render_as_string(False)) as conn:
        states = dict(
            conn.execute(
                "SELECT id, state || ':' || resolved_by FROM queue_items WHERE id = ANY(%s)", [cases]
            ).fetchall()
        )
        audits = conn.execute(
            "SELECT target, count(*) FROM audit_log WHERE action LIKE 'case.%%' GROUP BY target"
        ).fetchall()
    wins = {"sup_a": 0, "sup_b": 0}
    for case in cases:
        codes = {who: outcomes[(who, case)] for who in ("sup_a", "sup_b")}
        assert sorted(codes.values()) == [303, 409], f"case {case}: {codes}"
        winner = "sup_a" if codes["sup_a"] == 303 else "sup_b"
        wins[winner] += 1
        expected = "taken_over:sup_a" if winner == "sup_a" else "approved:sup_b"
        assert states[case] == expected
    assert all(n == 1 for _, n in audits) and len(audits) == len(cases)
    print(f"8 cases, each claimed once: {wins}")


def _version_seen(cluster: Cluster, replica: Replica, request: dict[str, Any]) -> tuple[int, str]:
    r = httpx2.post(
        f"{replica.base_url}/v1/guard",
        json=request,
        headers={"Authorization": f"Bearer {cluster.key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text[:300]
    doc = r.json()
    cluster.received[doc["decision_id"]] = doc["action"]
    return int(doc["policy"]["version"]), str(doc["action"])


def test_published_policy_is_in_force_on_every_replica_within_the_refresh(cluster: Cluster) -> None:
    """No request reaches any process between the publication and the check: each re-reads the
    policy in the background, so even its first answer after the refresh interval uses the new one."""
    # The first pair scores about 0.56: follow_up by default, send under the policy published here.
    request = body(0, distinct=False)
    for _ in range(4):  # every process has read (and keeps) the policy in force before
        assert {_version_seen(cluster, r, request) for r in cluster.replicas} == {(1, "follow_up")}
    policy = Policy("default", (Band(0.0, 0.5, "escalate"), Band(0.5, 1.0, "send")))
    store = Store.open(cluster.url)
    try:
        published = store.publish_policy(policy, author="replica test")
    finally:
        store.close()
    t0 = time.monotonic()
    time.sleep(POLICY_REFRESH_S + SLACK_S)
    seen = [
        (round(time.monotonic() - t0, 2), r.name, *_version_seen(cluster, r, request))
        for _ in range(5)
        for r in cluster.replicas
    ]
    stale = [s for s in seen if s[2:] != (published.version, "send")]
    assert not stale, f"the old policy {POLICY_REFRESH_S + SLACK_S} s after publishing: {stale}"
    print(f"policy v{published.version} answered by every replica {seen[0][0]} s after publishing")


def test_revoked_key_is_refused_on_every_replica_within_its_ttl(cluster: Cluster) -> None:
    headers = {"Authorization": f"Bearer {cluster.doomed_key}"}
    request = body(1, distinct=False)

    def status(replica: Replica) -> int:
        return httpx2.post(
            f"{replica.base_url}/v1/guard", json=request, headers=headers, timeout=30
        ).status_code

    # Used on every process first, so every one of them remembers it as valid (the worst case).
    for _ in range(6):
        assert {status(r) for r in cluster.replicas} == {200}
    store = Store.open(cluster.url)
    try:
        assert store.revoke_api_key(cluster.doomed_key_id)
    finally:
        store.close()
    t0 = time.monotonic()
    seen: list[tuple[float, str, int]] = []
    while time.monotonic() - t0 < KEY_TTL_S + SLACK_S + 1.0:
        for replica in cluster.replicas:
            sent = time.monotonic() - t0
            seen.append((sent, replica.name, status(replica)))
        time.sleep(0.05)
    assert {code for _, _, code in seen} <= {200, 401}
    late = [s for s in seen if s[0] > KEY_TTL_S + SLACK_S and s[2] != 401]
    assert not late, f"the revoked key still worked after {KEY_TTL_S + SLACK_S} s: {late[:5]}"
    assert {name for _, name, code in seen if code == 401} == {"A", "B"}
    last_ok = max((t for t, _, code in seen if code == 200), default=0.0)
    print(f"revoked key: last accepted {last_ok:.2f} s after the revocation")


def test_sigkill_of_a_replica_and_a_worker_mid_load_loses_nothing_answered(cluster: Cluster) -> None:
    """SQL's decisions table is locked from 1 s on (writers wait; decisions wait in the spools), then
    replica B and one of A's workers are killed with SIGKILL. Uvicorn starts a new worker for A,
    which adopts the dead worker's segments (and not the live sibling's); B, started again on its
    spool folder, replays its own."""
    a_before = cluster.a.worker_pids()
    victim = min(a_before)
    b_proc = cluster.b.proc
    assert b_proc is not None
    b_pid = b_proc.pid
    pg = psycopg.connect(make_url(cluster.url).set(drivername="postgresql").render_as_string(False))
    spooled: dict[str, set[int]] = {}

    def lock() -> None:
        pg.execute("LOCK TABLE decisions IN SHARE MODE")  # reads go on; every insert waits

    def kill() -> None:
        spooled["A"] = spool_owners(cluster.a.spool_root)[1]
        spooled["B"] = spool_owners(cluster.b.spool_root)[1]
        os.kill(b_pid, signal.SIGKILL)
        os.kill(victim, signal.SIGKILL)

    bodies = [body(i, distinct=True) for i in range(1000, 1400)]
    try:
        load = spread(cluster, bodies, until=5.0, schedule=[(1.0, lock), (3.5, kill)])
        b_proc.wait(10)
        assert b_proc.returncode == -signal.SIGKILL
        received = set(load.decisions)
        assert len(received) > 40, f"too few decisions to prove anything ({len(load.failures)} failed)"
        assert load.failures, "the kill came after the load: nothing was tested"
        assert spooled["B"] == {b_pid} and victim in spooled["A"], "the killed processes spooled nothing"
        in_sql = set(logged(cluster.url))
        assert received - in_sql, "SQL had every decision at the kill: the spools were not tested"
    finally:
        pg.rollback()
        pg.close()
    at_kill = len(received - in_sql)

    # A's new worker and a new B replay what the dead ones left; nothing else is touched.
    cluster.a.wait_started(3)
    cluster.b.start()
    cluster.b.wait_started(1)
    wait_for(lambda: set(cluster.received) <= set(logged(cluster.url)), 60, "the spools to be replayed")
    assert_recorded_once(cluster.url, cluster.received)
    wait_for(lambda: b_pid not in spool_owners(cluster.b.spool_root)[1], 10, "B's old segments to go")
    wait_for(lambda: victim not in spool_owners(cluster.a.spool_root)[1], 10, "the dead worker's to go")
    a_after = cluster.a.worker_pids()
    assert len(a_after) == 2 and victim not in a_after and (a_before - {victim}) <= a_after
    assert "replaying" in cluster.b.log_text()
    print(
        f"{len(received)} answered during the load, {at_kill} of them only in the spools at the kill,"
        f" {len(load.failures)} requests failed (in flight or refused while down); all recorded once"
    )
