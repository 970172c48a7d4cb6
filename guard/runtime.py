"""The resources of one running guard, opened whole and closed whole: ``Runtime.open(settings)``.

The server's lifespan opens it and yields it as lifespan state (``{"runtime": rt}``); handlers
take it with :func:`runtime`. The in-process middleware (``LocalGuard``) and ``guard check`` open
the same object. Everything is built in order, each part with the parts it needs, and nothing is
rewired afterwards:

    store, cache, OCR  ->  decision log  ->  handoff  ->  pipeline (its sink: log, then handoff)
                                              scorer  ->  scoring service (with its breaker)
    keys, image fetcher, proxy (over the pipeline)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from guard.breaker import scorer_breaker
from guard.cache import MemoryCache, RedisCache
from guard.calibration import CalibrationBook
from guard.decision_log import DecisionLog, open_decision_log
from guard.errors import ConfigError, ImageError, ImageExpired, InvalidField, NotFound, Unavailable
from guard.handoff import Handoff, HandoffSink
from guard.images import DecodedImage, ImageDecoder
from guard.keys import KeyRing, ensure_first_key, key_copy
from guard.local_copy import policy_copy
from guard.metrics import Metrics
from guard.ocr import OcrService, open_ocr
from guard.pipeline import Pipeline, PolicyBook, ScoringService
from guard.proxy import Proxy
from guard.retention import ImageRetention
from guard.scoring.base import Scorer
from guard.settings import Settings
from guard.ssrf import HostAllowlist, ImageFetcher
from guard.store import Store, bounded
from guard.stored import StoredDecision

log = logging.getLogger(__name__)
T = TypeVar("T")

OutcomeHook = Callable[[str], Awaitable[object]]
"""Called with a decision id after a supervisor resolves its case (approve/edit/take over/dismiss)."""


def load_scorer(settings: Settings) -> Scorer:
    """The scorer backend named by settings (loading its model: slow, done once at start-up)."""
    if settings.scorer == "bundled":
        from guard.scoring.bundled import BundledScorer

        return BundledScorer.load(threads=settings.scorer_threads)
    if settings.scorer == "reranker":
        from guard.scoring.reranker import RerankerScorer

        return RerankerScorer.from_settings(settings)
    if settings.scorer == "clip":
        from guard.scoring.clip import ClipScorer

        return ClipScorer.from_settings(settings)
    if settings.scorer == "remote":
        from guard.scoring.remote import RemoteScorer

        return RemoteScorer.from_settings(settings)
    raise ConfigError(
        f"GUARD_SCORER={settings.scorer!r} is not a known scorer (known: bundled, reranker, clip, remote)"
    )


def open_cache(settings: Settings) -> MemoryCache | RedisCache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.redis_timeout_s,
            local_size=settings.local_cache_size,
        )
    return MemoryCache(settings.cache_size, settings.cache_ttl_s)


@dataclass(frozen=True, eq=False)
class Runtime:
    """One running guard: its settings and every open resource. Built by :meth:`open` only."""

    settings: Settings
    metrics: Metrics
    store: Store
    cache: MemoryCache | RedisCache
    ocr: OcrService | None
    decision_log: DecisionLog
    scoring: ScoringService
    pipeline: Pipeline
    handoff: Handoff
    keys: KeyRing
    proxy: Proxy
    on_outcome: OutcomeHook
    """How a supervisor's outcome reaches the chatbot (by default: handoff delivery)."""
    retention: ImageRetention
    """Photos kept no longer than GUARD_IMAGE_RETENTION_DAYS."""

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        scorer: Scorer | None = None,
        on_outcome: OutcomeHook | None = None,
        policies: PolicyBook | None = None,
    ) -> AsyncIterator[Runtime]:
        """Open every resource of ``settings`` (``scorer`` replaces the configured backend; ``policies``
        the policies read from SQL, for a one-off command), yield the runtime, close them all in
        reverse order."""
        settings.validate()
        s = settings
        metrics = Metrics()
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(metrics.close)  # last: multiprocess mode's final counts, once all stopped
            model = scorer if scorer is not None else await asyncio.to_thread(load_scorer, s)
            stack.callback(model.close)
            store = Store.open(s.database_url)
            stack.callback(store.close)
            cache = open_cache(s)
            stack.push_async_callback(cache.close)
            if isinstance(cache, RedisCache):
                cache.register_metrics(metrics)
            ocr = await open_ocr(s, cache)
            if ocr is not None:
                stack.push_async_callback(ocr.close)
            decision_log = open_decision_log(store, s)
            decision_log.start()
            stack.push_async_callback(decision_log.stop)
            handoff = Handoff(store, s, metrics)
            handoff.start()
            stack.push_async_callback(handoff.stop)
            scoring = ScoringService(
                model,
                s.score_timeout_s,
                batch_max_items=max(1, s.score_batch_size),
                batch_wait_s=s.score_batch_wait_ms / 1000,
                breaker=scorer_breaker(s, metrics),
            )
            stack.callback(scoring.close)
            images = ImageDecoder.from_settings(s)
            stack.callback(images.close)
            book = policies or PolicyBook(store, timeout_s=s.sql_timeout_s, copy=policy_copy(s))
            book.start()
            stack.push_async_callback(book.stop)
            pipeline = Pipeline(
                s,
                scoring,
                cache,
                book,
                HandoffSink(decision_log, handoff),
                metrics,
                ocr=ocr,
                calibrations=CalibrationBook(store.active_score_map, timeout_s=s.sql_timeout_s),
                images=images,
            )
            keys = KeyRing(store, s, copy=key_copy(s))
            await _first_key(store, s)
            keys.start()
            stack.push_async_callback(keys.stop)
            fetcher = ImageFetcher(
                HostAllowlist.parse(s.image_fetch_allow_hosts),
                max_bytes=s.max_body_bytes,
                timeout_s=s.image_fetch_timeout_s,
            )
            proxy = Proxy(s, pipeline, fetcher)
            stack.push_async_callback(proxy.close)
            retention = ImageRetention(store, s.image_retention_days)
            if s.image_retention_days > 0:
                retention.start()
                stack.push_async_callback(retention.stop)
            rt = cls(
                settings=s,
                metrics=metrics,
                store=store,
                cache=cache,
                ocr=ocr,
                decision_log=decision_log,
                scoring=scoring,
                pipeline=pipeline,
                handoff=handoff,
                keys=keys,
                proxy=proxy,
                on_outcome=on_outcome or handoff.deliver_outcome,
                retention=retention,
            )
            metrics.gauge_from(
                "guard_image_decode_pending",
                "Photos being decoded or waiting to be.",
                lambda: float(images.pending),
            )
            metrics.counter_from(
                "guard_image_decode_timeouts_total",
                "Photos whose decoding ran past its deadline (422 image_decode_timeout).",
                lambda: float(images.timeouts),
            )
            metrics.counter_from(
                "guard_image_decode_busy_total",
                "Photos refused because the decoder's queue was full (503 image_decoder_busy).",
                lambda: float(images.busy),
            )
            decision_log.register_metrics(metrics)
            if metrics.multiprocess is not None:  # guard serve --workers N (guard/metrics.py)
                publisher = asyncio.get_running_loop().create_task(_publish(metrics), name="metrics")
                stack.push_async_callback(_cancel, publisher)
            log.info("guard ready: scorer %s %s, cache %s", model.name, model.version, cache.name)
            # What start-up allocated (modules, models, templates) lives as long as the process: keep
            # it out of the cyclic collector's scans, which otherwise walk it all on every full
            # collection (measured: p99 68 ms -> 17 ms at 32 concurrent cache hits). Unfrozen at close.
            gc.freeze()
            stack.callback(gc.unfreeze)
            yield rt

    async def sql(self, fn: Callable[..., T], *args: Any) -> T:
        """A SQL call on a request's path: bounded by GUARD_SQL_TIMEOUT_S, a dead database is a 503."""
        try:
            return await bounded(self.settings.sql_timeout_s, fn, *args)
        except (TimeoutError, SQLAlchemyError) as exc:
            log.warning("SQL on a request's path failed: %r", exc)
            raise Unavailable(
                "database_unavailable", "the database did not answer in time; try again shortly"
            ) from None

    async def register_image(self, image: DecodedImage) -> None:
        await self.sql(
            self.store.save_image, image.sha256, image.mime_type, image.width, image.height, image.data
        )

    async def registered_image(self, image_id: Any) -> DecodedImage:
        if not isinstance(image_id, str) or len(image_id) != 64:
            raise InvalidField("wrong_type", "'image.id' must be an image_id from POST /v1/images")
        found = await self.sql(self.store.get_image_stored_at, image_id)
        days = self.settings.image_retention_days
        if found is None:
            kept = f" (photos are kept {days:g} days, GUARD_IMAGE_RETENTION_DAYS)" if days > 0 else ""
            raise NotFound("unknown_image", f"no image {image_id!r}: register it with POST /v1/images{kept}")
        data, stored_at = found
        if days > 0 and self.retention.expired(stored_at):
            raise ImageExpired(
                "image_expired",
                f"image {image_id!r} was registered more than {days:g} days ago "
                "(GUARD_IMAGE_RETENTION_DAYS): register it again with POST /v1/images",
            )
        try:
            return await self.pipeline.images.decode(data)
        except ImageError as exc:  # stored before a limit was lowered
            raise InvalidField(exc.code, exc.message) from None

    async def find_decision(self, decision_id: str) -> StoredDecision | None:
        return await self.sql(self.store.get_decision, decision_id)


