"""The resources of the chatbot integrations (issue 4): API keys, handoff webhooks, the proxy.

Opened in the guard app's lifespan after the pipeline, closed there before it.
"""

from __future__ import annotations

import asyncio
import logging

from guard.handoff import Handoff, HandoffSink
from guard.keys import KeyRing, ensure_first_key
from guard.metrics import Metrics
from guard.pipeline import DecisionSink, Guard
from guard.proxy import Proxy
from guard.settings import Settings
from guard.ssrf import HostAllowlist, ImageFetcher
from guard.store import Store

log = logging.getLogger(__name__)


class Integrations:
    def __init__(self, keys: KeyRing, handoff: Handoff, proxy: Proxy) -> None:
        self.keys = keys
        self.handoff = handoff
        self.proxy = proxy

    @classmethod
    async def open(
        cls, settings: Settings, store: Store, guard: Guard, sink: DecisionSink, metrics: Metrics
    ) -> Integrations:
        keys = KeyRing(store, settings)
        first = await asyncio.to_thread(ensure_first_key, store, settings)
        if first is not None:
            log.warning(
                "no API key existed and the guard listens on %s, so one was created for channel "
                "'default'. It is shown only this once; clients send it as 'Authorization: Bearer <key>':"
                "\n\n    %s\n",
                settings.host,
                first,
            )
        handoff = Handoff(store, settings, metrics)
        handoff.start()
        guard.sink = HandoffSink(sink, handoff)
        fetcher = ImageFetcher(
            HostAllowlist.parse(settings.image_fetch_allow_hosts),
            max_bytes=settings.max_body_bytes,
            timeout_s=settings.image_fetch_timeout_s,
        )
        return cls(keys, handoff, Proxy(settings, guard, fetcher))

    async def close(self) -> None:
        await self.proxy.close()
        await self.handoff.stop()
