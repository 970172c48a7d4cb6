"""Calibration as data for the model backends (reranker, clip, remote).

A score map turns a model's raw outputs (named features such as the reranker's yes-minus-no
logit or CLIP's cosine similarities) into a score in [0, 1] with a logistic map per input
kind, optionally followed by a monotone piecewise-linear post map::

    {
      "format": "guard-score-map-1",
      "backend": "reranker",
      "version": "identity-1",
      "note": "P(yes) as the model gives it; not fitted on labelled data",
      "maps": {"default": {"features": ["yes_no_logit"], "w": [1.0], "b": 0.0}},
      "post": {"x": [0, 1], "y": [0, 1]}
    }

The map's ``version`` and a hash of the file's bytes are part of the scorer version (and so of
the cache key): refitting changes the scores' cache keys. ``fit_logistic`` fits a map from
labelled examples (grades 0/1/2 as soft targets 0, 0.5, 1), as ``guard eval`` data provides.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guard.errors import ScorerError

FORMAT = "guard-score-map-1"
CALIBRATION_DIR = Path(__file__).with_name("calibration")


@dataclass(frozen=True, slots=True)
class LogisticMap:
    features: tuple[str, ...]
    w: tuple[float, ...]
    b: float

    def apply(self, values: Mapping[str, float]) -> float:
        z = self.b + sum(wi * float(values[f]) for f, wi in zip(self.features, self.w, strict=True))
        return _sigmoid(z)


@dataclass(frozen=True, slots=True)
class ScoreMap:
    backend: str
    version: str
    sha: str
    maps: Mapping[str, LogisticMap]
    post_x: tuple[float, ...] = (0.0, 1.0)
    post_y: tuple[float, ...] = (0.0, 1.0)
    note: str = ""

    @property
    def id(self) -> str:
        """Goes into the scorer version: the map's own version and a hash of its bytes."""
        return f"cal-{self.version}-{self.sha}"

    def score(self, kind: str, values: Mapping[str, float]) -> float:
        """Calibrated score in [0, 1] from raw feature ``values`` with the map for ``kind``."""
        m = self.maps.get(kind) or self.maps.get("default")
        if m is None:
            raise ScorerError(f"the {self.backend} calibration has no map for {kind!r} and no 'default'")
        s = float(np.interp(m.apply(values), self.post_x, self.post_y))
        if not math.isfinite(s):
            raise ScorerError(f"the {self.backend} calibration produced a non-finite score")
        return min(1.0, max(0.0, s))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logit(p: float, eps: float = 1e-6) -> float:
    """The inverse of the sigmoid, clamped away from 0 and 1."""
    q = min(1.0 - eps, max(eps, float(p)))
    return math.log(q / (1.0 - q))


def parse_score_map(
    raw: bytes, *, backend: str, needs: Mapping[str, Sequence[str]] | None = None
) -> ScoreMap:
    """Parse and validate a score map; ``needs`` maps a kind to the features the code can provide.

    Raises ScorerError saying what is wrong, so a bad file fails at start-up.
    """
    try:
        d: dict[str, Any] = json.loads(raw.decode("utf-8"))
        if not isinstance(d, dict):
            raise ScorerError("a score map must be a JSON object")
        if d.get("format") != FORMAT:
            raise ScorerError(f"format is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("backend") != backend:
            raise ScorerError(f"it is for backend {d.get('backend')!r}, not {backend!r}")
        maps: dict[str, LogisticMap] = {}
        for kind, m in dict(d["maps"]).items():
            feats = tuple(str(f) for f in m["features"])
            w = tuple(float(v) for v in m["w"])
            if len(feats) != len(w) or not feats:
                raise ScorerError(f"map {kind!r}: features and w must be non-empty and of equal length")
            b = float(m["b"])
            if not all(math.isfinite(v) for v in (*w, b)):
                raise ScorerError(f"map {kind!r}: non-finite weight")
            maps[str(kind)] = LogisticMap(feats, w, b)
        post = d.get("post") or {"x": [0.0, 1.0], "y": [0.0, 1.0]}
        post_x = tuple(float(v) for v in post["x"])
        post_y = tuple(float(v) for v in post["y"])
        version = str(d["version"])
    except ScorerError as exc:
        raise ScorerError(f"bad {backend} calibration: {exc}") from exc
    except (KeyError, TypeError, ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise ScorerError(f"bad {backend} calibration: {type(exc).__name__}: {exc}") from exc
    if not maps:
        raise ScorerError(f"bad {backend} calibration: no maps")
    if len(post_x) != len(post_y) or len(post_x) < 2 or any(b <= a for a, b in itertools.pairwise(post_x)):
        raise ScorerError(f"bad {backend} calibration: post map needs >= 2 knots with increasing x")
    for kind, provided in (needs or {}).items():
        m = maps.get(kind) or maps.get("default")
        if m is None:
            raise ScorerError(f"bad {backend} calibration: no map for {kind!r} (and no 'default')")
        unknown = set(m.features) - set(provided)
        if unknown:
            raise ScorerError(
                f"bad {backend} calibration: map for {kind!r} uses {sorted(unknown)}, "
                f"the {backend} scorer provides {list(provided)}"
            )
    return ScoreMap(
        backend=backend,
        version=version,
        sha=hashlib.sha256(raw).hexdigest()[:12],
        maps=maps,
        post_x=post_x,
        post_y=post_y,
        note=str(d.get("note", "")),
    )


def load_score_map(
    path: str | Path | None, *, backend: str, needs: Mapping[str, Sequence[str]] | None = None
) -> ScoreMap:
    """Read a score map file (the packaged ``calibration/<backend>.json`` when ``path`` is None)."""
    p = Path(path) if path else CALIBRATION_DIR / f"{backend}.json"
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ScorerError(f"cannot read the {backend} calibration {p}: {exc}") from exc
    return parse_score_map(raw, backend=backend, needs=needs)


def fit_logistic(
    x: NDArray[np.float64], target: NDArray[np.float64], *, l2: float = 1e-3, iters: int = 50
) -> tuple[NDArray[np.float64], float]:
    """Fit ``sigmoid(x @ w + b)`` to soft targets in [0, 1] by Newton's method (weights, bias).

    For grades 0/1/2 use targets 0, 0.5 and 1: the score then estimates the expected grade / 2,
    which is what the default bands (escalate < 0.4 < review < 0.5 < follow-up < 0.7 <= send) assume.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != t.shape[0] or x.shape[0] == 0:
        raise ValueError("x must be (n, k) and target (n,)")
    a = np.hstack([x, np.ones((x.shape[0], 1))])
    theta = np.zeros(a.shape[1])
    reg = np.full(a.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a @ theta)))
        grad = a.T @ (p - t) + reg * theta
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg) + 1e-9 * np.eye(a.shape[1])
        step = np.linalg.solve(hess, grad)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-9:
            break
    return theta[:-1].copy(), float(theta[-1])


def score_map_json(
    *,
    backend: str,
    version: str,
    maps: Mapping[str, tuple[Sequence[str], Sequence[float], float]],
    note: str = "",
) -> str:
    """The JSON text of a score map (for writing a freshly fitted calibration)."""
    doc = {
        "format": FORMAT,
        "backend": backend,
        "version": version,
        "note": note,
        "maps": {
            kind: {"features": list(f), "w": [float(v) for v in w], "b": float(b)}
            for kind, (f, w, b) in maps.items()
        },
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
