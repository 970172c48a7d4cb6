"""What is in force per channel, read from SQL and kept for a while: the shared part of the policy
book (guard/pipeline.py) and the score-map book (guard/calibration.py); and ``bounded``, the one way
the guard waits for a blocking call (SQL) under a deadline.

A channel's first request waits for its value (at most ``timeout_s``); after that requests never
wait: a value older than ``ttl_s`` makes the next request start one re-read (shared by every request
meanwhile) and is answered with the value known. While started (:meth:`ChannelBook.start`), every
channel known is also re-read every ``ttl_s`` in the background, whether requests come or not. When
the read fails, the subclass's ``_fallback`` says what stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
V = TypeVar("V")


async def bounded(timeout_s: float, fn: Callable[..., V], *args: Any) -> V:
    """Run the blocking ``fn(*args)`` in a worker thread and wait at most ``timeout_s`` for it.

    Past the deadline TimeoutError is raised; the thread is left to finish (or fail) on its own,
    so a database that accepts connections but never answers cannot hold a request. A task
    cancelled while it waits is cancelled (``asyncio.wait_for`` on Python 3.11 can swallow a
    cancel that arrives as the thread finishes: a stopping loop then ran on and its stop hung).
    """
    async with asyncio.timeout(timeout_s):
        return await asyncio.to_thread(fn, *args)


class ChannelBook(Generic[T]):
    """A value per channel, read by ``_read`` and kept ``ttl_s`` (see the module docstring)."""

    def __init__(self, ttl_s: float = 2.0, timeout_s: float = 2.0) -> None:
        self._ttl = ttl_s
        self._timeout = timeout_s
        self._cache: dict[str, tuple[float, T]] = {}
        self._loading: dict[str, asyncio.Task[T]] = {}
        self._generation = 0
        self._refresher: asyncio.Task[None] | None = None

    @property
    def refresh_s(self) -> float:
        """How often the values in force are re-read (a published one is used within this)."""
        return self._ttl

    async def get(self, channel: str) -> T:
        hit = self._cache.get(channel)
        if hit is None:
            return await asyncio.shield(self._reload(channel))
        if hit[0] <= time.monotonic():
            self._reload(channel)
        return hit[1]

    def known(self, channel: str) -> tuple[bool, T | None]:
        """(True, the value) without waiting when the channel's value was read before (a stale one
        starts a re-read, as ``get`` does); (False, None) when ``get`` would have to wait."""
        hit = self._cache.get(channel)
        if hit is None:
            return False, None
        if hit[0] <= time.monotonic():
            self._reload(channel)
        return True, hit[1]

    def invalidate(self) -> None:
        """Forget every value (one was published here); reads already running are not kept."""
        self._generation += 1
        self._cache.clear()
        self._loading.clear()

    def start(self) -> None:
        """Re-read every known channel's value every ``ttl_s`` in the background (until :meth:`stop`)."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="channel-refresh")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._ttl)
            for channel in list(self._cache):
                await asyncio.shield(self._reload(channel))  # never raises: a failed read keeps the last

    def _reload(self, channel: str) -> asyncio.Task[T]:
        task = self._loading.get(channel)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(channel, self._generation))
            self._loading[channel] = task
        return task

    async def _load(self, channel: str, generation: int) -> T:
        try:
            value = await self._read(channel)
        except Exception as exc:
            value = self._fallback(channel, exc)
        else:
            self._was_read(value)
        if generation == self._generation:
            self._cache[channel] = (time.monotonic() + self._ttl, value)
            self._loading.pop(channel, None)
        return value

    def stale(self, channel: str) -> tuple[bool, T | None]:
        """(True, the last value read) for ``_fallback``; (False, None) before the first read."""
        hit = self._cache.get(channel)
        return (False, None) if hit is None else (True, hit[1])

    async def _read(self, channel: str) -> T:
        raise NotImplementedError

    def _fallback(self, channel: str, exc: Exception) -> T:
        """What stands when ``_read`` failed with ``exc``."""
        raise NotImplementedError

    def _was_read(self, value: T) -> None:
        """A value was read (a subclass may keep a copy of it)."""
