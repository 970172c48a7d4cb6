"""Compare a served reranker's scores with the in-process ``reranker`` backend on the same cases.

Run it before trusting a served model with the in-process reranker's calibration (docs/scoring.md)::

    GUARD_RERANKER_MODEL=/models/qwen3-vl-reranker-2b \\
    GUARD_REMOTE_URL=http://gpu-1:8000/v1 GUARD_REMOTE_MODEL=Qwen/Qwen3-VL-Reranker-2B \\
    GUARD_REMOTE_API=score GUARD_REMOTE_QUERY=multimodal \\
    .venv/bin/python scripts/compare_remote.py cases.jsonl [--limit 200] [--tolerance 0.02]

Both sides get the same question, photo and draft (no OCR: both read the photo itself). It prints
the largest and the 95th-percentile difference of P(yes) (the served score against the sigmoid of
the in-process yes-minus-no logit) and Spearman's rank correlation, and exits 1 when the
95th percentile is above the tolerance.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from guard.evaluation import load_cases
from guard.images import decode_image
from guard.scoring.base import ScoreInput
from guard.scoring.remote import RemoteScorer
from guard.scoring.reranker import RerankerScorer
from guard.settings import Settings


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(local: RerankerScorer, remote: RemoteScorer, items: Sequence[ScoreInput]) -> dict[str, float]:
    p_local = [1 / (1 + math.exp(-x)) for x in local.raw_logits(items)]
    p_remote = remote.raw_scores(items)
    diff = np.abs(np.array(p_local) - np.array(p_remote))
    return {
        "n": len(items),
        "max_abs_diff": float(diff.max()),
        "p95_abs_diff": float(np.percentile(diff, 95)),
        "spearman": spearman(p_local, p_remote),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", type=Path, help="JSONL in the dev set's format (question, reply, image)")
    parser.add_argument("--limit", type=int, default=200, help="compare the first N cases (default 200)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="largest p95 |ΔP(yes)| (default 0.02)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    items = []
    for case in load_cases(args.cases)[: args.limit]:
        image = None
        if case.image is not None:
            raw = case.image.read_bytes()
            image = decode_image(
                raw, max_pixels=settings.max_image_pixels, max_bytes=settings.max_body_bytes
            ).rgb
        items.append(ScoreInput(case.question, case.reply, image=image, has_image=image is not None))
    local = RerankerScorer.from_settings(settings)
    remote = RemoteScorer.from_settings(settings)
    try:
        report = compare(local, remote, items)
    finally:
        remote.close()
    report["tolerance"] = args.tolerance
    print(json.dumps(report, indent=2))
    return 0 if report["p95_abs_diff"] <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
