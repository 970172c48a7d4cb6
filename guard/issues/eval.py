"""How well the guard reads the customer's issue, measured on labelled cases; and refitting its model.

Cases are questions labelled with ``issue`` (kind) and ``issue_phrase`` (the dev set's JSONL:
one row per reply, read here once per question). :func:`evaluate_issue_reading` cross-validates
by question (5 folds: each fold's questions are read by a model fitted on the other four) and
reports per language: kind accuracy, whether a problem was stated, phrase coverage over the
questions that state one, the rate of phrases given under a wrong kind, and the overlap of
the phrases with the labels (character F1 for Chinese, word F1 for English).

    python -m guard.issues.eval read-photos CASES.jsonl --image-texts TEXTS.json   # OCR, once
    python -m guard.issues.eval eval CASES.jsonl [--image-texts TEXTS.json]
    python -m guard.issues.eval fit CASES.jsonl [--image-texts TEXTS.json] [--out guard/issues/model.json]

``TEXTS.json`` maps a case's ``image`` (as written in the cases file) to the text read from it;
``read-photos`` writes it for the screenshots (``scr_*``) with the guard's OCR reader. The bundled
model is ``fit`` on the dev set's cases.jsonl with the texts of its screenshots.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.issues import IssueReading, read_issue
from guard.issues.lexicon import KINDS
from guard.issues.model import MODEL_PATH, Example, IssueModel, features, fit
from guard.issues.text import detect_locale, plain_text

FOLDS = 5

UNSTATED = frozenset(
    {"dev-001", "dev-004", "dev-008", "dev-013", "dev-016", "dev-018", "dev-020", "dev-022", "dev-025"}
    | {"dev-027", "dev-030", "dev-033"}
)
"""Dev-set questions that name no problem in their words ("这个怎么办？", "Look at this, what now?"):
the photo alone shows it. Annotated by hand; used as the truth for ``stated``."""
UNSTATED_WITHOUT_PHOTO_TEXT = frozenset({"dev-062", "dev-064", "dev-067", "dev-068", "dev-072"})
"""Dev-set questions that name the problem only together with the text in their screenshot
("Check the tag. I ordered a large." + a tag reading S)."""


class IssueEvalError(ValueError):
    """The cases file cannot be used (says which line and why)."""


@dataclass(frozen=True, slots=True)
class IssueCase:
    id: str
    """The question's id: a case id without its reply letter (``dev-073``)."""
    lang: str
    question: str
    image: str | None
    """The photo's path as written in the cases file."""
    kind: str
    phrase: str
    image_path: Path | None = None
    """The photo's path resolved against the cases file's folder."""


@dataclass(frozen=True, slots=True)
class IssueOutcome:
    case: IssueCase
    reading: IssueReading
    stated_truth: bool


@dataclass(frozen=True, slots=True)
class LanguageScores:
    questions: int
    kind_accuracy: float
    stated_accuracy: float
    stating: int
    """Questions that state a problem (the annotation above)."""
    phrase_coverage: float
    """Share of the stating questions given a phrase."""
    phrases: int
    wrong_kind_rate: float
    """Share of the phrases given under a kind other than the label's."""
    overlap_f1: float
    """Mean F1 of each phrase given against the label (characters for zh, words for en)."""


@dataclass(frozen=True)
class IssueReadingReport:
    by_language: Mapping[str, LanguageScores]
    overall: LanguageScores
    folds: int
    with_photo_text: bool
    mean_read_us: float
    outcomes: Sequence[IssueOutcome] = field(repr=False)

    def to_json(self) -> dict[str, object]:
        def scores(s: LanguageScores) -> dict[str, float | int]:
            return {k: getattr(s, k) for k in LanguageScores.__dataclass_fields__}

        return {
            "folds": self.folds,
            "with_photo_text": self.with_photo_text,
            "mean_read_us": round(self.mean_read_us, 1),
            "overall": scores(self.overall),
            "by_language": {lang: scores(s) for lang, s in self.by_language.items()},
        }


