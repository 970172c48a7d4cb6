"""Text in the customer's photo (OCR): read once, off the event loop, under a time budget.

The reader is RapidOCR (``rapidocr`` on PyPI, PP-OCRv6 small detection + recognition models
for Chinese and English that ship inside the wheel, run by onnxruntime; no torch, nothing
downloaded). Reading a screenshot takes about 1-2 s on 2 cores, so it starts as soon as the
photo arrives (``POST /v1/images``, or the start of ``POST /v1/guard``) and overlaps the
chatbot's own generation. The text is cached by image hash (Redis when configured, the
in-process LRU otherwise), and reads of the same photo in flight are shared.

A photo whose reading did not finish within ``GUARD_OCR_BUDGET_S`` of its arrival is scored
without its text; the decision says so (``image_text_status: "timeout"``). The reading goes on
in the background and its text serves the next request about the same photo.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal, Protocol

from PIL import Image, ImageDraw

from guard.images import DecodedImage, thumbnail_for_scoring
from guard.settings import Settings

log = logging.getLogger(__name__)

OCR_KEY_PREFIX = "rg:ocr:"
MAX_TEXT_CHARS = 4000
"""Longer photo text is cut (the scorer reads at most 2000 characters of question + photo text)."""
MAX_SIDE = 2000
"""Larger photos are scaled down before reading (bounds the time; text this size stays legible)."""
MIN_SIDE = 32
"""Photos narrower or lower than this (icons, thumbnails) are not read: no legible text fits."""

Status = Literal["read", "cached", "empty", "timeout", "error", "busy", "off"]
"""How a photo's text was obtained: read now / from the cache / no text in it / not within the
budget / the reader failed / too many photos already being read / OCR is off."""


class OcrError(RuntimeError):
    """The OCR model cannot be loaded or used."""


class OcrReader(Protocol):
    @property
    def name(self) -> str:
        """Model and version: part of the cache key, so a new model never serves stale text."""
        ...

    def read(self, image: Image.Image) -> str:
        """The text in ``image`` (RGB), lines joined by newlines; "" when there is none. Blocking."""
        ...


class TextCache(Protocol):
    async def get_text(self, key: str) -> str | None: ...

    async def set_text(self, key: str, text: str) -> None: ...


class RapidOcrReader:
    """PP-OCRv6 (zh + en) through ``rapidocr`` and onnxruntime, with CPU threads capped."""

    def __init__(self, threads: int = 2, min_confidence: float = 0.5) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise OcrError(f"the OCR package 'rapidocr' is not installed ({exc}); set GUARD_OCR=off") from exc
        params: dict[str, Any] = {
            "Global.log_level": "error",
            "Global.text_score": float(min_confidence),
            "EngineConfig.onnxruntime.intra_op_num_threads": max(1, int(threads)),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        }
        try:
            self._engine = RapidOCR(params=params)
        except Exception as exc:
            raise OcrError(f"cannot load the OCR models of rapidocr: {exc}") from exc
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)
        self._lock = threading.Lock()  # one shared reader may serve several apps' worker threads
        self._name = f"rapidocr=={_version('rapidocr')}/onnxruntime=={_version('onnxruntime')}"
        self.read(_warm_up_image())  # onnxruntime's first run is slow: pay it at start-up, not on a photo

    @property
    def name(self) -> str:
        return self._name

    def read(self, image: Image.Image) -> str:
        if min(image.size) < MIN_SIDE:  # too small to hold legible text: not worth a second of CPU
            return ""
        if max(image.size) > MAX_SIDE:
            image = thumbnail_for_scoring(image, MAX_SIDE)
        with self._lock:
            out = self._engine(image)
        lines = [str(t).strip() for t in (getattr(out, "txts", None) or ())]
        return "\n".join(line for line in lines if line)[:MAX_TEXT_CHARS]


def _warm_up_image() -> Image.Image:
    im = Image.new("RGB", (160, 48), "white")
    ImageDraw.Draw(im).text((8, 16), "Order 58213 $42.78", fill="black")
    return im


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def ocr_key(reader: str, image_sha256: str) -> str:
    return OCR_KEY_PREFIX + hashlib.sha256(f"{reader}\x00{image_sha256}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PhotoText:
    text: str | None
    """The photo's text, or None when there is none to use (see ``status``)."""
    status: Status
    ms: float = 0.0
    """How long the caller waited for it."""


