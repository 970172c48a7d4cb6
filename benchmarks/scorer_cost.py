"""The bundled scorer's own cost: load time, resident memory, latency of one case, and of huge replies.

    .venv/bin/python benchmarks/scorer_cost.py [--rounds 3]

Loads ``BundledScorer`` in this process and scores tests/data/cases_own.jsonl one case per call
(p50 / p95), then single replies of 2,000 / 20,000 / 200,000 characters (varied sentences, so the
canonical form cannot collapse them), and prints the process's RSS after loading and at the end.
Run it from any checkout (PYTHONPATH) to compare scorers in one sitting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guard.scoring.base import ScoreInput
from guard.scoring.bundled import BundledScorer

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "cases_own.jsonl"


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * 4096 / 2**20


def huge_reply(chars: int) -> str:
    parts: list[str] = []
    i = 0
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(f"Sentence number {i} tells you about item {i * 7 % 101} in our catalogue.")
        i += 1
    return " ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    scorer = BundledScorer.load(threads=2)
    load_s = time.perf_counter() - t0
    rss_loaded = rss_mb()
    rows = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    items = [ScoreInput(r["question"], r["reply"], locale=r["lang"]) for r in rows]
    scorer.score_batch(items[:4])
    times: list[float] = []
    for _ in range(args.rounds):
        for it in items:
            t = time.perf_counter()
            scorer.score_batch([it])
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"scorer {scorer.version}")
    print(f"load {load_s:.1f} s, RSS after load {rss_loaded:.0f} MB")
    print(
        f"one case per call ({len(times)} calls): p50 {statistics.median(times):.1f} ms,"
        f" p95 {times[int(0.95 * (len(times) - 1))]:.1f} ms"
    )
    q = "The box arrived crushed and the mug inside is cracked."
    for chars in (2_000, 20_000, 200_000):
        reply = huge_reply(chars)
        t = time.perf_counter()
        [res] = scorer.score_batch([ScoreInput(q, reply)])
        ms = (time.perf_counter() - t) * 1000
        print(f"reply of {len(reply):>7} chars: {ms:7.1f} ms, score {res.score:.3f}")
    print(f"RSS at the end {rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
