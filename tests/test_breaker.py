"""The circuit breaker, alone and around the scorer: a dead model is not waited on request after request."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from guard.breaker import BreakerOpen, CircuitBreaker
from tests.apptools import guard_client
from tests.fakes import FakeScorer
from tests.promtext import sample


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail(breaker: CircuitBreaker) -> None:
    with pytest.raises(RuntimeError), breaker.attempt():
        raise RuntimeError("down")


def test_opens_after_consecutive_failures_refuses_then_probes_once() -> None:
    clock = Clock()
    b = CircuitBreaker("dep", failures=3, cooldown_s=10, clock=clock)
    fail(b)
    fail(b)
    with b.attempt():
        pass  # a success in between resets the count
    fail(b)
    fail(b)
    assert b.state == "closed"
    fail(b)
    assert b.state == "open" and b.is_open and b.opened_total == 1
    with pytest.raises(BreakerOpen), b.attempt():
        pytest.fail("an open breaker let a call through")
    assert b.rejected_total == 1
    clock.now += 10
    assert b.state == "half_open" and not b.is_open
    with b.attempt():  # the probe
        with pytest.raises(BreakerOpen), b.attempt():
            pytest.fail("a second call went through while the probe was out")
        assert b.is_open
    assert b.state == "closed" and not b.is_open


def test_a_failed_probe_opens_it_again_and_an_unusable_result_is_a_failure() -> None:
    clock = Clock()
    b = CircuitBreaker("dep", failures=1, cooldown_s=5, clock=clock)
    with b.attempt() as a:
        a.ok = False  # e.g. NaN
    assert b.state == "open"
    clock.now += 5
    fail(b)
    assert b.state == "open" and b.opened_total == 2
    clock.now += 4.9
    assert b.state == "open"
    clock.now += 0.1
    with b.attempt():
        pass
    assert b.state == "closed"


def degraded(client: TestClient, reply: str) -> tuple[bool, float, str]:
    t = time.perf_counter()
    resp = client.post("/v1/guard", json={"question": "口袋开线怎么办？", "reply": reply})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body["degraded"], time.perf_counter() - t, body["action"]


def metric(client: TestClient, name: str) -> float:
    return sample(client.get("/metrics").text, name)


@pytest.mark.parametrize("fault", ["[raise]", "[hang]", "[score=nan]"])
def test_a_failing_scorer_opens_the_breaker_then_recovers(sqlite_url: str, fault: str) -> None:
    scorer = FakeScorer()
    with guard_client(
        sqlite_url,
        scorer=scorer,
        score_timeout_s=0.3,
        scorer_breaker_failures=3,
        scorer_breaker_cooldown_s=1.0,
    ) as client:
        assert client.get("/readyz").status_code == 200
        for i in range(3):
            is_degraded, took, action = degraded(client, f"{fault} {i}")
            assert is_degraded and action == "escalate"  # the default policy's on_error
            assert took < 0.3 + 0.5, f"on_error took {took:.2f}s, past the 0.3s deadline"
        assert metric(client, "guard_scorer_breaker_open") == 1.0
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["scorer"] is False

        calls = scorer.calls
        for i in range(5):  # a healthy request is not sent to the model while the breaker is open
            is_degraded, took, _ = degraded(client, f"fine {i}")
            assert is_degraded and took < 0.2
        assert scorer.calls == calls
        assert metric(client, "guard_scorer_breaker_rejected_total") >= 5
        assert sample(client.get("/metrics").text, "guard_scorer_errors_total", kind="BreakerOpen") >= 1

        scorer.release.set()  # a hung model comes back
        time.sleep(1.05)
        is_degraded, _, action = degraded(client, "fine again")  # the probe
        assert not is_degraded and action == "send"
        assert client.get("/readyz").status_code == 200
        assert metric(client, "guard_scorer_breaker_open") == 0.0
        assert metric(client, "guard_scorer_breaker_opened_total") == 1.0
