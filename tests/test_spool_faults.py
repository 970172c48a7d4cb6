"""A spool append that fails (ENOSPC, EIO) leaves no partial line, and replay reads every complete
record, even one glued to a torn line. The disk is a real, tiny tmpfs where the test may mount one
(root), and the failure is also injected at the write call."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from guard import spool as spool_module
from guard.spool import Spool, encode_record, read_segment
from tests.test_spool import record

URL = "sqlite:///spool-faults.db"


def _lines(spool: Spool) -> list[bytes]:
    return [line for seg in sorted(spool.root.glob("*.jsonl")) for line in seg.read_bytes().splitlines(True)]


def _replayed_ids(spool: Spool) -> list[str]:
    ids = []
    for seg in sorted(spool.root.glob("*.jsonl")):
        records, _bad = read_segment(seg)
        ids += [r.row.id for r in records]
    return ids


@pytest.mark.parametrize("truncate_fails", [False, True])
def test_a_failed_append_leaves_no_partial_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, truncate_fails: bool
) -> None:
    spool = Spool(tmp_path, URL)
    spool.open()
    spool.append(encode_record(record(1)), 1)
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "write", half_then_enospc)
    if truncate_fails:
        monkeypatch.setattr(
            spool_module.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "EIO"))
        )
    with pytest.raises(OSError):
        spool.append(encode_record(record(2)), 1)
    monkeypatch.undo()
    spool.append(encode_record(record(3)), 1)  # acknowledged: must be read back
    if truncate_fails:
        assert len(list(spool.root.glob("*.jsonl"))) == 2, "the next append went to a new segment"
    else:
        assert all(line.endswith(b"\n") for line in _lines(spool))
        assert len(_lines(spool)) == 2
    assert _replayed_ids(spool) == [record(1).row.id, record(3).row.id]
    spool.close()


def test_replay_reads_every_complete_record_after_a_torn_one(tmp_path: Path) -> None:
    seg = tmp_path / "x.00000001.jsonl"
    good = [encode_record(record(i, image=i == 4)) for i in range(6)]
    torn = good[1][: len(good[1]) // 3]
    # a torn line in the middle (its newline came later), a torn line glued to the next record
    seg.write_bytes(good[0] + torn + b"\n" + good[2] + good[3][:40] + good[4] + good[5])
    records, bad = read_segment(seg)
    assert [r.row.id for r in records] == [record(i).row.id for i in (0, 2, 4, 5)]
    assert records[2] == record(4, image=True)
    assert bad == 2


@pytest.mark.parametrize("cut", range(1, 120, 7))
def test_any_torn_prefix_glued_to_a_record_is_skipped_and_the_record_read(tmp_path: Path, cut: int) -> None:
    seg = tmp_path / "x.00000001.jsonl"
    seg.write_bytes(encode_record(record(1))[:cut] + encode_record(record(2)))
    records, bad = read_segment(seg)
    assert [r.row.id for r in records] == [record(2).row.id] and bad == 1


@contextlib.contextmanager
def tiny_disk(tmp_path: Path, size: str = "64k") -> Iterator[Path]:
    """A real filesystem that fills up: a tmpfs of ``size`` (skips where mounting is not allowed)."""
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_loses_no_acknowledged_record(tmp_path: Path) -> None:
    with tiny_disk(tmp_path) as disk:
        spool = Spool(disk, URL)
        spool.open()
        acked: list[str] = []
        failures = 0
        for i in range(2000):
            try:
                spool.append(encode_record(record(i, text="口袋开线" * (i % 9 + 1))), 1)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                failures += 1
                if failures > 20:
                    break
            else:
                acked.append(record(i).row.id)
        assert failures > 20 and len(acked) > 10
        assert all(line.endswith(b"\n") for line in _lines(spool)), "no partial line after ENOSPC"
        assert _replayed_ids(spool) == acked
        spool.close()
