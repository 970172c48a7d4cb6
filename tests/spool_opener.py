"""A process of tests/test_spool.py's start-together test (a module of its own: spawned processes
import it, and it imports only the spool)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guard.spool import Spool


def open_together(folder: str, rounds: int, barrier: Any, results: Any) -> None:
    """In each round, open a spool in a fresh folder at the same moment as the other processes."""
    for r in range(rounds):
        spool = Spool(Path(folder) / str(r), "sqlite:///x.db")
        barrier.wait(30)
        try:
            found = spool.open()
        except Exception as exc:
            results.put((r, "error", repr(exc), 0))
            barrier.wait(30)
            continue
        results.put((r, "ok", len(found), len(spool._adopted_locks)))
        spool.append(b'{"d":{}}\n', 1)  # a live segment holding a record
        barrier.wait(30)  # every process has opened its spool before any closes its own
        spool.close()
