"""Serve an ASGI app with a real uvicorn server on a free loopback port, in a thread; or run a real
``guard serve`` process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import uvicorn
from starlette.types import ASGIApp

BIN = Path(sys.executable).parent
"""Where the venv's commands are (``guard``, ``schemathesis``)."""


@contextmanager
def serve(app: ASGIApp, *, start_timeout_s: float = 20.0) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:<port>``) while ``app`` is served; stop it after."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port(first: int, last: int) -> int:
    """A loopback port in ``[first, last]`` that nothing listens on."""
    for port in range(first, last + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{last}")


def stop(proc: subprocess.Popen[bytes], *, wait_s: float) -> None:
    """Stop a server process: SIGTERM, and SIGKILL when it has not exited ``wait_s`` seconds later."""
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def serve_env(database_url: str, spool_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a ``guard serve`` process: this one's, with the database, the spool,
    no OCR, no Redis (a GUARD_REDIS_URL of the test run is dropped) and ``settings`` (GUARD_*)."""
    env = {**os.environ, "GUARD_DATABASE_URL": database_url, "GUARD_SPOOL_DIR": str(spool_dir)}
    env["GUARD_OCR"] = "off"
    env.pop("GUARD_REDIS_URL", None)
    return env | settings


@contextmanager
def guard_serve(
    env: dict[str, str], port: int, log_path: Path, *, preexec_fn: Callable[[], None] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``guard serve`` on loopback ``port`` with ``env`` (``serve_env``), its output appended
    to ``log_path``, once /healthz answers (``preexec_fn``: run in the child before it starts, e.g.
    to set a resource limit); stopped after, unless it has already exited."""
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "guard"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"guard serve did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            stop(proc, wait_s=30)
