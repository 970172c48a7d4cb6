"""`guard eval`: measure a scorer on labelled cases (the dev set's JSONL format).

Each line is a JSON object with ``question``, ``reply``, ``grade`` (0, 1 or 2) and optionally
``id``, ``lang`` ("zh"/"en"; detected from the question when absent) and ``image`` (a path
relative to the JSONL file, or null). Metrics:

- AUROC of grade 2 against the rest, and of grade >= 1 against grade 0;
- decision agreement with the default policy (grade 2 -> send, grade 1 -> follow_up,
  grade 0 -> escalate or review) and its confusion matrix (grade x action);

each for all cases and split by language and by with / without an image; plus latency per case
(p50 / p95, OCR included when a photo is read) and the process's peak memory.

The metric functions are pure; :func:`run` is the only part that scores (blocking).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.issue_text import detect_locale
from guard.policies import Policy, decide, default_policy
from guard.scoring.base import ScoreInput, Scorer

GRADES = (0, 1, 2)
ACTIONS = ("send", "follow_up", "review", "escalate")
EXPECTED_ACTIONS: dict[int, frozenset[str]] = {
    2: frozenset({"send"}),
    1: frozenset({"follow_up"}),
    0: frozenset({"escalate", "review"}),
}


class EvalError(ValueError):
    """The cases file cannot be used (says which line and why)."""


@dataclass(frozen=True, slots=True)
class EvalCase:
    id: str
    lang: str
    question: str
    reply: str
    grade: int
    image: Path | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    case: EvalCase
    score: float | None
    """None when the scorer failed on the case (the policy's on_error action is then taken)."""
    action: str
    inputs_used: tuple[str, ...]
    latency_ms: float


@dataclass
class Report:
    source: str
    scorer: str
    n: int
    groups: dict[str, dict[str, Any]]
    latency_ms: dict[str, float]
    peak_rss_mb: float
    ocr: dict[str, Any] = field(default_factory=dict)
    failures: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "scorer": self.scorer,
            "n": self.n,
            "failures": self.failures,
            "groups": self.groups,
            "latency_ms": self.latency_ms,
            "peak_rss_mb": self.peak_rss_mb,
            "ocr": self.ocr,
        }


