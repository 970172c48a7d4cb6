"""The shipped nginx example (examples/nginx/guard.conf) in front of a real `guard serve`: it
proxies the API, cuts a slowloris at its header deadline and refuses an oversized header itself.
Skips where nginx is not installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.serving import closed_port
from tests.test_http_limits import connect, decide, serve, trickle

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nginx" / "guard.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def local_config(guard_port: int, port: int) -> str:
    """The example with its TLS listener swapped for plain HTTP on loopback, pointed at ``guard_port``."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        if line.strip().startswith("ssl_"):
            continue
        line = line.replace("listen 443 ssl;", f"listen 127.0.0.1:{port};")
        line = line.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{guard_port};")
        lines.append(line)
    return "\n".join(lines)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if NGINX is None:
        if os.environ.get("CI") == "true":  # `make test` installs it: in CI a missing nginx is a failure
            pytest.fail("nginx is not installed (make test installs Debian's nginx-light)")
        pytest.skip("nginx is not installed")
    tmp = tmp_path_factory.mktemp("nginx")
    with serve(tmp) as (guard_port, _pid):
        port = closed_port()
        (tmp / "site.conf").write_text(local_config(guard_port, port))
        (tmp / "nginx.conf").write_text(
            f"daemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\nevents {{}}\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n"
            f"  proxy_temp_path {tmp}/proxy;\n  include {tmp}/site.conf;\n}}\n"
        )
        check = subprocess.run(
            [NGINX, "-t", "-p", str(tmp), "-c", str(tmp / "nginx.conf")], capture_output=True
        )
        assert check.returncode == 0, check.stderr.decode()
        with (tmp / "nginx.out").open("wb") as out:
            proc = subprocess.Popen(
                [NGINX, "-p", str(tmp), "-c", str(tmp / "nginx.conf")], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx2.HTTPError:
                    assert proc.poll() is None and time.monotonic() < deadline, "nginx did not start"
                    time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def test_the_api_and_the_admin_pages_through_nginx(proxied: int) -> None:
    base = f"http://127.0.0.1:{proxied}"
    assert httpx2.get(f"{base}/healthz", timeout=5).status_code == 200
    answer = decide(base)
    assert answer.status_code == 200, answer.text
    assert answer.json()["action"]
    assert httpx2.get(f"{base}/admin/login", timeout=5).status_code == 200


def test_nginx_cuts_a_slowloris_at_its_header_timeout(proxied: int) -> None:
    with connect(proxied) as s:
        answer, took = trickle(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X" * 200, 0.5, 16)
    assert answer != b"still open"
    assert took < 12.5  # client_header_timeout 10s


def test_nginx_refuses_an_oversized_header(proxied: int) -> None:
    answer = httpx2.get(f"http://127.0.0.1:{proxied}/healthz", headers={"X-Big": "a" * 40_000}, timeout=5)
    assert answer.status_code in (400, 431)
    assert httpx2.get(f"http://127.0.0.1:{proxied}/healthz", timeout=5).status_code == 200


def test_monitoring_routes_are_for_allowed_addresses(proxied: int) -> None:
    # 127.0.0.1 is allowed by the example; the rule exists (nginx -t passed with it).
    assert httpx2.get(f"http://127.0.0.1:{proxied}/readyz", timeout=5).status_code in (200, 503)