def load_issue_cases(path: Path) -> list[IssueCase]:
    """One IssueCase per question of a cases JSONL file (its first row for that question)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise IssueEvalError(f"cannot read {path}: {exc}") from None
    seen: dict[str, IssueCase] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError as exc:
            raise IssueEvalError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("question", "issue")):
            raise IssueEvalError(f"{path}:{number}: each line needs string 'question' and 'issue'")
        if doc["question"] in seen:
            continue
        image = doc.get("image")
        lang = doc.get("lang") if doc.get("lang") in ("zh", "en") else detect_locale(doc["question"])
        seen[doc["question"]] = IssueCase(
            id=re.sub(r"-[a-z]$", "", str(doc.get("id", f"line-{number}"))),
            lang=str(lang),
            question=doc["question"],
            image=image if isinstance(image, str) else None,
            kind=doc["issue"],
            phrase=str(doc.get("issue_phrase") or ""),
            image_path=(path.parent / image).resolve() if isinstance(image, str) else None,
        )
    if not seen:
        raise IssueEvalError(f"{path}: no cases")
    return list(seen.values())


def photo_text(case: IssueCase, image_texts: Mapping[Any, str]) -> str | None:
    """The case's photo text from ``image_texts``, keyed by the path as written or as resolved."""
    if case.image is None:
        return None
    for key in (case.image, case.image_path, str(case.image_path)):
        if key in image_texts:
            return image_texts[key]
    return None


def example(case: IssueCase, image_texts: Mapping[Any, str]) -> Example:
    text = photo_text(case, image_texts) or ""
    return Example(tuple(features(plain_text(case.question), plain_text(text), case.lang)), case.kind)


def fit_model(cases: Sequence[IssueCase], image_texts: Mapping[Any, str] | None = None) -> IssueModel:
    """The issue model fitted on every case (what guard/issues/model.json holds)."""
    return fit([example(c, image_texts or {}) for c in cases])


def fold_of(index: int) -> int:
    """Questions in id order go round the folds: a question and all its replies share one fold."""
    return index % FOLDS


def evaluate_issue_reading(
    cases: Sequence[IssueCase], image_texts: Mapping[Any, str] | None = None
) -> IssueReadingReport:
    """Cross-validated issue reading on ``cases`` (5 folds grouped by question).

    ``image_texts``: the text read from each photo, keyed by its path as written in the cases file
    or as resolved (``IssueCase.image_path``); without it the photos are read as having no text.
    """
    texts = image_texts or {}
    ordered = sorted(cases, key=lambda c: c.id)
    outcomes: list[IssueOutcome] = []
    elapsed = 0.0
    for fold in range(FOLDS):
        train = [c for i, c in enumerate(ordered) if fold_of(i) != fold]
        test = [c for i, c in enumerate(ordered) if fold_of(i) == fold]
        model = fit_model(train, texts)
        for case in test:
            text = photo_text(case, texts)
            t = time.perf_counter()
            reading = read_issue(
                case.question, text, case.lang, has_photo=case.image is not None, model=model
            )
            elapsed += time.perf_counter() - t
            outcomes.append(IssueOutcome(case, reading, _stated_truth(case, text is not None)))
    by_language = {
        lang: _scores([o for o in outcomes if o.case.lang == lang])
        for lang in sorted({c.lang for c in cases})
    }
    return IssueReadingReport(
        by_language=by_language,
        overall=_scores(outcomes),
        folds=FOLDS,
        with_photo_text=bool(texts),
        mean_read_us=elapsed / max(1, len(outcomes)) * 1e6,
        outcomes=outcomes,
    )


def _stated_truth(case: IssueCase, has_photo_text: bool) -> bool:
    if case.id in UNSTATED:
        return False
    return has_photo_text or case.id not in UNSTATED_WITHOUT_PHOTO_TEXT


def _scores(outcomes: Sequence[IssueOutcome]) -> LanguageScores:
    n = len(outcomes)
    stating = [o for o in outcomes if o.stated_truth]
    phrased = [o for o in outcomes if o.reading.phrase is not None]
    return LanguageScores(
        questions=n,
        kind_accuracy=_share(sum(o.reading.kind == o.case.kind for o in outcomes), n),
        stated_accuracy=_share(sum(o.reading.stated == o.stated_truth for o in outcomes), n),
        stating=len(stating),
        phrase_coverage=_share(sum(o.reading.phrase is not None for o in stating), len(stating)),
        phrases=len(phrased),
        wrong_kind_rate=_share(sum(o.reading.kind != o.case.kind for o in phrased), len(phrased)),
        overlap_f1=_share(
            sum(overlap_f1(o.reading.phrase or "", o.case.phrase, o.case.lang) for o in phrased), len(phrased)
        ),
    )


