"""A circuit breaker, so a dead or hung dependency is not waited on request after request.

Closed: calls go through; ``failures`` consecutive failures open it. Open: calls are refused at
once (:class:`BreakerOpen`) for ``cooldown_s``. Then half-open: one call goes through as a probe
(the others are still refused); its success closes the breaker, its failure opens it again.

Used around the scorer (guard/pipeline.py ``ScoringService``): an exception, a timeout or a
result with no usable score is a failure; a refused call takes the policy's ``on_error`` action
at once, and ``/readyz`` reports not ready while the breaker is open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from guard.metrics import Metrics
from guard.settings import Settings

State = Literal["closed", "open", "half_open"]


class BreakerOpen(RuntimeError):
    """The call was refused: the breaker is open (the dependency failed repeatedly)."""


@dataclass
class Attempt:
    """One call through the breaker; set ``ok = False`` when it returned an unusable result."""

    ok: bool = True


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.name = name
        self._threshold = failures
        self._cooldown = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened_total = 0
        """Times the breaker opened."""
        self.rejected_total = 0
        """Calls refused while it was open."""

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._cooldown:
            return "half_open"
        return "open"

    @property
    def is_open(self) -> bool:
        """True while calls are refused (open, or half-open with its probe in flight)."""
        state = self.state
        return state == "open" or (state == "half_open" and self._probing)

    def _admit(self) -> bool:
        """May a call go through now? Marks the probe when half-open."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        self.rejected_total += 1
        return False

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or (self._opened_at is None and self._failures >= self._threshold):
            if self._opened_at is None or self._probing:
                self.opened_total += 1
            self._opened_at = self._clock()
        self._probing = False

    def _abandon(self) -> None:
        """The call was cancelled (its client left): neither success nor failure."""
        self._probing = False

    @contextmanager
    def attempt(self) -> Iterator[Attempt]:
        """``with breaker.attempt() as a: ...``: raises BreakerOpen when refused, records the outcome."""
        if not self._admit():
            raise BreakerOpen(f"{self.name} is unavailable (circuit breaker open)")
        outcome = Attempt()
        try:
            yield outcome
        except asyncio.CancelledError:
            self._abandon()
            raise
        except BaseException:
            self.failure()
            raise
        if outcome.ok:
            self.success()
        else:
            self.failure()


def scorer_breaker(settings: Settings, metrics: Metrics) -> CircuitBreaker:
    """The scorer's breaker, configured from settings, its state and counters in /metrics."""
    breaker = CircuitBreaker(
        "the scorer",
        failures=max(1, settings.scorer_breaker_failures),
        cooldown_s=settings.scorer_breaker_cooldown_s,
    )
    metrics.gauge_from(
        "guard_scorer_breaker_open",
        "Whether the scorer's breaker is open (1) or closed (0).",
        lambda: float(breaker.is_open),
        workers="livemax",
    )
    metrics.counter_from(
        "guard_scorer_breaker_opened_total",
        "Times the scorer's breaker opened.",
        lambda: float(breaker.opened_total),
    )
    metrics.counter_from(
        "guard_scorer_breaker_rejected_total",
        "Scorer calls refused at once while its breaker was open.",
        lambda: float(breaker.rejected_total),
    )
    return breaker
