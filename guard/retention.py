"""Keeping customers' photos no longer than GUARD_IMAGE_RETENTION_DAYS: a background sweep that
deletes the expired ones (every replica may run it: a delete is idempotent)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from guard.store import Store, bounded
from guard.tables import utcnow

log = logging.getLogger("guard.retention")

SWEEP_EVERY_S = 3600.0


class ImageRetention:
    """Deletes photos older than ``days`` (their cases no longer pending) at start and then hourly."""

    def __init__(self, store: Store, days: float, *, every_s: float = SWEEP_EVERY_S) -> None:
        self._store = store
        self._days = days
        self._every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def cutoff(self, now: datetime | None = None) -> datetime:
        """Photos last stored before this have expired."""
        return (now or utcnow()) - timedelta(days=self._days)

    def expired(self, stored_at: datetime) -> bool:
        return stored_at < self.cutoff()

    async def sweep(self) -> int:
        """Delete the expired photos now; the number deleted (0 when SQL does not answer)."""
        try:
            deleted = await bounded(60.0, self._store.delete_expired_images, self.cutoff())
        except Exception as exc:
            log.warning(
                "image retention: the sweep failed (%s); next in %.0f s", type(exc).__name__, self._every_s
            )
            return 0
        if deleted:
            log.info("image retention: deleted %d photos older than %g days", deleted, self._days)
        return deleted

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="image-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(self._every_s)
