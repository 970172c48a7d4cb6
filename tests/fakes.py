"""In-memory fakes for unit tests (real services are used in the integration tests): a scorer,
and a decision row to write."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from guard.records import DecisionRow
from guard.scoring.base import ScoreInput, ScoreResult
from guard.tables import utcnow

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


def decision_row(decision_id: str = "a" * 32, action: str = "escalate", **changes: Any) -> DecisionRow:
    """A decision row as the pipeline would record it, made now: an escalated English question
    (with markup and SQL in it, to be stored verbatim) unless ``changes`` (by field name) say otherwise."""
    values: dict[str, Any] = {
        "id": decision_id,
        "created_at": utcnow(),
        "conversation_id": "c-1",
        "channel": "default",
        "locale": "en",
        "question": "q <script>alert(1)</script>'; DROP TABLE decisions; --",
        "image_sha256": None,
        "draft": "r",
        "candidates": None,
        "score": 0.1,
        "band": "[0.0,0.4)",
        "action": action,
        "final_reply": None,
        "follow_up": None,
        "holding_message": "held",
        "issue_phrase": None,
        "issue_kind": None,
        "uncertain": False,
        "uncertain_reason": None,
        "image_text": None,
        "policy_channel": "default",
        "policy_version": 1,
        "scorer_name": "fake",
        "scorer_version": "1",
        "inputs_used": ("question", "reply"),
        "instruction_used": False,
        "cached": False,
        "degraded": False,
        "reason": None,
        "latency_ms": 1.5,
        "timings_ms": {"total": 1.5},
    }
    return DecisionRow(**(values | changes))
