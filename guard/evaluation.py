"""`guard eval`: measure a scorer on labelled cases (the dev set's JSONL format).

Each line is a JSON object with ``question``, ``reply``, ``grade`` (0, 1 or 2) and optionally
``id``, ``lang`` ("zh"/"en"; detected from the question when absent) and ``image`` (a path
relative to the JSONL file, or null). Metrics:

- AUROC of grade 2 against the rest, and of grade >= 1 against grade 0;
- decision agreement with the default policy (grade 2 -> send, grade 1 -> follow_up,
  grade 0 -> escalate or review) and its confusion matrix (grade x action);

each for all cases and split by language, by with / without an image, for the swapped replies
(``id`` ending in ``-s``) and for the cases the guard marks uncertain (as the pipeline does: the
issue reader finds no issue stated and the scorer did not see the photo); then the generated
negatives (``guard.scoring.perturb``: good replies paired with questions of other issues or in the
other language, repeated / padded / spammed / refused / keyword-listed replies; all must not be
sent): per kind, the share scoring >= 0.4 and the share sent; plus latency per case (p50 / p95,
OCR included when a photo is read) and the process's peak memory.

The metric functions are pure; :func:`run` is the only part that scores (blocking).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.issues import read_issue
from guard.issues.eval import IssueCase, evaluate_issue_reading
from guard.issues.text import detect_locale
from guard.pipeline import decide_case, uncertainty
from guard.policies import Policy, decide, default_policy
from guard.scoring.base import ScoreInput, Scorer
from guard.scoring.perturb import Source, generate

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
    issue: str = ""
    """The dev set's issue slug, when given (pairs replies with questions of other issues)."""
    issue_phrase: str = ""
    """The dev set's phrase naming the problem, when given (scores the issue reader's phrases)."""

    @property
    def question_id(self) -> str:
        """``dev-QQQ-x`` -> ``QQQ``; otherwise the question text identifies the question."""
        parts = self.id.split("-")
        return parts[1] if len(parts) == 3 and parts[0] == "dev" else self.question


@dataclass(frozen=True, slots=True)
class Outcome:
    case: EvalCase
    score: float | None
    """None when the scorer failed on the case (the policy's on_error action is then taken)."""
    action: str
    inputs_used: tuple[str, ...]
    latency_ms: float
    uncertain: bool = False


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
    generated: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Generated negatives per kind (and "all"): n, share >= 0.4, share sent, mean score."""
    issue_understanding: dict[str, Any] | None = None

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
            "generated": self.generated,
            "issue_understanding": self.issue_understanding,
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
                issue=str(doc.get("issue") or ""),
                issue_phrase=str(doc.get("issue_phrase") or ""),
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
    groups["swapped"] = [o for o in outcomes if o.case.id.endswith("-s")]
    groups["uncertain"] = [o for o in outcomes if o.uncertain]
    return {name: group for name, group in groups.items() if group}


def build_report(
    source: str,
    scorer: str,
    outcomes: Sequence[Outcome],
    peak_rss_mb: float,
    ocr: dict[str, Any] | None = None,
    generated: dict[str, dict[str, Any]] | None = None,
    issue_understanding: dict[str, Any] | None = None,
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
        generated=generated or {},
        issue_understanding=issue_understanding,
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
    if report.generated:
        out.append("")
        out.append("generated negatives (grade 0: must not be sent)")
        out.append(f"  {'kind':<20} {'n':>5} {'>= 0.4':>8} {'sent':>8} {'mean':>6}")
        for kind, neg in report.generated.items():
            share, sent, mean = _fmt(neg["ge_0_4"]), _fmt(neg["sent"]), _fmt(neg["mean"], 2)
            out.append(f"  {kind:<20} {neg['n']:>5} {share:>8} {sent:>8} {mean:>6}")
    out.extend(format_issue_understanding(report.issue_understanding))
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


def format_issue_understanding(metrics: dict[str, Any] | None) -> list[str]:
    """Lines for the issue reader's metrics, overall and per language."""
    if not metrics:
        return []
    out = [
        "",
        f"issue understanding ({metrics['folds']}-fold CV by question, "
        f"{'with' if metrics['with_photo_text'] else 'without'} photo text, "
        f"{metrics['mean_read_us']} us a read)",
        "  lang  questions  kind acc  stated acc  phrase found (stating)  wrong-kind phrases  overlap F1",
    ]
    rows = [("all", metrics["overall"]), *metrics["by_language"].items()]
    for lang, m in rows:
        out.append(
            f"  {lang:<4}  {m['questions']:>9}  {m['kind_accuracy']:>8.3f}  {m['stated_accuracy']:>10.3f}"
            f"  {m['phrase_coverage']:>12.3f} ({m['stating']:>3})  {m['wrong_kind_rate']:>18.3f}"
            f"  {m['overlap_f1']:>10.3f}"
        )
    return out


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
    with_generated: bool = True,
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
        reading = read_issue(case.question, image_text, case.lang, has_photo=case.image is not None)
        doubt = uncertainty(reading, has_photo=case.image is not None, inputs_used=inputs)
        uncertain = doubt is not None
        latency = (time.perf_counter() - started) * 1000
        verdict = decide_case(policy, score, doubt)
        outcomes.append(Outcome(case, score, verdict.action, inputs, latency, uncertain))
    ocr: dict[str, Any] = {}
    if read_text is not None:
        ocr = {
            "reader": reader_name or "ocr",
            "images": len(texts),
            "with_text": sum(1 for t in texts.values() if t),
            "p50_ms": percentile(ocr_ms, 50),
            "p95_ms": percentile(ocr_ms, 95),
        }
    generated = score_generated(cases, scorer, policy, texts) if with_generated else None
    return build_report(
        source,
        f"{scorer.name} {scorer.version}",
        outcomes,
        peak_rss_mb(),
        ocr if read_text else None,
        generated=generated,
        issue_understanding=issue_understanding_metrics(cases, texts),
    )


