"""Pairs per second with micro-batching against one-at-a-time scoring, in the same run.

    .venv/bin/python benchmarks/scoring_batching.py [--pairs 256] [--threads 2] [--repeat 2]

Loads the bundled scorer once, then for 1, 8 and 32 concurrent clients (each sending one
(question, reply) pair per request, the next as soon as its answer came) scores the same
pairs through ``ScoringService`` three times: one request per model call (``batch_max_items=1``),
micro-batched with a 3 ms wait for company (the old default), and micro-batched without a wait
(at most 32 pairs; the default). The modes alternate and the
best of ``--repeat`` runs is kept, so that a noisy neighbour on the machine hurts both alike.
There is no cache in the way: every pair is scored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.pipeline import ScoringService
from guard.scoring.base import ScoreInput
from guard.scoring.bundled import BundledScorer

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "cases_own.jsonl"


def pairs(n: int) -> list[ScoreInput]:
    rows = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = [ScoreInput(question=r["question"], reply=r["reply"], locale=r.get("lang")) for r in rows]
    # distinct texts, so nothing is deduplicated inside a batch
    return [
        ScoreInput(question=it.question, reply=f"{it.reply} ({i})", locale=it.locale)
        for i, it in enumerate(items[i % len(items)] for i in range(n))
    ]


MODES = {"one": (1, 0.0), "wait3": (32, 0.003), "batched": (32, 0.0)}
"""(most pairs per batch, wait for company): one at a time; batches after 3 ms; batches, no wait."""


async def run(scorer: BundledScorer, items: list[ScoreInput], clients: int, mode: str) -> dict[str, float]:
    max_items, wait_s = MODES[mode]
    service = ScoringService(scorer, timeout_s=120, batch_max_items=max_items, batch_wait_s=wait_s)
    queue: asyncio.Queue[ScoreInput] = asyncio.Queue()
    for it in items:
        queue.put_nowait(it)
    latencies: list[float] = []

    async def client() -> None:
        while True:
            try:
                it = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t = time.perf_counter()
            await service.score([it])
            latencies.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    stats = service.batcher.stats
    service.close()
    return {
        "pairs_s": len(items) / elapsed,
        "p50_ms": statistics.median(latencies),
        "p95_ms": sorted(latencies)[int(0.95 * (len(latencies) - 1))],
        "mean_batch": stats.items / max(stats.batches, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=256, help="requests per measurement (one pair each)")
    ap.add_argument("--threads", type=int, default=2, help="scorer CPU threads")
    ap.add_argument("--repeat", type=int, default=2, help="runs per cell; the best is kept")
    args = ap.parse_args()
    scorer = BundledScorer.load(threads=args.threads)
    items = pairs(args.pairs)
    asyncio.run(run(scorer, items[:32], 8, "batched"))  # warm-up
    print(f"bundled scorer {scorer.version}; {args.pairs} requests of one pair; {os.cpu_count()} CPUs")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print()
    print(
        "| concurrent | one-at-a-time pairs/s | batched, 3 ms wait pairs/s | batched, no wait pairs/s"
        " | speed-up | p50 ms one / 3 ms / no wait | p95 ms one / 3 ms / no wait | mean batch |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clients in (1, 8, 32):
        best: dict[str, dict[str, float]] = {}
        for _ in range(args.repeat):
            for mode in MODES:
                r = asyncio.run(run(scorer, items, clients, mode))
                if mode not in best or r["pairs_s"] > best[mode]["pairs_s"]:
                    best[mode] = r
        one, wait3, bat = best["one"], best["wait3"], best["batched"]
        speedup = bat["pairs_s"] / one["pairs_s"]
        print(
            f"| {clients} | {one['pairs_s']:.0f} | {wait3['pairs_s']:.0f} | {bat['pairs_s']:.0f}"
            f" | {speedup:.1f}x | {one['p50_ms']:.1f} / {wait3['p50_ms']:.1f} / {bat['p50_ms']:.1f}"
            f" | {one['p95_ms']:.1f} / {wait3['p95_ms']:.1f} / {bat['p95_ms']:.1f}"
            f" | {bat['mean_batch']:.1f} |"
        )
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
