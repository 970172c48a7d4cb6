"""Score maps: the calibration data of the model backends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from guard.errors import ScorerError
from guard.scoring.score_map import fit_logistic, load_score_map, parse_score_map, score_map_json


@pytest.mark.parametrize("backend", ["reranker", "clip", "remote"])
def test_packaged_maps_load(backend: str) -> None:
    m = load_score_map(None, backend=backend)
    assert m.backend == backend and m.id.startswith(f"cal-{m.version}-")


def test_fit_recovers_a_logistic_map_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2))
    p = 1 / (1 + np.exp(-(x @ np.array([2.0, -1.0]) + 0.5)))
    w, b = fit_logistic(x, p)  # soft targets: the exact probabilities
    assert w == pytest.approx([2.0, -1.0], abs=0.01) and b == pytest.approx(0.5, abs=0.01)
    text = score_map_json(backend="clip", version="t", maps={"image": (["a", "b"], w, b)})
    m = parse_score_map(text.encode(), backend="clip")
    assert m.score("image", {"a": 0.3, "b": 0.1}) == pytest.approx(
        1 / (1 + np.exp(-(0.6 - 0.1 + 0.5))), abs=1e-3
    )


def test_post_map_is_applied_and_validated() -> None:
    doc = {
        "format": "guard-score-map-1",
        "backend": "remote",
        "version": "1",
        "maps": {"default": {"features": ["relevance"], "w": [0.0], "b": 0.0}},
        "post": {"x": [0, 0.5, 1], "y": [0, 0.8, 1]},
    }
    assert (
        parse_score_map(json.dumps(doc).encode(), backend="remote").score("default", {"relevance": 1}) == 0.8
    )
    doc["post"] = {"x": [0, 0, 1], "y": [0, 0.5, 1]}
    with pytest.raises(ScorerError, match="increasing x"):
        parse_score_map(json.dumps(doc).encode(), backend="remote")
