"""The HTTP layer of a real `guard serve` under slow, oversized and half-sent requests (issue 12,
item 13), over raw sockets: headers sent a byte at a time, bodies that never finish (on every kind
of route, the admin sign-in included), a 150 MB header, and more half-open connections than the
process has file descriptors for."""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from guard.store import migrate
from tests.serving import closed_port, guard_serve, serve_env
from tests.test_faults_clients import read_response

pytestmark = pytest.mark.integration
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
GRACE_S = 2.0  # guard.http_server.BODY_GRACE_S
MAX_CONNECTIONS = 60
NOFILE = 300


@contextmanager
def serve(tmp: Path, *, nofile: int | None = None, **env_extra: str) -> Iterator[tuple[int, int]]:
    """A real ``guard serve`` on a free port; yields (port, pid). ``nofile``: its RLIMIT_NOFILE."""
    url = f"sqlite:///{tmp / 'guard.db'}"
    migrate(url)
    port = closed_port()
    env = serve_env(
        url,
        tmp / "spool",
        GUARD_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        GUARD_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        **env_extra,
    )

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with guard_serve(env, port, tmp / "guard.log", preexec_fn=None if nofile is None else limit_fds) as proc:
        yield port, proc.pid


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """One `guard serve` for the module: 300 file descriptors, at most 60 connections."""
    tmp = tmp_path_factory.mktemp("http")
    with serve(tmp, nofile=NOFILE, GUARD_MAX_CONNECTIONS=str(MAX_CONNECTIONS)) as found:
        yield found


@pytest.fixture
def guard(served: tuple[int, int]) -> int:
    return served[0]


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def trickle(s: socket.socket, data: bytes, every_s: float, give_up_s: float) -> tuple[bytes, float]:
    """Send ``data`` a byte every ``every_s``; return (what the server answered, seconds taken)
    as soon as it answers or closes, or (b"still open", ...) after ``give_up_s``."""
    s.settimeout(every_s)
    start = time.monotonic()
    for i in range(len(data)):
        if time.monotonic() - start > give_up_s:
            break
        try:
            s.sendall(data[i : i + 1])
        except OSError:
            return b"", time.monotonic() - start
        try:
            got = s.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return b"", time.monotonic() - start
        return got, time.monotonic() - start
    return b"still open", time.monotonic() - start