def load_cases(path: Path) -> list[EvalCase]:
    """Cases from a JSONL file; image paths are resolved against the file's folder and must exist."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None
    cases: list[EvalCase] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise EvalError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise EvalError(f"{where}: each line must be a JSON object")
        for name in ("question", "reply"):
            if not isinstance(doc.get(name), str):
                raise EvalError(f"{where}: '{name}' must be a string")
        grade = doc.get("grade")
        if isinstance(grade, bool) or grade not in GRADES:
            raise EvalError(f"{where}: 'grade' must be 0, 1 or 2, not {grade!r}")
        image: Path | None = None
        if doc.get("image") is not None:
            if not isinstance(doc["image"], str):
                raise EvalError(f"{where}: 'image' must be a path (relative to the file) or null")
            image = (path.parent / doc["image"]).resolve()
            if not image.is_file():
                raise EvalError(f"{where}: image {doc['image']!r} not found at {image}")
        lang = doc.get("lang")
        if lang not in ("zh", "en"):
            lang = detect_locale(doc["question"] + " " + doc["reply"])
        cases.append(
            EvalCase(
                id=str(doc.get("id", f"line-{number}")),
                lang=lang,
                question=doc["question"],
                reply=doc["reply"],
                grade=int(grade),
                image=image,
            )
        )
    if not cases:
        raise EvalError(f"{path}: no cases")
    return cases


# ------------------------------------------------------------------ pure metrics


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(score of a random positive > a random negative), ties counted half; None if a side is empty."""
    if not positives or not negatives:
        return None
    tagged = sorted([(s, 1) for s in positives] + [(s, 0) for s in negatives])
    rank_sum = 0.0
    i = 0
    while i < len(tagged):
        j = i
        while j < len(tagged) and tagged[j][0] == tagged[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2  # ranks i+1 .. j share their mean
        rank_sum += mid_rank * sum(label for _, label in tagged[i:j])
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def confusion(pairs: Iterable[tuple[int, str]]) -> dict[str, dict[str, int]]:
    """Counts of (grade, action): {"2": {"send": n, ...}, ...}, every cell present."""
    table = {str(g): dict.fromkeys(ACTIONS, 0) for g in GRADES}
    for grade, action in pairs:
        table[str(grade)][action] = table[str(grade)].get(action, 0) + 1
    return table


def agreement(pairs: Sequence[tuple[int, str]]) -> float | None:
    """Share of cases whose action is the one the grade calls for."""
    if not pairs:
        return None
    return sum(action in EXPECTED_ACTIONS[g] for g, action in pairs) / len(pairs)


def group_metrics(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """AUROCs, agreement and confusion matrix of some outcomes (failed cases count against agreement)."""
    scored = [(o.case.grade, o.score) for o in outcomes if o.score is not None]
    pairs = [(o.case.grade, o.action) for o in outcomes]
    by_grade = {g: sum(1 for o in outcomes if o.case.grade == g) for g in GRADES}
    mean = {
        str(g): _mean([s for gg, s in scored if gg == g]) for g in GRADES if any(gg == g for gg, _ in scored)
    }
    return {
        "n": len(outcomes),
        "grades": {str(g): n for g, n in by_grade.items()},
        "auroc_2_vs_rest": auroc([s for g, s in scored if g == 2], [s for g, s in scored if g != 2]),
        "auroc_ge1_vs_0": auroc([s for g, s in scored if g >= 1], [s for g, s in scored if g == 0]),
        "agreement": agreement(pairs),
        "mean_score": mean,
        "confusion": confusion(pairs),
    }


def split(outcomes: Sequence[Outcome]) -> dict[str, list[Outcome]]:
    """The groups reported: all, per language, with / without image, and language x image."""
    groups: dict[str, list[Outcome]] = {"all": list(outcomes)}
    for lang in sorted({o.case.lang for o in outcomes}):
        groups[lang] = [o for o in outcomes if o.case.lang == lang]
    groups["with image"] = [o for o in outcomes if o.case.image is not None]
    groups["without image"] = [o for o in outcomes if o.case.image is None]
    for lang in sorted({o.case.lang for o in outcomes}):
        for has, label in ((True, "with image"), (False, "without image")):
            groups[f"{lang}, {label}"] = [
                o for o in outcomes if o.case.lang == lang and (o.case.image is not None) == has
            ]
    return {name: group for name, group in groups.items() if group}


def build_report(
    source: str,
    scorer: str,
    outcomes: Sequence[Outcome],
    peak_rss_mb: float,
    ocr: dict[str, Any] | None = None,
) -> Report:
    latencies = [o.latency_ms for o in outcomes]
    return Report(
        source=source,
        scorer=scorer,
        n=len(outcomes),
        groups={name: group_metrics(group) for name, group in split(outcomes).items()},
        latency_ms={
            "p50": round(percentile(latencies, 50) or 0.0, 2),
            "p95": round(percentile(latencies, 95) or 0.0, 2),
            "max": round(max(latencies, default=0.0), 2),
        },
        peak_rss_mb=round(peak_rss_mb, 1),
        ocr=ocr or {},
        failures=sum(o.score is None for o in outcomes),
    )


def format_report(report: Report) -> str:
    """The human-readable report `guard eval` prints."""
    out = [
        f"{report.source}: {report.n} cases, scorer {report.scorer}",
        "",
        f"{'group':<20} {'n':>4} {'g0/g1/g2':>11} {'AUROC 2-vs-rest':>16} {'AUROC >=1-vs-0':>15}"
        f" {'agreement':>10} {'mean score g0/g1/g2':>20}",
    ]
    for name, m in report.groups.items():
        grades = "/".join(str(m["grades"][str(g)]) for g in GRADES)
        means = "/".join(_fmt(m["mean_score"].get(str(g)), 2) for g in GRADES)
        out.append(
            f"{name:<20} {m['n']:>4} {grades:>11} {_fmt(m['auroc_2_vs_rest']):>16}"
            f" {_fmt(m['auroc_ge1_vs_0']):>15} {_fmt(m['agreement']):>10} {means:>20}"
        )
    out.append("")
    out.append(
        "decisions of the default policy (rows: grade; expected: 2 send, 1 follow_up, 0 escalate|review)"
    )
    for name, m in report.groups.items():
        if name not in ("all", "zh", "en", "with image", "without image"):
            continue
        out.append(f"  {name}:")
        out.append(f"    {'grade':<6}" + "".join(f"{a:>11}" for a in ACTIONS))
        for g in reversed(GRADES):
            row = m["confusion"][str(g)]
            out.append(f"    {g:<6}" + "".join(f"{row[a]:>11}" for a in ACTIONS))
    out.append("")
    lat = report.latency_ms
    out.append(f"latency per case: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, max {lat['max']:.1f} ms")
    if report.ocr:
        o = report.ocr
        out.append(
            f"photo text (OCR, {o.get('reader')}): {o.get('images', 0)} images read,"
            f" {o.get('with_text', 0)} with text, p50 {_fmt(o.get('p50_ms'), 0)} ms per image"
        )
    if report.failures:
        out.append(f"scorer failures: {report.failures} (counted as the policy's on_error action)")
    out.append(f"peak memory (max RSS of this process): {report.peak_rss_mb:.0f} MB")
    return "\n".join(out)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------ running


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run(
    cases: Sequence[EvalCase],
    scorer: Scorer,
    *,
    read_text: Callable[[Path], str | None] | None = None,
    policy: Policy | None = None,
    source: str = "cases",
    reader_name: str = "",
) -> Report:
    """Score every case one at a time (as a request would be) and report. Blocking.

    ``read_text`` reads a photo's text (OCR); each photo is read once and its time is added to the
    latency of the first case that uses it (later cases of the same photo hit the cache, as in serving).
    """
    policy = policy or default_policy()
    texts: dict[Path, str | None] = {}
    ocr_ms: list[float] = []
    outcomes: list[Outcome] = []
    for case in cases:
        started = time.perf_counter()
        image_text = None
        if case.image is not None and read_text is not None:
            if case.image not in texts:
                t = time.perf_counter()
                texts[case.image] = read_text(case.image)
                ocr_ms.append((time.perf_counter() - t) * 1000)
            image_text = texts[case.image]
        item = ScoreInput(
            question=case.question,
            reply=case.reply,
            instruction=policy.instruction,
            image_text=image_text,
            has_image=case.image is not None,
            locale=case.lang,
        )
        try:
            result = scorer.score_batch([item])[0]
            raw = float(result.score)
            score: float | None = raw if math.isfinite(raw) and 0.0 <= raw <= 1.0 else None
            inputs = result.inputs_used
        except Exception:
            score, inputs = None, ()
        latency = (time.perf_counter() - started) * 1000
        verdict = decide(policy, score)
        outcomes.append(Outcome(case, score, verdict.action, inputs, latency))
    ocr: dict[str, Any] = {}
    if read_text is not None:
        ocr = {
            "reader": reader_name or "ocr",
            "images": len(texts),
            "with_text": sum(1 for t in texts.values() if t),
            "p50_ms": percentile(ocr_ms, 50),
            "p95_ms": percentile(ocr_ms, 95),
        }
    return build_report(
        source, f"{scorer.name} {scorer.version}", outcomes, peak_rss_mb(), ocr if read_text else None
    )