def issue_understanding_metrics(
    cases: Sequence[EvalCase], texts: Mapping[Path, str | None]
) -> dict[str, Any] | None:
    """The issue reader on the cases' questions (kind accuracy, phrase coverage, wrong-kind phrases,
    overlap), cross-validated by question; None when the cases carry no issue labels."""
    questions: dict[str, IssueCase] = {}
    for c in cases:
        if c.issue and c.question not in questions:
            questions[c.question] = IssueCase(
                id=f"dev-{c.question_id}" if c.id.startswith("dev-") else c.id,
                lang=c.lang,
                question=c.question,
                image=None if c.image is None else str(c.image),
                kind=c.issue,
                phrase=c.issue_phrase,
                image_path=c.image,
            )
    if not questions:
        return None
    photo_texts = {path: text for path, text in texts.items() if text}
    return evaluate_issue_reading(list(questions.values()), photo_texts).to_json()


GENERATED_BATCH = 64


def score_generated(
    cases: Sequence[EvalCase],
    scorer: Scorer,
    policy: Policy,
    texts: dict[Path, str | None],
    seed: int = 7,
) -> dict[str, dict[str, Any]]:
    """Score the generated negatives of ``cases`` in batches; per kind and "all"."""
    sources = [
        Source(
            id=c.id,
            qid=c.question_id,
            lang=c.lang,
            issue=c.issue or c.question_id,
            question=c.question,
            reply=c.reply,
            grade=c.grade,
            image=str(c.image) if c.image is not None else None,
        )
        for c in cases
        if not c.id.endswith("-s")
    ]
    negatives = generate(sources, seed=seed)
    items = [
        ScoreInput(
            question=g.question,
            reply=g.reply,
            instruction=policy.instruction,
            image_text=texts.get(Path(g.image)) if g.image else None,
            has_image=g.image is not None,
            locale=g.lang,
        )
        for g in negatives
    ]
    scores: list[float | None] = []
    for start in range(0, len(items), GENERATED_BATCH):
        chunk = items[start : start + GENERATED_BATCH]
        try:
            scores.extend(r.score for r in scorer.score_batch(chunk))
        except Exception:
            scores.extend([None] * len(chunk))
    by_kind: dict[str, list[float | None]] = {}
    for g, s in zip(negatives, scores, strict=True):
        by_kind.setdefault(g.kind, []).append(s)
        by_kind.setdefault("all", []).append(s)
    return {kind: negative_metrics(values, policy) for kind, values in sorted(by_kind.items())}


def negative_metrics(scores: Sequence[float | None], policy: Policy) -> dict[str, Any]:
    """n, share scoring >= 0.4, share sent (a failed score is not sent), mean score."""
    ok = [s for s in scores if s is not None]
    sent = sum(decide(policy, s).action == "send" for s in ok)
    return {
        "n": len(scores),
        "ge_0_4": sum(s >= 0.4 for s in ok) / len(scores) if scores else None,
        "sent": sent / len(scores) if scores else None,
        "mean": _mean(ok),
    }
