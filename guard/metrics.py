"""The guard's Prometheus metrics, on ``prometheus_client``, in a registry of their own.

Every app (``Runtime``) and every ``GuardMiddleware`` holds its own ``CollectorRegistry``, never
prometheus_client's process-wide ``REGISTRY``: the middleware runs inside other people's apps,
where two guards, or the host app's own metrics, must not collide. ``GET /metrics`` renders the
app's; a host app serves its middleware's with ``prometheus_client.make_asgi_app(registry=
mw.metrics.registry)``, or passes its own registry in (``MiddlewareMetrics(registry)``).

Counters are counters (``*_total``), latencies and scores are histograms, states and backlogs
are gauges. Counts kept by the parts themselves (the decision log's, the spool's, the breakers')
are read when scraped (``counter_from``, ``gauge_from``), so nothing is counted twice. Every
family is declared here, with its labels; the names are listed in docs/api.md.

``guard serve --workers N`` runs prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by the command before the workers start): every worker's counters and histograms live in
files of that folder, and ``render()`` sums all the workers', whichever worker is scraped. The
counts kept by the parts are copied into such files by :meth:`Metrics.publish` (every second,
and at each scrape by the worker scraped), gauges as the live workers' sum or maximum. One
process holds one app then (two ``Metrics`` in one process would share their files' entries).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterator
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS_S",
    "SCORE_BUCKETS",
    "Metrics",
    "MiddlewareMetrics",
    "multiprocess_dir",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of ``render()``: the Prometheus text format 0.0.4 (what every Prometheus reads;
the guard's names are all in the classic character set)."""

LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds: from a cache hit (about a millisecond) to a scorer at its deadline."""

SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""The calibrated score's tenths: every default band edge (0.4, 0.5, 0.6, 0.7) is a bucket edge."""


