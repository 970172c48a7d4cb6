from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.issues import MAX_PHRASE_CHARS, OTHER, read_issue
from guard.issues.eval import (
    IssueCase,
    evaluate_issue_reading,
    fit_model,
    format_issue_report,
    load_issue_cases,
    main,
    overlap_f1,
)
from guard.issues.lexicon import KINDS
from guard.issues.model import bundled_model, parse_model
from guard.issues.text import plain_text

OWN = Path(__file__).parent / "data" / "cases_own.jsonl"
DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dev" / "cases.jsonl"
OWN_CASES = load_issue_cases(OWN)
MARKUP = re.compile(r"[<>{}\\`|]|&[a-z]+;|\b(?:script|alert|onerror|javascript)\b", re.I)
INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ud800-\udfff]")


def assert_clean(phrase: str | None, locale: str) -> None:
    if phrase is None:
        return
    assert phrase.strip() == phrase and phrase
    assert len(phrase) <= MAX_PHRASE_CHARS[locale]
    assert not MARKUP.search(phrase), phrase
    assert not INVISIBLE.search(phrase), phrase
    assert "None" not in phrase


@pytest.mark.parametrize("case", OWN_CASES, ids=lambda c: c.id)
def test_every_own_question_reads_cleanly(case: IssueCase) -> None:
    reading = read_issue(case.question, None, case.lang)
    assert reading.kind in (*KINDS, OTHER)
    assert 0.0 <= reading.confidence <= 1.0
    assert reading.locale == case.lang
    assert_clean(reading.phrase, case.lang)
    if reading.phrase is not None:
        assert reading.stated
        # The bundled model was fitted on these questions: a phrase under a wrong kind is a regression.
        assert reading.kind == case.kind, (case.question, reading)


def test_cross_validated_on_own_cases() -> None:
    report = evaluate_issue_reading(OWN_CASES)
    for lang, scores in report.by_language.items():
        assert scores.kind_accuracy >= 0.9, (lang, scores)
        assert scores.phrase_coverage >= 0.9, (lang, scores)
        assert scores.wrong_kind_rate <= 0.1, (lang, scores)  # 63 questions: one phrase is 6%
    text = format_issue_report(report)
    assert "kind_acc" in text and "zh" in text and "en" in text


@pytest.mark.skipif(not DEV.is_file(), reason="the shared dev set is not here")
def test_dev_set_targets_by_cross_validation() -> None:
    report = evaluate_issue_reading(load_issue_cases(DEV))
    assert report.overall.kind_accuracy >= 0.90, report.overall
    for lang, scores in report.by_language.items():
        assert scores.phrase_coverage >= 0.95, (lang, scores)
        assert scores.wrong_kind_rate <= 0.02, (lang, scores)
        assert scores.stated_accuracy >= 0.9, (lang, scores)
        assert scores.overlap_f1 >= 0.35, (lang, scores)


@pytest.mark.parametrize(
    ("question", "image_text", "locale", "kind", "phrase"),
    [
        ("新买的牛仔裤，右边口袋开线了，才穿了一次", None, "zh", "open_seam", "右边口袋开线"),
        ("裤子<script>alert(1)</script>口袋开线了", None, "zh", "open_seam", "裤子口袋开线"),
        ("裤子&lt;script&gt;x&lt;/script&gt;口袋开线了", None, "zh", "open_seam", "裤子口袋开线"),
        ("口\u200b袋\u202e开线了", None, "zh", "open_seam", "口袋开线"),
        ("卫衣腋下那条缝线裂开了一截", None, "zh", "open_seam", "卫衣腋下缝线裂开"),
        ("羽绒服后背一块灰灰的污渍，擦不掉", None, "zh", "stain", "羽绒服后背灰灰的污渍"),
        (
            "There's a bleach spot on the front of the navy hoodie I just received.",
            None,
            "en",
            "stain",
            "bleach spot on your navy hoodie",
        ),
        (
            "The button on my jeans popped off the first time I wore them.",
            None,
            "en",
            "broken_zipper_button",
            "loose button on your jeans",
        ),
        (
            "Why was I charged twice?",
            "SHOPLY*ORDER 58213\n-$42.78\nSHOPLY*ORDER 58213\n-$42.78",
            "en",
            "wrong_charge",
            "duplicate charge of $42.78",
        ),
        (
            "Tried three times, same thing every time.",
            "Error 500\nSomething went wrong",
            "en",
            "app_error",
            "error 500",
        ),
    ],
)
def test_readings(question: str, image_text: str | None, locale: str, kind: str, phrase: str) -> None:
    reading = read_issue(question, image_text, locale)
    assert (reading.kind, reading.phrase, reading.stated) == (kind, phrase, True)


@pytest.mark.parametrize(
    ("question", "locale"),
    [
        ("这啥", "zh"),
        ("这个怎么办？", "zh"),
        ("你们自己看", "zh"),
        ("look", "en"),
        ("Look at this, what now?", "en"),
        ("Check the tag.", "en"),
        ("", "en"),
        ("<b></b>", "en"),
        ("\u200b\u200b", "zh"),
    ],
)
def test_vague_questions_state_nothing_and_get_no_phrase(question: str, locale: str) -> None:
    reading = read_issue(question, None, locale)
    assert not reading.stated and reading.phrase is None


def test_a_pointer_at_the_photo_states_the_issue_with_the_photos_text() -> None:
    without = read_issue("Check the tag. I ordered a large.", None, "en")
    with_text = read_issue("Check the tag. I ordered a large.", "S\nS/P/CH\n60% cotton 40% poly", "en")
    assert not without.stated and without.phrase is None
    assert with_text.stated and with_text.kind == "wrong_item" and with_text.phrase == "wrong size sent"


