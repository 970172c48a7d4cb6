"""Slow clients, clients that leave mid-request, and text no database can store."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import pytest

from guard.store import Store, migrate
from tests.test_faults import guard_server

pytestmark = pytest.mark.integration


def connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=10)


def head(length: int) -> bytes:
    return (
        "POST /v1/guard HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_response(s: socket.socket) -> str:
    """The whole response: headers and a Content-Length body may arrive in separate packets."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head_part.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head_part + b"\r\n\r\n" + body).decode(errors="replace")


def count(url: str) -> int:
    store = Store.open(url)
    try:
        return store.count_decisions()
    finally:
        store.close()


def test_a_slow_upload_is_cut_off_and_a_client_that_leaves_writes_nothing(
    sqlite_url: str, tmp_path: Path
) -> None:
    migrate(sqlite_url)
    body = json.dumps({"question": "口袋开线怎么办？", "reply": "我们会处理"}).encode()
    with guard_server(sqlite_url, tmp_path / "spool", body_timeout_s=0.5) as base_url:
        # Slow: a few bytes, then nothing.
        with connect(base_url) as s:
            t = time.perf_counter()
            s.sendall(head(len(body)) + body[:10])
            answer = read_response(s)
            took = time.perf_counter() - t
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "body_timeout" in answer and took < 3
        # Gone mid-body: half the body, then the connection closes.
        for _ in range(5):
            with connect(base_url) as s:
                s.sendall(head(len(body)) + body[: len(body) // 2])
        time.sleep(0.5)
        ok = httpx2.post(base_url + "/v1/guard", json={"question": "q", "reply": "r"}, timeout=10)
        assert ok.status_code == 200
        assert httpx2.get(base_url + "/readyz", timeout=10).status_code == 200
    assert count(sqlite_url) == 1  # only the complete request was decided and logged


@pytest.mark.parametrize("text", ["\ud800 lone surrogate", "nul \u0000 byte"])
def test_text_no_database_can_store_is_refused_and_does_not_block_the_log(
    pg_url: str, tmp_path: Path, text: str
) -> None:
    migrate(pg_url)
    with guard_server(pg_url, tmp_path / "spool") as base_url:
        raw = json.dumps({"question": text, "reply": "我们会处理"}).encode()  # \ud800 escaped, valid JSON
        bad = httpx2.post(
            base_url + "/v1/guard", content=raw, headers={"content-type": "application/json"}, timeout=10
        )
        assert 400 <= bad.status_code < 500, bad.text
        good = httpx2.post(base_url + "/v1/guard", json={"question": "q", "reply": "r"}, timeout=10)
        assert good.status_code == 200
        deadline = time.monotonic() + 10
        while count(pg_url) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert count(pg_url) == 1
