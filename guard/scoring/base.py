"""The Scorer protocol every backend implements, and the behaviour the model backends share.

A scorer is blocking, CPU-bound code: the pipeline calls ``score_batch`` in a worker
thread, never on the event loop. Scorers know nothing of HTTP, SQL or caches.

:class:`ModelScorer` holds what the backends (``bundled``, ``reranker``, ``clip``, ``remote``) have
in common: which inputs an item offers and which of them the backend reads (``inputs_used`` says
exactly what went into the score), how the question and the text read from the photo are joined,
one text limit, the error contract of ``score_batch`` and ``close()``. A backend adds only its
model-specific steps: ``name``, ``version`` and ``scores`` (the bundled scorer also overrides
``score_batch``, to say when it cannot judge a case).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from guard.errors import ScorerError as ScorerError  # its home is the error tree; re-exported here

if TYPE_CHECKING:
    from PIL import Image

DEFAULT_INSTRUCTION = (
    "Judge whether the response directly addresses the issue shown in the image and described in the query."
)
MAX_TEXT_CHARS = 2000
"""The most characters of a question, of the text read from a photo and of a reply that a model
backend reads; longer ones are cut (bounds latency and memory)."""


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
    _: KW_ONLY
    instruction_used: bool = False
    """The backend read the scoring instruction (a different instruction can change the score)."""


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

    def close(self) -> None:
        """Release what the scorer holds (connections, model memory); blocking. The runtime that
        opened the scorer calls it once, at shutdown, after the last ``score_batch``."""
        ...


def cut(text: str | None) -> str:
    """``text`` stripped and cut to MAX_TEXT_CHARS ("" for None)."""
    return (text or "").strip()[:MAX_TEXT_CHARS]


class ModelScorer(ABC):
    """The shared half of a model backend; subclasses implement ``name``, ``version`` and ``scores``."""

    sees_image: ClassVar[bool] = False
    """The backend can read the photo's pixels (``uses_image`` decides per item)."""
    reads_instruction: ClassVar[bool] = False
    """The backend puts the scoring instruction in what the model reads (``uses_instruction`` decides
    per item; a backend whose configuration decides overrides that)."""
    image_text_with_image: ClassVar[bool] = True
    """The text read from the photo is still read when the pixels are (False: the pixels replace it)."""

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def scores(self, items: Sequence[ScoreInput]) -> list[float]:
        """The calibrated score of each item, in order (the model-specific step)."""

    def uses_image(self, item: ScoreInput) -> bool:
        return self.sees_image and item.image is not None

    def uses_instruction(self, item: ScoreInput) -> bool:
        """The item's instruction goes into what the model reads (``instruction_used``)."""
        return self.reads_instruction

    def uses_image_text(self, item: ScoreInput) -> bool:
        return bool(cut(item.image_text)) and (self.image_text_with_image or not self.uses_image(item))

    def query_text(self, item: ScoreInput) -> str:
        """The question, then the text read from the photo when the backend reads it; each cut."""
        if self.uses_image_text(item):
            return "\n".join(t for t in (cut(item.question), cut(item.image_text)) if t)
        return cut(item.question)

    @staticmethod
    def reply_text(item: ScoreInput) -> str:
        return cut(item.reply)

    def inputs_used(self, item: ScoreInput) -> tuple[str, ...]:
        used = ["question"]
        if self.uses_image_text(item):
            used.append("image_text")
        if self.uses_image(item):
            used.append("image")
        return (*used, "reply")

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        if not items:
            return []
        try:
            scores = self.scores(items)
        except ScorerError:
            raise
        except Exception as exc:  # the model failed on this batch
            raise ScorerError(f"{self.name} scorer failed: {type(exc).__name__}: {exc}") from exc
        if len(scores) != len(items):
            raise ScorerError(f"{self.name} scorer gave {len(scores)} scores for {len(items)} items")
        return [
            ScoreResult(score=s, inputs_used=self.inputs_used(it), instruction_used=self.uses_instruction(it))
            for s, it in zip(scores, items, strict=True)
        ]

    def close(self) -> None:  # noqa: B027 (a hook, not abstract: most backends hold nothing to release)
        """Release what the scorer holds (connections, model memory); called once at shutdown."""


# -- helpers of the backends that load a checkpoint or send a photo -----------------------------


def resolve_checkpoint(model: str, *, setting: str, kind: str, example: str) -> tuple[str, bool]:
    """(what to pass to from_pretrained, is it a local directory) for a directory or a hub id;
    ScorerError naming ``setting`` when it is neither."""
    if not model.strip():
        raise ScorerError(f"{setting} is not set: give a checkpoint directory or a hub id")
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ScorerError(f"{kind} model directory {p} has no config.json: is it a checkpoint?")
        return str(p), True
    if p.exists():
        raise ScorerError(f"{kind} model {p} is a file, not a checkpoint directory")
    looks_like_path = model.startswith(("/", "./", "../", "~")) or "//" in model
    if looks_like_path or model.count("/") != 1:
        raise ScorerError(
            f"{kind} model directory {model!r} does not exist "
            f"(give an existing checkpoint directory or a hub id like {example!r})"
        )
    return model, False


def pick_device(device: str) -> tuple[str, Any]:
    """(device, dtype) for GUARD_MODEL_DEVICE: CUDA + bfloat16 (float16 on GPUs without bf16) when
    present, else CPU float32. Imports torch: call it only from a backend that needs it."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ScorerError(f"GUARD_MODEL_DEVICE={device!r} but CUDA is not available")
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device != "cpu":
        raise ScorerError(f"GUARD_MODEL_DEVICE={device!r}: use auto, cpu, cuda or cuda:N")
    return "cpu", torch.float32


def cap_pixels(img: Image.Image, max_pixels: int) -> Image.Image:
    """Shrink (never enlarge) so that width x height <= max_pixels, keeping the aspect ratio."""
    from PIL import Image as PILImage

    w, h = img.size
    if w * h <= max_pixels:
        return img
    s = math.sqrt(max_pixels / (w * h))
    return img.resize((max(1, int(w * s)), max(1, int(h * s))), PILImage.Resampling.BICUBIC)
