"""`guard eval` and `guard score`: the metric functions, the runner with a fake scorer, the commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guard.evaluation import (
    EvalError,
    agreement,
    auroc,
    confusion,
    format_report,
    load_cases,
    percentile,
    run,
)
from tests.apptools import png_bytes
from tests.conftest import SHARED_DEV
from tests.fakes import FakeScorer
from tests.test_cli import guard


@pytest.mark.parametrize(
    ("pos", "neg", "expected"),
    [
        ([0.9, 0.8], [0.1, 0.2], 1.0),
        ([0.1], [0.9, 0.8], 0.0),
        ([0.5, 0.5], [0.5], 0.5),
        ([0.9, 0.3], [0.5, 0.1], 0.75),
        ([0.6, 0.4], [0.4], 0.75),  # a tie counts half
        ([], [0.1], None),
        ([0.1], [], None),
    ],
)
def test_auroc(pos: list[float], neg: list[float], expected: float | None) -> None:
    assert auroc(pos, neg) == expected


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([3.0, 1.0, 2.0], 50, 2.0), ([1.0, 2.0], 50, 1.5), ([5.0], 95, 5.0), ([], 50, None), ([0, 10], 95, 9.5)],
)
def test_percentile(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_agreement_and_confusion_follow_the_default_policy_mapping() -> None:
    pairs = [(2, "send"), (2, "follow_up"), (1, "follow_up"), (1, "review"), (0, "escalate"), (0, "review")]
    assert agreement(pairs) == pytest.approx(4 / 6)
    table = confusion(pairs)
    assert table["2"] == {"send": 1, "follow_up": 1, "review": 0, "escalate": 0}
    assert table["0"]["review"] == 1 and table["0"]["escalate"] == 1
    assert agreement([]) is None


def write_cases(folder: Path) -> Path:
    """Six cases whose fake scores (from [score=] markers) are known; two with a photo."""
    (folder / "img").mkdir()
    (folder / "img" / "p.png").write_bytes(png_bytes())
    rows = [
        {"id": "c1", "lang": "en", "question": "Box crushed", "reply": "[score=0.9] replace", "grade": 2},
        {"id": "c2", "lang": "en", "question": "Box crushed", "reply": "[score=0.55] sorry", "grade": 1},
        {"id": "c3", "lang": "en", "question": "Box crushed", "reply": "[score=0.1] coupon", "grade": 0},
        {
            "id": "c4",
            "lang": "zh",
            "question": "这个怎么办？",
            "image": "img/p.png",
            "reply": "[score=0.45] 抱歉",
            "grade": 2,
        },
        {
            "id": "c5",
            "question": "这个怎么办？",
            "image": "img/p.png",
            "reply": "[score=0.8] 优惠券",
            "grade": 0,
        },
        {"id": "c6", "lang": "zh", "question": "开线了", "reply": "[score=0.6] 抱歉", "grade": 1},
    ]
    path = folder / "cases.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n", encoding="utf-8")
    return path


def test_run_with_a_fake_scorer_reports_every_split(tmp_path: Path) -> None:
    cases = load_cases(write_cases(tmp_path))
    assert [c.lang for c in cases] == ["en", "en", "en", "zh", "zh", "zh"]  # c5's language is detected
    assert cases[3].image == (tmp_path / "img" / "p.png").resolve()
    reads: list[Path] = []

    def read_text(path: Path) -> str | None:
        reads.append(path)
        return "text on the photo"

    report = run(cases, FakeScorer(), read_text=read_text, source="mini", reader_name="fake-ocr")
    assert reads == [(tmp_path / "img" / "p.png").resolve()]  # each photo is read once
    g = report.groups
    assert set(g) == {
        "all",
        "en",
        "zh",
        "with image",
        "without image",
        "en, without image",
        "zh, with image",
        "zh, without image",
        "uncertain",
    }
    assert g["en"]["auroc_2_vs_rest"] == 1.0 and g["en"]["agreement"] == 1.0
    # zh: "这个怎么办？" with a photo states no issue (the issue reader, as in the pipeline): both photo
    # cases are uncertain and at most reviewed. The grade-2 reply (0.45, review) is wrong; the grade-0
    # reply scored 0.8 would have been sent, and is reviewed instead (right for grade 0).
    assert g["uncertain"]["n"] == 2
    assert g["with image"]["agreement"] == 0.5
    assert g["with image"]["confusion"]["0"]["review"] == 1 and g["with image"]["confusion"]["0"]["send"] == 0
    assert g["with image"]["confusion"]["2"]["review"] == 1
    assert g["all"]["agreement"] == pytest.approx(5 / 6)
    assert g["all"]["auroc_2_vs_rest"] == pytest.approx(5 / 8)
    assert g["all"]["grades"] == {"0": 2, "1": 2, "2": 2}
    assert report.ocr["images"] == 1 and report.ocr["with_text"] == 1
    assert report.latency_ms["p50"] >= 0 and report.latency_ms["p95"] >= report.latency_ms["p50"]
    assert report.peak_rss_mb > 10
    text = format_report(report)
    assert "AUROC 2-vs-rest" in text and "zh, with image" in text and "fake-ocr" in text
    assert json.loads(json.dumps(report.to_json()))["groups"]["all"]["n"] == 6


def test_a_failing_scorer_counts_as_the_on_error_action(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"question": "q", "reply": "[raise]", "grade": 2}) + "\n")
    report = run(load_cases(path), FakeScorer())
    assert report.failures == 1
    assert report.groups["all"]["confusion"]["2"]["escalate"] == 1
    assert report.groups["all"]["auroc_2_vs_rest"] is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"bad.jsonl:1: not valid JSON"),
        ('{"question": "q", "reply": "r", "grade": 3}', "'grade' must be 0, 1 or 2"),
        ('{"question": "q", "reply": "r", "grade": true}', "'grade' must be 0, 1 or 2"),
        ('{"question": "q", "grade": 1}', "'reply' must be a string"),
        ('{"question": "q", "reply": "r", "grade": 1, "image": "nope.png"}', "image 'nope.png' not found"),
        ("[1, 2]", "JSON object"),
        ("", "no cases"),
    ],
)
def test_bad_case_files_say_which_line_and_why(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(EvalError, match=message):
        load_cases(path)


def test_guard_eval_and_score_commands(tmp_path: Path) -> None:
    path = write_cases(tmp_path)
    env = {"GUARD_OCR": "off"}
    done = guard("eval", str(path), env=env)
    assert done.returncode == 0, done.stderr
    assert "6 cases, scorer bundled" in done.stdout and "latency per case" in done.stdout
    assert "peak memory" in done.stdout
    as_json = guard("eval", str(path), "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["n"] == 6 and set(body["groups"]["all"]) >= {"auroc_2_vs_rest", "agreement", "confusion"}
    bad = guard("eval", str(tmp_path / "missing.jsonl"), env=env)
    assert bad.returncode == 2 and "cannot read" in bad.stderr

    scored = guard(
        "score",
        "--question",
        "The box arrived crushed and the mug inside is broken.",
        "--reply",
        "Sorry the mug arrived broken in a crushed box; we will ship a replacement mug today.",
        "--json",
        env=env,
    )
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["score"] >= 0.7 and result["inputs_used"] == ["question", "reply"]
    plain = guard("score", "--question", "Box crushed", "--reply", "Follow us for coupons!", env=env)
    assert plain.returncode == 0 and "inputs used: question, reply" in plain.stdout


def test_guard_score_reads_the_text_in_a_screenshot() -> None:
    shot = Path(__file__).parent / "data" / "scr_02.png"
    done = guard(
        "score",
        "--question",
        "Why was I charged twice?",
        "--image",
        str(shot),
        "--reply",
        "I can see the duplicate $42.78 charge for order 58213; we have refunded the second one.",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "image_text" in result["inputs_used"]
    assert "58213" in result["image_text"]


@pytest.mark.skipif(not (SHARED_DEV / "cases.jsonl").is_file(), reason="the shared dev set is not here")
def test_the_bundled_scorer_on_the_shared_dev_set() -> None:
    from guard.scoring.bundled import BundledScorer

    report = run(load_cases(SHARED_DEV / "cases.jsonl"), BundledScorer.load(threads=2))
    g = report.groups
    assert g["all"]["n"] == 540
    assert g["all"]["auroc_2_vs_rest"] >= 0.9 and g["all"]["auroc_ge1_vs_0"] >= 0.9
    for lang in ("zh", "en"):
        assert g[lang]["agreement"] >= 0.75, (lang, g[lang])
    # Cases with a photo are the weak spot without a model that sees it: measured, not hidden.
    assert g["with image"]["agreement"] < g["without image"]["agreement"]