@dataclass
class _Reading:
    task: asyncio.Task[tuple[str | None, bool]]
    started: float


class OcrService:
    """Reads photos in one worker thread: shared in-flight reads, a cache, a budget per photo."""

    def __init__(self, reader: OcrReader, cache: TextCache, *, budget_s: float, max_pending: int = 8) -> None:
        self.reader = reader
        self._cache = cache
        self._budget = budget_s
        self._max_pending = max(1, max_pending)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ocr")
        self._inflight: dict[str, _Reading] = {}

    def start(self, image: DecodedImage) -> None:
        """Begin reading ``image`` now unless it is already being read (call on the event loop)."""
        self._reading(image)

    def _reading(self, image: DecodedImage) -> _Reading | None:
        found = self._inflight.get(image.sha256)
        if found is not None:
            return found
        if len(self._inflight) >= self._max_pending:
            return None
        task = asyncio.get_running_loop().create_task(self._read(image), name=f"ocr-{image.sha256[:8]}")
        reading = _Reading(task, time.monotonic())
        self._inflight[image.sha256] = reading
        task.add_done_callback(lambda _t: self._inflight.pop(image.sha256, None))
        return reading

    async def _read(self, image: DecodedImage) -> tuple[str | None, bool]:
        """(text or None when the reader failed, whether it came from the cache)."""
        key = ocr_key(self.reader.name, image.sha256)
        cached = await self._cache.get_text(key)
        if cached is not None:
            return cached, True
        loop = asyncio.get_running_loop()
        try:
            text = await loop.run_in_executor(self._executor, self.reader.read, image.rgb)
        except Exception:
            log.exception("reading the text of photo %s failed", image.sha256[:12])
            return None, False
        text = text.strip()[:MAX_TEXT_CHARS]
        await self._cache.set_text(key, text)
        return text, False

    async def text(self, image: DecodedImage) -> PhotoText:
        """The photo's text, waiting at most until its budget (counted from its arrival) runs out."""
        t0 = time.perf_counter()
        reading = self._reading(image)
        if reading is None:
            return PhotoText(None, "busy")
        remaining = reading.started + self._budget - time.monotonic()
        try:
            text, from_cache = await asyncio.wait_for(asyncio.shield(reading.task), max(remaining, 0.0))
        except TimeoutError:
            return PhotoText(None, "timeout", _ms(t0))
        ms = _ms(t0)
        if text is None:
            return PhotoText(None, "error", ms)
        if not text:
            return PhotoText(None, "empty", ms)
        return PhotoText(text, "cached" if from_cache else "read", ms)

    async def close(self) -> None:
        for reading in list(self._inflight.values()):
            reading.task.cancel()
        self._inflight.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


@functools.lru_cache(maxsize=4)
def load_reader(threads: int) -> OcrReader:
    """The OCR model, loaded once per process (about a second) and shared by every app in it."""
    return RapidOcrReader(threads=threads)


async def open_ocr(settings: Settings, cache: TextCache) -> OcrService | None:
    """The OCR service GUARD_OCR asks for (None when "off"); loads the model off the event loop."""
    mode = settings.ocr.strip().lower()
    if mode == "off":
        return None
    if mode != "on":
        raise ValueError(f"GUARD_OCR={settings.ocr!r} is not valid: use 'on' or 'off'")
    reader = await asyncio.to_thread(load_reader, max(1, settings.ocr_threads))
    return OcrService(reader, cache, budget_s=settings.ocr_budget_s, max_pending=settings.ocr_max_pending)