def _share(part: float, whole: int) -> float:
    return part / whole if whole else 0.0


_EN_WORD = re.compile(r"[a-z0-9$.]+")
_EN_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "your",
        "my",
        "of",
        "on",
        "in",
        "to",
        "for",
        "with",
        "and",
        "is",
        "was",
        "has",
        "been",
        "that",
        "it",
    ]
)
_ZH_CHAR = re.compile(r"[\u3400-\u9fffA-Za-z0-9]")


def overlap_f1(phrase: str, label: str, lang: str) -> float:
    """F1 of the phrase against the label: characters for Chinese, content words for English."""
    if lang == "zh":
        got, want = Counter(_ZH_CHAR.findall(phrase.lower())), Counter(_ZH_CHAR.findall(label.lower()))
    else:
        got = Counter(w.strip(".") for w in _EN_WORD.findall(phrase.lower()) if w not in _EN_STOP)
        want = Counter(w.strip(".") for w in _EN_WORD.findall(label.lower()) if w not in _EN_STOP)
    common = sum((got & want).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def format_issue_report(report: IssueReadingReport) -> str:
    """The report as a table, one row per language and one overall."""
    head = (
        f"issue reading ({report.folds}-fold cross-validation by question, "
        f"{'with' if report.with_photo_text else 'without'} photo text, "
        f"{report.mean_read_us:.0f} µs a read)"
    )
    cols = "lang  questions  kind_acc  stated_acc  phrase_coverage  wrong_kind  overlap_f1"
    rows = [head, cols]
    for lang, s in [*report.by_language.items(), ("all", report.overall)]:
        rows.append(
            f"{lang:<5} {s.questions:>9}  {s.kind_accuracy:>8.3f}  {s.stated_accuracy:>10.3f}  "
            f"{s.phrase_coverage:>8.3f} ({s.stating:>3})  {s.wrong_kind_rate:>10.3f}  {s.overlap_f1:>10.3f}"
        )
    return "\n".join(rows)


def read_photos(cases: Sequence[IssueCase], folder: Path) -> dict[str, str]:
    """The text the guard's OCR reads from each case's screenshot (``scr_*`` images), by image path."""
    from PIL import Image

    from guard.ocr import RapidOcrReader

    reader = RapidOcrReader(threads=1)
    texts: dict[str, str] = {}
    for image in sorted({c.image for c in cases if c.image and Path(c.image).name.startswith("scr_")}):
        with Image.open(folder / image) as photo:
            texts[image] = reader.read(photo.convert("RGB"))
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m guard.issues.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("eval", "fit", "read-photos"))
    parser.add_argument("cases", type=Path)
    parser.add_argument("--image-texts", type=Path, help="JSON: image path (as in the cases) -> text read")
    parser.add_argument("--out", type=Path, default=MODEL_PATH, help="where fit writes the model")
    parser.add_argument("--details", action="store_true", help="eval: print every question's reading")
    args = parser.parse_args(argv)
    try:
        cases = load_issue_cases(args.cases)
        if args.command == "read-photos":
            if args.image_texts is None:
                raise ValueError("read-photos needs --image-texts, the file to write")
            texts = read_photos(cases, args.cases.parent)
            args.image_texts.write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n", "utf-8")
            print(f"wrote {args.image_texts}: the text of {len(texts)} screenshots")
            return 0
        texts = json.loads(args.image_texts.read_text(encoding="utf-8")) if args.image_texts else {}
    except (IssueEvalError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "fit":
        model = fit_model(cases, texts)
        args.out.write_text(json.dumps(model.to_json(), ensure_ascii=False, sort_keys=True) + "\n", "utf-8")
        print(f"wrote {args.out}: {len(model.weights)} features, {len(KINDS)} kinds, {len(cases)} questions")
        return 0
    report = evaluate_issue_reading(cases, texts)
    if args.details:
        for o in report.outcomes:
            mark = "" if o.reading.kind == o.case.kind else f" WRONG({o.case.kind})"
            print(
                f"{o.case.id} {o.reading.kind}{mark} {o.reading.confidence:.2f} stated={o.reading.stated}"
                f"/{o.stated_truth} | {o.case.question[:50]} | {o.reading.phrase} | {o.case.phrase}"
            )
    print(format_issue_report(report))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
