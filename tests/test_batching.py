"""Micro-batching: concurrent requests share a score_batch call, bounded, isolated, off the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from guard.cache import CachedScore
from guard.pipeline import ScoringService
from guard.scoring.base import ScoreInput, ScoreResult
from guard.scoring.batching import MicroBatcher


class GatedScorer:
    """Scores "r<k>" as k/100; the first batch waits for ``gate`` so that others queue up behind it."""

    name = "gated"
    version = "1"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []
        self.threads: set[str] = set()

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([it.reply for it in items])
        self.entered.set()
        self.gate.wait(10)
        if any("boom" in it.reply for it in items):
            raise RuntimeError("model exploded")
        return [ScoreResult(int(it.reply[1:]) / 100, ("question", "reply")) for it in items]

    def close(self) -> None:
        pass


def item(k: int | str) -> ScoreInput:
    return ScoreInput(question="q", reply=f"r{k}" if isinstance(k, int) else k)


async def blocked_then(
    scorer: GatedScorer, batcher: MicroBatcher, requests: list[list[ScoreInput]]
) -> list[list[ScoreResult] | BaseException]:
    """Hold the model busy with one request, queue ``requests`` behind it, then let it go."""
    first = asyncio.create_task(batcher.score([item(0)]))
    await asyncio.to_thread(scorer.entered.wait, 5)
    tasks = [asyncio.create_task(batcher.score(r)) for r in requests]
    await asyncio.sleep(0.05)  # every request is queued now
    scorer.gate.set()
    assert [r.score for r in await first] == [0.0]
    return list(await asyncio.gather(*tasks, return_exceptions=True))


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer")
    yield pool
    pool.shutdown(wait=False)


def test_queued_requests_share_one_batch_and_get_their_own_results(executor: ThreadPoolExecutor) -> None:
    scorer = GatedScorer()

    async def main() -> list[list[ScoreResult] | BaseException]:
        batcher = MicroBatcher(scorer, executor, max_items=32, max_wait_s=0.002)
        try:
            return await blocked_then(scorer, batcher, [[item(k)] for k in range(1, 11)])
        finally:
            batcher.close()

    results = asyncio.run(main())
    assert [r[0].score for r in results if isinstance(r, list)] == [k / 100 for k in range(1, 11)]
    assert scorer.batches[0] == ["r0"]
    assert sorted(scorer.batches[1]) == sorted(f"r{k}" for k in range(1, 11))  # one batch for the ten
    assert len(scorer.batches) == 2
    assert scorer.threads == {"scorer_0"}  # the model ran in the worker thread, not on the event loop


def test_batches_are_bounded_and_a_large_request_is_never_split(executor: ThreadPoolExecutor) -> None:
    scorer = GatedScorer()
    requests = [[item(k)] for k in range(1, 8)] + [[item(k) for k in range(20, 26)]]

    async def main() -> list[list[ScoreResult] | BaseException]:
        batcher = MicroBatcher(scorer, executor, max_items=4, max_wait_s=0.002)
        try:
            return await blocked_then(scorer, batcher, requests)
        finally:
            batcher.close()

    results = asyncio.run(main())
    assert all(isinstance(r, list) for r in results)
    big = results[-1]
    assert isinstance(big, list) and [r.score for r in big] == [k / 100 for k in range(20, 26)]
    later = scorer.batches[1:]
    assert ["r20", "r21", "r22", "r23", "r24", "r25"] in later  # alone, whole
    assert all(len(b) <= 4 for b in later if "r20" not in b)
    assert sum(len(b) for b in later) == 13


def test_one_failing_request_does_not_fail_its_batch_mates(executor: ThreadPoolExecutor) -> None:
    scorer = GatedScorer()

    async def main() -> list[list[ScoreResult] | BaseException]:
        batcher = MicroBatcher(scorer, executor, max_items=32, max_wait_s=0.002)
        try:
            return await blocked_then(scorer, batcher, [[item(1)], [item("boom")], [item(3)]])
        finally:
            batcher.close()

    ok1, failed, ok3 = asyncio.run(main())
    assert isinstance(failed, RuntimeError)
    assert isinstance(ok1, list) and ok1[0].score == 0.01
    assert isinstance(ok3, list) and ok3[0].score == 0.03


def test_a_request_whose_deadline_passed_while_queued_never_reaches_the_model(
    executor: ThreadPoolExecutor,
) -> None:
    scorer = GatedScorer()

    async def main() -> None:
        batcher = MicroBatcher(scorer, executor, max_items=32, max_wait_s=0.002)
        first = asyncio.create_task(batcher.score([item(0)]))
        await asyncio.to_thread(scorer.entered.wait, 5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.score([item(7)]), 0.05)
        later = asyncio.create_task(batcher.score([item(8)]))
        scorer.gate.set()
        await first
        assert [r.score for r in await later] == [0.08]
        batcher.close()

    asyncio.run(main())
    assert all("r7" not in b for b in scorer.batches)


def test_one_at_a_time_when_max_items_is_one(executor: ThreadPoolExecutor) -> None:
    scorer = GatedScorer()

    async def main() -> list[list[ScoreResult] | BaseException]:
        batcher = MicroBatcher(scorer, executor, max_items=1, max_wait_s=0.002)
        try:
            return await blocked_then(scorer, batcher, [[item(k)] for k in range(1, 5)])
        finally:
            batcher.close()

    asyncio.run(main())
    assert all(len(b) == 1 for b in scorer.batches) and len(scorer.batches) == 5


def test_scoring_service_keeps_its_deadline_and_recovers() -> None:
    scorer = GatedScorer()
    service = ScoringService(scorer, timeout_s=0.1, batch_max_items=8, batch_wait_s=0.001)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await service.score([item(1)])
        scorer.gate.set()
        assert await service.score([item(2), item(3)]) == [
            CachedScore(0.02, ("question", "reply")),
            CachedScore(0.03, ("question", "reply")),
        ]
        service.close()

    asyncio.run(main())


@pytest.mark.parametrize(("max_items", "wait"), [(0, 0.001), (4, -1.0)])
def test_bad_bounds_are_refused(executor: ThreadPoolExecutor, max_items: int, wait: float) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(GatedScorer(), executor, max_items=max_items, max_wait_s=wait)