@given(
    st.text(max_size=60).filter(lambda t: "None" not in t),  # assert_clean looks for a str(None)
    st.sampled_from(
        [
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "{{ 7*7 }}",
            "\u202e",
            "\x00",
            "&lt;b&gt;",
            "[x](javascript:alert(1))",
            "\ud800",
            "</",
            "<!-- c",
        ]
    ),
    st.sampled_from(["口袋开线了", "the seam on my jeans came open", "箱子压扁了", "I was charged twice"]),
)
@settings(max_examples=300, deadline=None)
def test_phrases_are_plain_text_whatever_is_mixed_in(noise: str, markup: str, issue: str) -> None:
    for question in (noise + markup + issue, issue + markup + noise, markup + issue + markup):
        reading = read_issue(question, markup + noise, None)
        assert_clean(reading.phrase, reading.locale)


def test_plain_text_strips_markup_controls_and_bounds_length() -> None:
    assert plain_text("a<b>b</b>c") == "abc"
    assert plain_text("x<script>var a = '<p>';</script>y") == "xy"
    assert plain_text("x<script>never closed y") == "x"
    assert plain_text("tab\there\nnew\x00line") == "tab here new line"
    assert plain_text("z\u0336a\u0301l\u200bg\ufeffo") == "zálgo"
    assert len(plain_text("开线" * 100_000)) == 4000


def test_huge_input_is_read_quickly() -> None:
    question = ("裤子口袋开线了，" + "<b>" * 1000) * 200
    t = time.perf_counter()
    reading = read_issue(question, "x" * 1_000_000, None)
    assert time.perf_counter() - t < 0.5
    assert_clean(reading.phrase, reading.locale)


def test_a_read_takes_well_under_a_millisecond() -> None:
    read_issue("warm up", None, "en")
    timings = []
    for case in OWN_CASES:
        t = time.perf_counter()
        read_issue(case.question, None, case.lang)
        timings.append(time.perf_counter() - t)
    timings.sort()
    assert timings[len(timings) // 2] < 0.001


def test_fitting_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    first, second = fit_model(OWN_CASES), fit_model(OWN_CASES)
    assert first.to_json() == second.to_json()
    assert parse_model(json.loads(json.dumps(first.to_json()))).to_json() == first.to_json()
    out = tmp_path / "model.json"
    assert main(["fit", str(OWN), "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == first.to_json()


def test_the_bundled_model_knows_every_kind() -> None:
    assert bundled_model().classes == KINDS
    with pytest.raises(ValueError):
        parse_model({"format": 99})


def test_eval_cli_refuses_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    assert main(["eval", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("phrase", "label", "lang", "expected"),
    [
        ("口袋开线", "口袋开线", "zh", 1.0),
        ("右边口袋开线", "口袋开线", "zh", 0.8),
        ("开线", "破洞", "zh", 0.0),
        ("bleach spot on your navy hoodie", "bleach spot on navy hoodie", "en", 1.0),
        ("tear", "stain", "en", 0.0),
    ],
)
def test_overlap_f1(phrase: str, label: str, lang: str, expected: float) -> None:
    assert overlap_f1(phrase, label, lang) == pytest.approx(expected)


def test_a_question_that_states_nothing_without_a_photo_is_other() -> None:
    assert read_issue("hello?", None, "en", has_photo=False).kind == OTHER
    assert read_issue("这个怎么办？", None, "zh", has_photo=False).kind == OTHER
    with_photo = read_issue("这个怎么办？", None, "zh", has_photo=True)
    assert with_photo.kind in KINDS and with_photo.phrase is None and not with_photo.stated
    assert read_issue("口袋开线了", None, "zh", has_photo=False).kind == "open_seam"


QUESTIONS = [
    json.loads(line) for line in (OWN.parent / "issue_questions.jsonl").read_text("utf-8").splitlines()
]


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_questions_in_other_words(lang: str) -> None:
    """Questions written apart from the dev set, one or two per kind in each language.

    The lexicon grew from their misreadings, so this guards against regressions; the first
    reading of each batch, before that, was the held-out estimate.
    """
    rows = [q for q in QUESTIONS if q["lang"] == lang]
    readings = [read_issue(q["question"], None, lang, has_photo=False) for q in rows]
    right = sum(r.kind == q["issue"] for r, q in zip(readings, rows, strict=True))
    wrong_phrases = sum(
        r.phrase is not None and r.kind != q["issue"] for r, q in zip(readings, rows, strict=True)
    )
    assert right / len(rows) >= 0.9
    assert sum(r.phrase is not None for r in readings) / len(rows) >= 0.9
    assert wrong_phrases / len(rows) <= 0.05
    for r in readings:
        assert_clean(r.phrase, lang)


def test_photo_texts_may_be_keyed_by_the_path_as_written_or_as_resolved() -> None:
    shot = next(c for c in OWN_CASES if c.image and c.image.endswith("scr_02.png"))
    text = "SHOPLY*ORDER 58213\n-$42.78\nSHOPLY*ORDER 58213\n-$42.78"
    by_written = evaluate_issue_reading(OWN_CASES, {shot.image: text})
    by_resolved = evaluate_issue_reading(OWN_CASES, {shot.image_path: text})
    assert by_written.to_json() | {"mean_read_us": 0} == by_resolved.to_json() | {"mean_read_us": 0}
    reading = next(o.reading for o in by_written.outcomes if o.case.id == shot.id)
    assert reading.kind == "wrong_charge" and reading.phrase == "duplicate charge of $42.78"
