"""The scorer's kind models (guard.scoring.kinds) and how fit_bundled keeps them honest."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from guard.errors import ScorerError
from guard.issues.lexicon import KINDS
from guard.scoring import fit_bundled
from guard.scoring.base import ScoreInput
from guard.scoring.bundled import CALIBRATION_PATH, UseEncoder, parse_calibration
from guard.scoring.features import DENSE_DIM
from guard.scoring.kinds import (
    KIND_FEATURES,
    KindModels,
    empty_kind_models,
    fit_kind_models,
    kind_features,
    parse_kind_models,
    question_kinds,
)
from guard.scoring.perturb import Source, generate

SHIPPED = parse_calibration(CALIBRATION_PATH.read_bytes())


def fake_embed(texts: Sequence[str]) -> NDArray[np.float32]:
    """Deterministic unit vectors: one direction per kind word found, noise otherwise."""
    out = np.zeros((len(texts), DENSE_DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        rng = np.random.default_rng(sum(map(ord, t)))
        out[i] = rng.normal(size=DENSE_DIM)
        out[i] /= np.linalg.norm(out[i])
    return out


def unit(n: int = DENSE_DIM) -> NDArray[np.float64]:
    v = np.ones(n)
    return v / np.linalg.norm(v)


def test_the_shipped_models_tell_the_customers_problem_from_another() -> None:
    encoder = UseEncoder(threads=1)
    names = dict(zip(KIND_FEATURES, range(len(KIND_FEATURES)), strict=True))

    def features(q: str, reply: str, lang: str) -> NDArray[np.float64]:
        e = encoder.encode([reply])[0].astype(np.float64)
        return kind_features(SHIPPED.kinds, question_kinds(SHIPPED.kinds, q, None, lang), reply, lang, e)

    q = "The pocket seam on my new jeans came open after one wash."
    on = features(
        q, "Sorry the pocket seam came open, we'll repair the seam for free or send a new pair.", "en"
    )
    off = features(
        q, "Sorry about the stain, soak it in cold water with a little dish soap before washing.", "en"
    )
    assert on[names["kind_match"]] > 0.5 > off[names["kind_match"]]
    assert on[names["r_cue_q_kind"]] == 1.0 and off[names["r_cue_other_only"]] == 1.0
    zh_q = "我的牛仔裤口袋开线了"
    zh_on = features(zh_q, "口袋开线了真抱歉，给您免费补缝或者换一条新的。", "zh")
    zh_off = features(zh_q, "包裹已经到了您家附近的快递站，今天会派送。", "zh")
    assert zh_on[names["kind_match"]] > 0.5 > zh_off[names["kind_match"]]


def test_an_empty_reply_has_no_kind() -> None:
    p_q = question_kinds(SHIPPED.kinds, "box crushed", None, "en")
    assert not kind_features(SHIPPED.kinds, p_q, "  ", "en", unit()).any()


def test_models_round_trip_through_json_and_refuse_other_shapes() -> None:
    models = fit_kind_models(
        [("the box is crushed", "en", "damaged_parcel"), ("my order is late", "en", "late_delivery")],
        [
            ("we'll replace the crushed box", "en", "damaged_parcel"),
            ("it ships today", "en", "late_delivery"),
        ],
        fake_embed,
    )
    back = parse_kind_models(json.loads(json.dumps(models.to_json())), DENSE_DIM)
    e = unit()

    def features(m: KindModels) -> NDArray[np.float64]:
        return kind_features(
            m, question_kinds(m, "the box is crushed", None, "en"), "we'll replace the box", "en", e
        )

    assert np.allclose(features(models), features(back), atol=1e-4)
    doc = models.to_json()
    doc["reply"]["classes"] = list(KINDS[:-1])
    doc["reply"]["bias"] = doc["reply"]["bias"][:-1]
    doc["reply"]["weights"] = {}
    with pytest.raises(ValueError, match="classes"):
        parse_kind_models(doc, DENSE_DIM)
    with pytest.raises(ValueError):
        parse_kind_models(models.to_json(), DENSE_DIM + 1)


def test_a_calibration_without_kind_models_is_refused() -> None:
    doc = json.loads(CALIBRATION_PATH.read_bytes())
    del doc["kinds"]
    with pytest.raises(ScorerError, match="bad bundled calibration"):
        parse_calibration(json.dumps(doc).encode())


def test_empty_models_know_nothing() -> None:
    blank = empty_kind_models(DENSE_DIM)
    f = kind_features(blank, question_kinds(blank, "box crushed", None, "en"), "new box today", "en", unit())
    assert f[0] == pytest.approx(1 / len(KINDS))


def _sources() -> list[Source]:
    out = []
    for i, kind in enumerate(KINDS * 2):
        qid = f"{i:03d}"
        out.append(
            Source(f"dev-{qid}-a", qid, "en", kind, f"question {i} about {kind}", f"fix for {kind} #{i}", 2)
        )
    return out


def test_generated_replies_of_other_questions_stay_in_their_fold() -> None:
    sources = _sources()
    group = {s.qid: fit_bundled.fold_of(s.qid) for s in sources}
    reply_fold = {s.reply: group[s.qid] for s in sources}
    borrowed = [g for g in generate(sources, group=group) if g.kind in ("other_issue", "other_language")]
    assert borrowed and all(reply_fold[g.reply] == group[g.qid] for g in borrowed)
    anywhere = [g for g in generate(sources) if g.kind == "other_issue"]
    assert any(reply_fold[g.reply] != group[g.qid] for g in anywhere)  # the check above can fail


def test_folds_depend_on_the_question_alone() -> None:
    assert fit_bundled.group_folds(["001", "002", "001"]).tolist()[0::2] == [fit_bundled.fold_of("001")] * 2
    assert fit_bundled.group_folds(["001"]).tolist() == fit_bundled.group_folds(["zzz", "001"]).tolist()[1:]


def test_the_reply_models_never_see_a_held_out_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cross-validation leaves the held-out fold's reply texts out of the kind models (a swapped
    reply held out is another question's good reply, which is in the training folds)."""
    seen: list[list[str]] = []

    def record(questions: Any, replies: Sequence[tuple[str, str, str]], embed: Any) -> Any:
        seen.append([t for t, _, _ in replies])
        return empty_kind_models(DENSE_DIM)

    monkeypatch.setattr(fit_bundled, "fit_kind_models", record)
    cases = [fit_bundled.to_case(s) for s in _sources()]
    held = frozenset({cases[0].item.reply})
    fit_bundled.fit_kinds(cases, fit_bundled.CachedEncoder(FakeEncoder()), held)
    assert seen and cases[0].item.reply not in seen[-1] and cases[1].item.reply in seen[-1]


