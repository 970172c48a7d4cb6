"""The decision spool: a durable, append-only local journal of decisions on their way to SQL.

Every decision is appended here, and fsync'd, before its response is sent; SQL gets it later,
in batches (guard/decision_log.py). A segment file is deleted only once SQL holds every decision
in it, so a slow, read-only or dead database, or a guard killed with SIGKILL, loses nothing: on
the next start the leftover segments are replayed (``Store.record`` is idempotent, nothing is
doubled).

Layout: ``<GUARD_SPOOL_DIR>/<key of the database URL>/`` holds, per running guard process, a lock
file ``<owner>.lock`` (held with ``flock`` while the process lives) and its segments
``<owner>.<seq>.jsonl``: one JSON document per line. The owner names the process
(``<start time>-<pid>-<random>``) and a process writes only its own segments. A process that starts
finds the segments of owners whose lock is free (dead processes) and adopts them: of two processes
starting together exactly one gets a dead owner's lock, and the owners alive are left alone. So the
workers of ``guard serve --workers N`` (or a few guards on one host) may share one spool directory,
and a worker that uvicorn starts again in place of a killed one replays what the killed one left.
``flock`` is local to a host: replicas on different hosts each have a spool on their own disk,
never one shared over the network. Segments are kept per database so a spool is never replayed
into another database.

A torn line (the process died inside a write, or a write failed half-way) was never acknowledged
to a client; it is skipped on replay, and a complete record glued after it is still read. The
methods here are blocking and thread-safe; the decision log calls them from one worker thread.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from guard.records import DecisionRecord, DecisionRow

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
LOCK_SUFFIX = ".lock"
_NEW_SUFFIX = ".new"
"""A lock file being created (not yet locked): ``<owner>.lock.new``, renamed to ``<owner>.lock``."""
REJECTED_FILE = "rejected.ndjson"
"""Decisions SQL refused for their content (guard/decision_log.py): kept, one spool line each."""


def _shown_url(database_url: str) -> str:
    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable database URL)"


def spool_key(database_url: str) -> str:
    """A directory name for the spool of ``database_url`` (its password is not part of it)."""
    return hashlib.sha256(_shown_url(database_url).encode()).hexdigest()[:16]


# Records <-> lines ------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON for the two types a record holds that JSON lacks (json.dumps calls this for them only)."""
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode()}
    raise TypeError(f"a spool record cannot hold {type(value).__name__}")


def _typed(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            if "$dt" in value:
                return datetime.fromisoformat(value["$dt"])
            if "$b64" in value:
                return base64.b64decode(value["$b64"])
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return value


def encode_record(record: DecisionRecord) -> bytes:
    """One spool line (ASCII JSON, newline-terminated) holding everything in ``record``."""
    doc = {"d": record.row.columns(), "q": record.queue_item_id, "i": record.image}
    line = json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=_plain)
    return line.encode() + b"\n"


def decode_record(line: bytes) -> DecisionRecord:
    doc = json.loads(line)
    image = doc.get("i")
    return DecisionRecord(
        row=DecisionRow.from_columns(_typed(doc["d"])),
        queue_item_id=doc.get("q"),
        image=None if image is None else tuple(_typed(image)),
    )


_RECORD_START = b'{"d":'
"""How every spool line begins; inside a line it can only start another record glued to a torn one
(strings are written as ASCII JSON, so a quote inside a value is always escaped)."""


def read_segment(path: Path) -> tuple[list[DecisionRecord], int]:
    """The records in a segment and how many torn pieces could not be read.

    A torn write (never acknowledged) is skipped: a last line without its newline, or the start
    of a line that the next, complete record was appended to (read from where that record begins).
    """
    records: list[DecisionRecord] = []
    bad = 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                bad += 1  # torn write: never acknowledged
                continue
            found = _decoded(line)
            if found is None:
                bad += 1
            else:
                records.append(found[0])
                bad += found[1]
    return records, bad


def _decoded(line: bytes) -> tuple[DecisionRecord, int] | None:
    """The record a line ends with and how many torn pieces came before it (None: none readable)."""
    start = 0
    torn = 0
    while start >= 0:
        try:
            return decode_record(line[start:]), torn
        except (ValueError, KeyError, TypeError):
            torn = 1
            start = line.find(_RECORD_START, start + 1)
    return None


# The spool --------------------------------------------------------------------------------------


@dataclass
class _Segment:
    path: Path
    appended: int = 0
    committed: int = 0
    spilled: bool = False
    """Some of its records were not queued in memory: they must be replayed from the file."""


