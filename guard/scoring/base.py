"""The Scorer protocol every backend implements.

A scorer is blocking, CPU-bound code: the pipeline calls ``score_batch`` in a worker
thread, never on the event loop. Scorers know nothing of HTTP, SQL or caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_INSTRUCTION = (
    "Judge whether the response directly addresses the issue shown in the image and described in the query."
)


class ScorerError(Exception):
    """The scorer could not produce a score (model missing, bad calibration, ...)."""


@dataclass(frozen=True, slots=True)
class ScoreInput:
    question: str
    reply: str
    instruction: str = DEFAULT_INSTRUCTION
    image_text: str | None = None
    """Text read from the customer's photo (OCR), when there is any."""
    has_image: bool = False
    """A photo came with the question (whether or not the scorer can see it)."""
    locale: str | None = None
    """"zh" or "en" when known."""
    image: Image.Image | None = field(default=None, compare=False, repr=False)
    """The decoded, EXIF-oriented RGB photo, for scorers that see it (shared: do not mutate).
    A scorer lists "image" in ``inputs_used`` only when it really used these pixels."""


@dataclass(frozen=True, slots=True)
class ScoreResult:
    score: float
    """Calibrated score in [0, 1] (NaN is treated as an error by the pipeline)."""
    inputs_used: tuple[str, ...]
    """Which inputs the score was computed from: "question", "image_text", "image", "reply"."""
    uncertain: bool = False
    """The scorer cannot judge this case (e.g. no issue stated and the photo unseen)."""
    uncertain_reason: str | None = None
    """Why, when ``uncertain``: a short code such as "no_issue_stated"."""
    instruction_used: bool = False
    """The scoring instruction reached the model (the bundled scorer never reads it)."""


class Scorer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str:
        """Changes whenever weights or calibration change (it is part of the cache key)."""
        ...

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        """Score each item; blocking. Raises ScorerError when the model cannot score."""
        ...
