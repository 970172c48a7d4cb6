"""A private PostgreSQL server for fault tests that stop the database for real (``pg_ctl stop``),
not only cut the connection: initdb in a temporary folder, served on a loopback port of its own.

Skips where the PostgreSQL server binaries are not installed (in CI too: the shared server is
then a service container, and these tests need the binaries). As root the server runs as the
``postgres`` user, which PostgreSQL requires.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import free_port


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


class OwnPostgres:
    def __init__(self, port: int) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin = bin_dir
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="guard-own-pg-"))
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args], capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed: {done.stdout.decode()[-1500:]} {done.stderr.decode()[-1500:]}"
            )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def own_postgres(first_port: int = 17100, last_port: int = 17199) -> Iterator[OwnPostgres]:
    server = OwnPostgres(free_port(first_port, last_port))
    try:
        server.start()
        yield server
    finally:
        server.close()