class Spool:
    def __init__(
        self, directory: str | os.PathLike[str], database_url: str, *, segment_bytes: int = 16 << 20
    ) -> None:
        self.root = Path(directory) / spool_key(database_url)
        self._database_url = database_url
        self._segment_bytes = max(1, segment_bytes)
        self._lock = threading.Lock()
        self._owner = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(3)}"
        self._lock_fd: int | None = None
        self._adopted_locks: dict[str, int] = {}
        self._segments: dict[int, _Segment] = {}
        self._seq = 0
        self._fd: int | None = None
        self._size = 0
        self._torn = False
        self.appends = 0
        self.fsyncs = 0

    # Start and stop ---------------------------------------------------------------------------

    def open(self) -> list[Path]:
        """Take this process's place in the spool; return the segments of dead owners to replay."""
        # The lock file is created under a name no other process looks at, locked, and only then
        # renamed into place: a process starting at the same moment (another uvicorn worker) never
        # sees an unlocked lock file of a live owner, so it can neither adopt it nor fail to lock it.
        unlocked = self.root / f"{self._owner}{LOCK_SUFFIX}{_NEW_SUFFIX}"
        for attempt in range(3):  # another process may remove an empty spool folder meanwhile
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(unlocked, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(unlocked, self.root / f"{self._owner}{LOCK_SUFFIX}")
        except BaseException:
            os.close(fd)
            unlocked.unlink(missing_ok=True)
            raise
        self._lock_fd = fd
        note = self.root / "database.txt"
        if not note.exists():
            note.write_text(_shown_url(self._database_url) + "\n")
        orphans = self._adopt()
        self._open_segment(1)
        _fsync_dir(self.root)
        if orphans:
            log.warning(
                "spool: replaying %d segment(s) left by a guard that stopped: %s", len(orphans), self.root
            )
        return orphans

    def _adopt(self) -> list[Path]:
        """Lock the owners of the segments found whose lock is free (dead processes); return their
        segments. Segments are listed before locks are tried: a live owner's lock file is in place
        (and locked) before its first segment exists, so a segment seen always has its owner's lock
        to try. A segment whose lock file is gone altogether (removed by hand) is taken as well."""
        owners = {_owner_of(seg) for seg in self.root.glob(f"*{SEGMENT_SUFFIX}")} - {self._owner}
        orphaned: set[str] = set()
        for owner in sorted(owners):
            fd = self._free_lock(self.root / f"{owner}{LOCK_SUFFIX}")
            if fd is None:
                continue  # alive, or being replayed by another process
            if fd >= 0:
                self._adopted_locks[owner] = fd
            orphaned.add(owner)
        self._drop_dead_locks(owners)
        segments = [seg for seg in self.root.glob(f"*{SEGMENT_SUFFIX}") if _owner_of(seg) in orphaned]
        return sorted(segments, key=_segment_order)

    @staticmethod
    def _free_lock(path: Path) -> int | None:
        """An fd holding ``path``'s lock; None when another process holds it; -1 with no such file."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _drop_dead_locks(self, owners_with_segments: set[str]) -> None:
        """Remove the lock files of dead owners that left no segment (killed before their first)."""
        # (A ``.lock.new`` file is left alone: it is created unlocked, so another process's may be
        # one that is just starting.)
        for path in self.root.glob(f"*{LOCK_SUFFIX}"):
            owner = path.name.split(".", 1)[0]
            if owner == self._owner or owner in owners_with_segments:
                continue
            fd = self._free_lock(path)
            if fd is not None and fd >= 0:
                if not any(self.root.glob(f"{owner}.*{SEGMENT_SUFFIX}")):
                    path.unlink(missing_ok=True)
                os.close(fd)

    def release_adopted(self) -> None:
        """After the adopted segments are replayed: drop the dead owners' lock files."""
        with self._lock:
            for owner, fd in list(self._adopted_locks.items()):
                if not any(self.root.glob(f"{owner}.*{SEGMENT_SUFFIX}")):
                    (self.root / f"{owner}{LOCK_SUFFIX}").unlink(missing_ok=True)
                os.close(fd)
                del self._adopted_locks[owner]

    def close(self) -> int:
        """Delete what SQL holds; keep the rest for the next start. Returns the records kept."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            kept = 0
            for seg in self._segments.values():
                left = seg.appended - seg.committed
                if left <= 0 and not seg.spilled:
                    seg.path.unlink(missing_ok=True)
                else:
                    kept += max(left, 1)
            self._segments.clear()
            for fd in self._adopted_locks.values():
                os.close(fd)
            self._adopted_locks.clear()
            if self._lock_fd is not None:
                if kept == 0:
                    (self.root / f"{self._owner}{LOCK_SUFFIX}").unlink(missing_ok=True)
                os.close(self._lock_fd)
                self._lock_fd = None
            if (
                kept == 0
                and not any(self.root.glob(f"*{SEGMENT_SUFFIX}"))
                and not self.rejected_path.exists()
            ):
                with contextlib.suppress(OSError):  # another process uses it, or it is gone
                    (self.root / "database.txt").unlink(missing_ok=True)
                    self.root.rmdir()
            return kept

    # Writing ----------------------------------------------------------------------------------

    def _open_segment(self, seq: int) -> None:
        path = self.root / f"{self._owner}.{seq:08d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._seq = seq
        self._size = 0
        self._segments[seq] = _Segment(path)

    def _rotate(self) -> None:
        old = self._fd
        assert old is not None
        self._open_segment(self._seq + 1)  # if this fails, the old segment stays the active one
        os.close(old)
        self._torn = False
        _fsync_dir(self.root)
        self._collect()

    def append(self, data: bytes, count: int) -> int:
        """Append ``count`` records (``data``, whole lines) durably; returns their segment number.

        A write or fsync that fails (ENOSPC, EIO) raises, and leaves no partial line behind: the
        segment is truncated back to where the append began or, if even that fails, the next
        append starts a new segment (replay also reads the complete records after a torn line).
        """
        with self._lock:
            if self._fd is None:
                raise RuntimeError("the spool is closed")
            if self._size >= self._segment_bytes or self._torn:
                self._rotate()
            fd, seq, start = self._fd, self._seq, self._size
        # Only the decision log's one spool thread writes, so the fsync runs outside the lock.
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            self._undo(fd, start)
            raise
        with self._lock:
            self._size += len(data)
            self._segments[seq].appended += count
            self.appends += count
            self.fsyncs += 1
        return seq

    def _undo(self, fd: int, start: int) -> None:
        """After a failed append: cut the segment back to ``start``, or move on to a new segment."""
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError:
            log.exception("spool: could not cut a failed append back; the next append starts a new segment")
            with self._lock:
                self._torn = True

    def probe(self) -> None:
        """A small durable write in the spool's folder (raises while the disk is full or failing)."""
        path = self.root / f"{self._owner}.probe"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"probe\n" * 64)
            os.fsync(fd)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)

    @property
    def rejected_path(self) -> Path:
        return self.root / REJECTED_FILE

    def reject(self, line: bytes) -> Path:
        """Keep (fsync'd) a decision SQL refused for its content, for a person to see; returns the file."""
        with self._lock:
            fd = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return self.rejected_path

    # Bookkeeping ------------------------------------------------------------------------------

    def mark_spilled(self, seq: int) -> None:
        with self._lock:
            seg = self._segments.get(seq)
            if seg is not None:
                seg.spilled = True

    def committed(self, counts: Mapping[int, int]) -> None:
        """SQL now holds ``counts[seq]`` more records of segment ``seq``."""
        with self._lock:
            for seq, n in counts.items():
                seg = self._segments.get(seq)
                if seg is not None:
                    seg.committed += n
            self._collect()

    def _collect(self) -> None:
        for seq, seg in list(self._segments.items()):
            if seq != self._seq and not seg.spilled and seg.committed >= seg.appended:
                seg.path.unlink(missing_ok=True)
                del self._segments[seq]

    def take_spilled(self) -> list[Path]:
        """Segments whose records must be replayed from their files (the active one is closed first)."""
        with self._lock:
            active = self._segments.get(self._seq)
            if active is not None and active.spilled and self._fd is not None:
                self._rotate()
            out = []
            for seq, seg in list(self._segments.items()):
                if seq != self._seq and seg.spilled:
                    out.append(seg.path)
                    del self._segments[seq]
            return out

    @property
    def has_spilled(self) -> bool:
        with self._lock:
            return any(seg.spilled for seg in self._segments.values())

    @property
    def pending(self) -> int:
        """Records in this process's segments that SQL does not hold yet (spilled ones counted as 1+)."""
        with self._lock:
            return sum(max(seg.appended - seg.committed, 0) for seg in self._segments.values())

    def discard(self, path: Path) -> None:
        """A replayed segment: SQL holds all of it."""
        path.unlink(missing_ok=True)


def _owner_of(segment: Path) -> str:
    return segment.name.split(".", 1)[0]


def _segment_order(path: Path) -> tuple[str, str]:
    owner, _, rest = path.name.partition(".")
    return owner, rest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_batches(records: list[DecisionRecord], size: int) -> Iterator[list[DecisionRecord]]:
    for i in range(0, len(records), size):
        yield records[i : i + size]
