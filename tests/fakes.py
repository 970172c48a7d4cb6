"""In-memory fakes for unit tests (real services are used in the integration tests)."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

from guard.scoring.base import ScoreInput, ScoreResult

_MARK = re.compile(r"\[score=([0-9.]+|nan|inf)\]")


class FakeScorer:
    """Scores a reply by a marker in it: "[score=0.55]" -> 0.55, "[raise]" raises, "[hang]" sleeps.

    "[sees-image]" makes it say it used the photo (when one came).
    Replies without a score marker score 0.9. Counts the items it scored, so tests can see cache hits.
    """

    name = "fake"
    version = "1"

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False
        self.release = threading.Event()

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        self.calls += len(items)
        out = []
        for item in items:
            if "[raise]" in item.reply:
                raise RuntimeError("model exploded")
            if "[hang]" in item.reply:
                self.release.wait(5)
            m = _MARK.search(item.reply)
            score = float(m.group(1)) if m else 0.9
            used = ("question", "reply", "image_text") if item.image_text else ("question", "reply")
            if "[sees-image]" in item.reply and item.image is not None:
                used += ("image",)
            out.append(ScoreResult(score, used))
        return out

    def close(self) -> None:
        self.closed = True