class FakeEncoder:
    model_id = "fake"

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return fake_embed(texts)


def test_scores_use_the_kind_of_the_reply_the_customer_reads() -> None:
    """A spam sentence naming the customer's problem does not make another problem's reply match:
    only the sentences read as content carry a kind (guard.scoring.bundled.build_features)."""
    from guard.scoring.bundled import BundledScorer

    scorer = BundledScorer.load(threads=1)
    q = "The zipper on my jacket broke after one day."
    stain = "Sorry about the stain. Soak it in cold water with dish soap, then wash as usual."
    [plain, spammed] = scorer.scores(
        [
            ScoreInput(q, stain, locale="en"),
            ScoreInput(q, stain + " Golden Palace Casino zipper jackpot!", locale="en"),
        ]
    )
    assert plain < 0.4 and spammed <= plain + 0.02


@pytest.mark.parametrize(
    "reply",
    [
        "a " * 750,
        "'" * 1500,
        "开" * 1500,
        "-".join(["seam"] * 300),
        "x" * 100_000,
        "not " * 5000,
        "口袋开线" * 3000,
    ],
)
def test_reading_a_hostile_reply_for_its_kind_is_bounded(reply: str) -> None:
    """Whatever the reply, its kind is read from a bounded prefix (MAX_KIND_CHARS) in bounded time:
    no cue pattern backtracks on long runs (a few ms each on this machine; the bound allows for load)."""
    import time

    p_q = question_kinds(SHIPPED.kinds, "The box arrived crushed", None, "en")
    for lang in ("en", "zh"):
        started = time.thread_time()
        kind_features(SHIPPED.kinds, p_q, reply, lang, unit())
        assert time.thread_time() - started < 0.1
