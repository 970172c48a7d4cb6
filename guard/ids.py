"""Random ids (decisions, escalations, deliveries): 128 bits from the OS, read 4 KiB at a time.

``uuid.uuid4()`` reads 16 bytes with a system call that releases the GIL; on a busy event loop,
taking the GIL back can wait for another thread's whole switch interval (up to 5 ms), and it
showed as 9% of a cache hit's time in profiles. Reading the bytes 256 ids at a time keeps the
ids exactly as unpredictable (same source) and makes that wait rare.
"""

from __future__ import annotations

import os
import threading

_CHUNK = 4096
_lock = threading.Lock()
_buf = b""
_pos = 0


def new_id() -> str:
    """32 lower-case hex digits (the shape of ``uuid4().hex``), 128 random bits."""
    global _buf, _pos
    with _lock:
        if _pos >= len(_buf):
            _buf, _pos = os.urandom(_CHUNK), 0
        raw = _buf[_pos : _pos + 16]
        _pos += 16
    return raw.hex()
