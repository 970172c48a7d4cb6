"""CLIP / Chinese-CLIP / SigLIP similarity scorer, on tiny random-weight checkpoints built here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from guard.app import load_scorer
from guard.errors import ScorerError
from guard.scoring.base import ScoreInput
from guard.scoring.clip import ClipConfig, ClipScorer
from guard.settings import Settings
from tests.models import build_clip

FAMILIES = ("clip", "chinese_clip", "siglip")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {fam: build_clip(root / fam, family=fam) for fam in FAMILIES}


ITEMS = [
    ScoreInput(
        "The pocket seam came open", "We will send a replacement.", image=Image.new("RGB", (90, 60), "red")
    ),
    ScoreInput("口袋开线怎么办？", "感谢您的反馈，本品支持7天无理由退换。"),
    ScoreInput("My parcel arrived crushed", "We will refund you.", image=Image.effect_noise((64, 48), 80)),
    ScoreInput("", "Please share a photo.", image_text="ORDER 1029 payment failed"),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_from_settings_and_scores(checkpoints: dict[str, Path], family: str) -> None:
    s = load_scorer(Settings(scorer="clip", clip_model=str(checkpoints[family])))
    assert isinstance(s, ClipScorer) and s.model_type == family
    results = s.score_batch(ITEMS)
    assert all(0.0 <= r.score <= 1.0 and math.isfinite(r.score) for r in results)
    assert [r.inputs_used for r in results] == [
        ("question", "image", "reply"),
        ("question", "reply"),
        ("question", "image", "reply"),
        ("question", "image_text", "reply"),
    ]
    assert not any(r.instruction_used for r in results)
    assert s.version.startswith(f"clip:{family}@") and ":cal-prior-1-" in s.version


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_matches_one_by_one_and_the_photo_counts(checkpoints: dict[str, Path], family: str) -> None:
    s = ClipScorer.load(ClipConfig(model=str(checkpoints[family]), batch_size=3))
    batched = s.features(ITEMS)
    single = [s.features([it])[0] for it in ITEMS]
    for b, o in zip(batched, single, strict=True):
        assert b.keys() == o.keys()
        for k in b:
            assert b[k] == pytest.approx(o[k], abs=1e-5)
    q, r = "What is wrong?", "We will send a replacement."
    red, blue = s.features(
        [
            ScoreInput(q, r, image=Image.new("RGB", (40, 40), "red")),
            ScoreInput(q, r, image=Image.effect_noise((40, 40), 90)),
        ]
    )
    assert abs(red["image_reply"] - blue["image_reply"]) > 1e-6
    assert all(-1.0001 <= v <= 1.0001 for f in batched for v in f.values())


def test_score_is_the_calibrated_map_of_the_similarities(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    cal = tmp_path / "clip.json"
    cal.write_text(
        json.dumps(
            {
                "format": "guard-score-map-1",
                "backend": "clip",
                "version": "t-1",
                "maps": {
                    "image": {"features": ["image_reply"], "w": [3.0], "b": 0.5},
                    "text": {"features": ["question_reply"], "w": [-2.0], "b": 0.0},
                },
            }
        )
    )
    s = ClipScorer.load(ClipConfig(model=str(checkpoints["clip"]), calibration=str(cal)))
    f = s.features(ITEMS[:2])
    scores = [r.score for r in s.score_batch(ITEMS[:2])]
    assert scores[0] == pytest.approx(1 / (1 + math.exp(-(3 * f[0]["image_reply"] + 0.5))))
    assert scores[1] == pytest.approx(1 / (1 + math.exp(2 * f[1]["question_reply"])))
    assert s.score_batch([ScoreInput("q", "  ")])[0].score == 0.0


def test_bad_configuration_fails_with_a_clear_message(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="does not exist"):
        load_scorer(Settings(scorer="clip", clip_model=str(tmp_path / "nope")))
    with pytest.raises(ScorerError, match="GUARD_CLIP_MODEL is not set"):
        load_scorer(Settings(scorer="clip"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ScorerError, match="'qwen2_vl' model; supported: clip, chinese_clip, siglip"):
        load_scorer(Settings(scorer="clip", clip_model=str(tmp_path)))
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "guard-score-map-1", "backend": "clip", "version": "1", "maps": {"text": {}}}')
    with pytest.raises(ScorerError, match="bad clip calibration: KeyError"):
        load_scorer(Settings(scorer="clip", clip_model=str(checkpoints["clip"]), model_calibration=str(bad)))