async def _first_key(store: Store, settings: Settings) -> None:
    try:
        first = await bounded(settings.sql_timeout_s, ensure_first_key, store, settings)
    except (TimeoutError, SQLAlchemyError) as exc:
        # Started while the database is down: the keys are checked against the local copy.
        log.warning("API keys: SQL did not answer at start-up (%s); using the local copy", type(exc).__name__)
        return
    if first is not None:
        log.warning(
            "no API key existed and the guard listens on %s, so one was created for channel "
            "'default'. It is shown only this once; clients send it as 'Authorization: Bearer <key>':"
            "\n\n    %s\n",
            settings.host,
            first,
        )


def runtime(connection: Mapping[str, Any]) -> Runtime:
    """The running guard of a request (``request.state.runtime``, the lifespan's state).

    Takes a Starlette request or an ASGI scope: both map ``"state"`` to the request's state.
    """
    found = connection.get("state", {}).get("runtime")
    if not isinstance(found, Runtime):
        raise RuntimeError("no guard runtime in the request's state: the app's lifespan did not run")
    return found


METRICS_PUBLISH_S = 1.0
"""Multiprocess mode: how often a worker copies the counts its parts keep into the shared files
(a scrape answered by another worker shows them at most this late)."""


async def _publish(metrics: Metrics) -> None:
    while True:
        await asyncio.sleep(METRICS_PUBLISH_S)
        try:
            metrics.publish()
        except Exception:  # a full disk must not end the loop: the next second tries again
            log.exception("metrics: publishing this worker's counts failed")


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