def get(port: int, path: str = "/healthz", timeout: float = 5.0) -> bytes:
    with connect(port, timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def decide(base: str) -> httpx2.Response:
    """A decision asked of the guard at ``base`` (``http://host:port``), over a connection of its own."""
    return httpx2.post(
        f"{base}/v1/guard",
        json={"question": "the pocket seam came open", "reply": "We will replace the trousers."},
        timeout=10,
    )


def test_headers_sent_a_byte_at_a_time_get_408_at_the_header_deadline(guard: int) -> None:
    with connect(guard) as s:
        answer, took = trickle(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X" * 100, 0.2, 8)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert HEADER_TIMEOUT_S - 0.5 < took < HEADER_TIMEOUT_S + 1.5


def test_a_kept_alive_connection_has_the_same_deadline_for_its_next_headers(guard: int) -> None:
    with connect(guard) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s).startswith("HTTP/1.1 200")
        answer, took = trickle(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X" * 100, 0.2, 8)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert took < HEADER_TIMEOUT_S + 1.5


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        # The check API reads its body: its own 408 body_timeout at GUARD_BODY_TIMEOUT_S.
        ("/v1/guard", "application/json"),
        # The admin sign-in reads a form: a 408 page at GUARD_BODY_TIMEOUT_S too.
        ("/admin/login", "application/x-www-form-urlencoded"),
    ],
)
def test_a_body_that_never_finishes_gets_408(guard: int, path: str, content_type: str) -> None:
    with connect(guard) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: 100000\r\n\r\n".encode()
        )
        answer, took = trickle(s, b"a" * 1000, 0.2, 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert took < BODY_TIMEOUT_S + 1.5


def test_a_body_no_route_reads_cannot_hold_the_connection(guard: int) -> None:
    """/healthz answers without reading the body; the trickling body is cut at the HTTP layer's
    body deadline all the same (on main it held the connection for ever)."""
    with connect(guard) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        assert read_response(s).startswith("HTTP/1.1 200")
        answer, took = trickle(s, b"a" * 1000, 0.2, 12)
    assert answer == b"", answer[:200]  # closed, not answered again
    assert took < BODY_TIMEOUT_S + GRACE_S + 1.5


def test_an_oversized_header_gets_431_at_once(guard: int) -> None:
    with connect(guard) as s:
        start = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"GUARD_MAX_HEADER_BYTES" in answer
    assert time.monotonic() - start < 1.0


def test_a_150_mb_header_is_cut_off_and_does_not_stall_others(guard: int) -> None:
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            start = time.monotonic()
            assert get(guard).startswith(b"HTTP/1.1 200")
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    sent = 0
    try:
        time.sleep(0.2)
        with connect(guard) as s:
            start = time.monotonic()
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            chunk = b"a" * (1 << 20)
            try:
                while sent < 150 << 20:
                    s.sendall(chunk)
                    sent += len(chunk)
                s.sendall(b"\r\n\r\n")
                answer = s.recv(65536)
            except OSError:
                answer = b""
            took = time.monotonic() - start
        time.sleep(0.3)
    finally:
        stop.set()
        prober.join(10)
    assert not answer.startswith(b"HTTP/1.1 200"), "the 150 MB header was accepted"
    assert sent < 20 << 20, f"the server read {sent >> 20} MB of one header"
    assert took < 2.0
    assert latencies and max(latencies) < 1.0, f"/healthz took up to {max(latencies):.2f}s"


def test_past_the_cap_slow_heads_then_slow_bodies_make_room_for_a_normal_request(guard: int) -> None:
    """60 connections at most: 50 half-sent heads and 50 bodies that never finish fill it; a new
    request still gets through (the slowest to send are closed to make room)."""
    slow = []
    try:
        for i in range(100):
            s = connect(guard)
            if i % 2:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            else:
                s.sendall(
                    b"POST /v1/guard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{"
                )
            slow.append(s)
        time.sleep(0.3)
        start = time.monotonic()
        answer = get(guard, timeout=5)
        took = time.monotonic() - start
        check = decide(f"http://127.0.0.1:{guard}")
        closed = 0
        for s in slow:
            s.settimeout(0.01)
            try:
                closed += s.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                closed += 1
    finally:
        for s in slow:
            s.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert took < 2.0
    assert check.status_code == 200, check.text
    assert closed >= 100 - MAX_CONNECTIONS, f"only {closed} of the slow connections were closed"


def test_more_half_open_connections_than_file_descriptors_do_not_lock_out_a_request(
    served: tuple[int, int],
) -> None:
    """With 300 file descriptors, 400 half-sent requests: a normal request is still answered
    (on main accept() failed with EMFILE and nothing was answered)."""
    port, pid = served
    half_open = []
    try:
        for _ in range(400):
            s = connect(port)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            half_open.append(s)
        time.sleep(0.3)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        start = time.monotonic()
        answer = get(port, timeout=5)
        took = time.monotonic() - start
        # A decision too: SQL and the spool still have file descriptors to work with.
        check = decide(f"http://127.0.0.1:{port}")
    finally:
        for s in half_open:
            s.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert took < 2.0
    assert check.status_code == 200, check.text
    assert fds < MAX_CONNECTIONS + 64, f"{fds} descriptors open of {NOFILE}"


def test_guard_serve_passes_its_limits_to_uvicorn_and_warns_of_open_monitoring(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sqlite_url: str
) -> None:
    import uvicorn

    from guard.cli import main
    from guard.http_server import GuardProtocol

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    monkeypatch.setattr("guard.app.limit_malloc_arenas", lambda: True)
    for name, value in {
        "GUARD_DATABASE_URL": sqlite_url,
        "GUARD_HEADER_TIMEOUT_S": "3",
        "GUARD_MAX_HEADER_BYTES": "8192",
        "GUARD_MAX_CONNECTIONS": "50",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("GUARD_METRICS_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 0
    protocol = seen["http"]
    assert isinstance(protocol, type) and issubclass(protocol, GuardProtocol)
    assert (protocol.limits.header_timeout_s, protocol.limits.max_header_bytes) == (3.0, 8192)
    assert protocol.limits.max_connections == 50
    assert seen["ws"] == "none" and seen["h11_max_incomplete_event_size"] == 8192
    assert "GUARD_METRICS_KEY" in capsys.readouterr().err

    monkeypatch.setenv("GUARD_METRICS_KEY", "k" * 20)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 0
    assert "GUARD_METRICS_KEY" not in capsys.readouterr().err