def multiprocess_dir() -> str | None:
    """The folder of prometheus_client's multiprocess mode when this process runs in it: the
    environment named it before prometheus_client was imported (else the mode is off)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or values.ValueClass is values.MutexValue:
        return None
    return path


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db$")


def _forget_dead_processes(path: str) -> None:
    """Drop the live gauges of workers that died without saying so (``kill -9``): their counters
    and histograms stay (they were counted), their backlog and breaker states must not."""
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        found = _LIVE_GAUGE_FILE.search(file)
        if found is None:
            continue
        pid = int(found.group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, another user's
            pass


class _Reading(Collector):
    """One counter or gauge whose value another object keeps, read at each scrape."""

    def __init__(
        self, kind: Literal["counter", "gauge"], name: str, documentation: str, read: Callable[[], float]
    ):
        self._kind = kind
        self._name = name
        self._doc = documentation
        self._read = read

    def _family(self, value: float | None) -> Metric:
        if self._kind == "counter":
            return CounterMetricFamily(self._name, self._doc, value=value)
        return GaugeMetricFamily(self._name, self._doc, value=value)

    def describe(self) -> Iterator[Metric]:
        yield self._family(None)  # the name only: registering never calls ``read``

    def collect(self) -> Iterator[Metric]:
        yield self._family(float(self._read()))


class _Registry:
    """A registry of its own, rendering and reading helpers shared by both sets of metrics."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess = multiprocess_dir()
        """prometheus_client's multiprocess folder when this process runs in that mode, else None."""
        self._counters: list[tuple[Counter, Callable[[], float], list[float]]] = []
        self._gauges: list[tuple[Gauge, Callable[[], float]]] = []

    def counter_from(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A counter whose count ``read()`` returns (an object's own running total)."""
        self.registry.register(_Reading("counter", name, documentation, read))
        if self.multiprocess is not None:  # copied into this process's file by publish()
            self._counters.append((Counter(name, documentation, registry=None), read, [0.0]))

    def gauge_from(
        self,
        name: str,
        documentation: str,
        read: Callable[[], float],
        *,
        workers: Literal["livesum", "livemax"] = "livesum",
    ) -> None:
        """A gauge whose current value ``read()`` returns (a state, a backlog). ``workers``: how the
        live workers' values are combined in multiprocess mode (a backlog adds up; a state is 1
        when any worker's is)."""
        self.registry.register(_Reading("gauge", name, documentation, read))
        if self.multiprocess is not None:
            gauge = Gauge(name, documentation, registry=None, multiprocess_mode=workers)
            self._gauges.append((gauge, read))

    def publish(self) -> None:
        """Multiprocess mode: copy the counts the parts keep into this process's files, where every
        worker's ``render()`` reads them. Nothing to do otherwise."""
        if self.multiprocess is None:
            return
        for counter, read, last in self._counters:
            now = float(read())
            if now > last[0]:
                counter.inc(now - last[0])
                last[0] = now
        for gauge, read in self._gauges:
            gauge.set(float(read()))
        _forget_dead_processes(self.multiprocess)

    def close(self) -> None:
        """This process stops: its final counts are published, its live gauges no longer count."""
        if self.multiprocess is not None:
            self.publish()
            mark_process_dead(os.getpid(), self.multiprocess)  # type: ignore[no-untyped-call]

    def render(self) -> str:
        """The Prometheus text format (``CONTENT_TYPE``), label values escaped: this registry's, or
        in multiprocess mode every worker's summed (without the ``_created`` samples)."""
        if self.multiprocess is None:
            return generate_latest(self.registry).decode()
        self.publish()
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, self.multiprocess)  # type: ignore[no-untyped-call]
        return generate_latest(every_worker).decode()

    def value(self, sample: str, **labels: str) -> float:
        """One sample's value (``guard_decisions_total``, ``action="send"``); 0 when never counted."""
        found = self.registry.get_sample_value(sample, labels)
        return 0.0 if found is None else found

    def total(self, sample: str) -> float:
        """The sum of one sample over all its label values (``guard_scorer_errors_total``)."""
        return sum(s.value for family in self.registry.collect() for s in family.samples if s.name == sample)


class Metrics(_Registry):
    """The guard's metrics: one per app (``Runtime``), in its own registry unless one is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.decisions = Counter(
            "guard_decisions",
            "Decisions taken, by action and by the channel whose policy decided.",
            ["action", "channel"],
            registry=r,
        )
        self.audit_sampled = Counter(
            "guard_audit_sampled",
            "Answered decisions copied into the queue as audit items (the policy's audit_sample), by action.",
            ["action"],
            registry=r,
        )
        self.degraded = Counter(
            "guard_degraded",
            "Decisions that took the policy's on_error action, by reason.",
            ["reason"],
            registry=r,
        )
        self.decision_latency = Histogram(
            "guard_decision_latency_seconds",
            "Time to decide one check, from its parsed request to its answer (SQL is written after).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.score = Histogram(
            "guard_score",
            "Calibrated scores decided on (not degraded ones), by the channel whose policy decided.",
            ["channel"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter("guard_cache_hits", "Scores found in the cache.", registry=r)
        self.cache_misses = Counter("guard_cache_misses", "Scores not in the cache.", registry=r)
        self.scorer_errors = Counter(
            "guard_scorer_errors",
            "Scorer calls that failed, by exception class (BreakerOpen: refused by the breaker).",
            ["kind"],
            registry=r,
        )
        self.scorer_latency = Histogram(
            "guard_scorer_latency_seconds",
            "Time of one call to the scorer (a batch of the replies that missed the cache).",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ocr = Counter(
            "guard_ocr",
            "Photos whose text was asked for, by how it was obtained (read, cached, timeout, ...).",
            ["status"],
            registry=r,
        )
        self.unguarded = Counter(
            "guard_unguarded",
            "Answers of the proxy that carry X-Guard-Action: unguarded, by reason.",
            ["reason"],
            registry=r,
        )
        self.webhook_attempts = Counter(
            "guard_webhook_attempts", "Webhook deliveries tried, by result.", ["result"], registry=r
        )
        self.webhook_dropped = Counter(
            "guard_webhook_dropped", "Cases not handed to the webhook because its queue was full.", registry=r
        )


class MiddlewareMetrics(_Registry):
    """``GuardMiddleware``'s metrics: in a registry of its own unless one is given (the host app's)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.guarded = Counter(
            "guard_middleware_guarded", "Responses guarded, by the decision's action.", ["action"], registry=r
        )
        self.unguarded = Counter(
            "guard_middleware_unguarded",
            "Responses passed on unguarded (X-Guard-Action: unguarded), by reason.",
            ["reason"],
            registry=r,
        )
        self.photo_rejected = Counter(
            "guard_middleware_photo_rejected",
            "Requests whose photo could not be used (the draft was guarded without it).",
            registry=r,
        )
        self.errors = Counter(
            "guard_middleware_errors",
            "Times the guard could not be asked, by exception class (on_error then applies).",
            ["kind"],
            registry=r,
        )
