"""A real `guard serve` whose spool disk fills up while PostgreSQL is cut off, then SIGKILL: in the
default mode (GUARD_SPOOL_ON_ERROR=503) every decision a client received lands after the restart,
and the full spool shows in /readyz and /metrics. The disk is a real tmpfs (root only: else skipped)."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import httpx2
import pytest

from guard.store import migrate
from tests.promtext import sample
from tests.serving import closed_port, guard_serve, serve_env
from tests.test_faults import drive, logged, proxied, wait_for
from tests.test_spool_faults import tiny_disk

pytestmark = pytest.mark.integration


def fill(disk: Path) -> Path:
    """Write zeros to a file on ``disk`` until ENOSPC; returns the file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_spool_answers_503_and_loses_no_acknowledged_decision(pg_url: str, tmp_path: Path) -> None:
    migrate(pg_url)
    proxy, url = proxied(pg_url)
    port = closed_port()
    base_url = f"http://127.0.0.1:{port}"
    seen: dict[str, object] = {}

    def look() -> None:
        ready = httpx2.get(base_url + "/readyz", timeout=10)
        seen["readyz"] = (ready.status_code, ready.json())
        seen["metrics"] = httpx2.get(base_url + "/metrics", timeout=10).text

    with tiny_disk(tmp_path, "16m") as disk:
        env = serve_env(url, disk / "spool", GUARD_SQL_TIMEOUT_S="1")
        env.pop("GUARD_SPOOL_ON_ERROR", None)  # the default
        filler: list[Path] = []
        try:
            with guard_serve(env, port, tmp_path / "guard.log") as proc:
                result = drive(
                    base_url,
                    7.0,
                    schedule=[
                        (1.5, proxy.cut),  # decisions now wait in the spool (or in memory)
                        (3.0, lambda: filler.append(fill(disk))),
                        (4.5, look),
                        (6.0, lambda: os.kill(proc.pid, signal.SIGKILL)),
                    ],
                )
                proc.wait(10)
                assert proc.returncode == -signal.SIGKILL
            received = set(result.decisions)
            refused = [f for f in result.failures if "HTTP 503" in f and "spool_unavailable" in f]
            assert len(received) > 30, "too few decisions to prove anything"
            assert refused, f"the full spool never answered 503: {result.failures[:3]}"
            status, ready = seen["readyz"]  # type: ignore[misc]
            assert (
                status == 503 and ready["checks"]["spool"] is False and ready["spool"]["state"] == "failing"
            )
            assert sample(str(seen["metrics"]), "guard_spool_failing") == 1
            filler[0].unlink()
            proxy.mend()
            assert len(set(logged(url)) & received) < len(received), "SQL had them all: nothing was tested"
            with guard_serve(env, port, tmp_path / "guard.log"):
                wait_for(lambda: received <= set(logged(url)), 60, "the spool to be replayed")
                assert httpx2.get(base_url + "/readyz", timeout=10).json()["checks"]["spool"] is True
            rows = logged(url)
            assert received <= set(rows), f"{len(received - set(rows))} acknowledged decisions lost"
            assert {k: rows[k][0] for k in received} == result.decisions
            print(f"received {len(received)}, refused 503 {len(refused)}")
        finally:
            proxy.close()
