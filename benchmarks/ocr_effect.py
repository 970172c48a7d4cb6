"""What the photo's text does to the bundled scorer on the dev set's screenshot cases.

    .venv/bin/python benchmarks/ocr_effect.py [../shared/data/dev/cases.jsonl] [--write-jsonl OUT]

Scores the cases whose image is a screenshot (``images/scr_*``) with the shipped calibration,
without and with the text RapidOCR reads from the screenshot, and prints the metrics of both.
``--write-jsonl`` also writes the cases with an ``image_text`` field for every screenshot case
(the input ``python -m guard.scoring.fit_bundled`` takes to refit with photo text); the file holds
third-party data, so write it outside the repository.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from guard.evaluation import format_report, load_cases, run
from guard.ocr import load_reader
from guard.scoring.bundled import BundledScorer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", type=Path, nargs="?", default=ROOT.parent / "shared/data/dev/cases.jsonl")
    ap.add_argument("--write-jsonl", type=Path)
    args = ap.parse_args()
    cases = [c for c in load_cases(args.cases) if c.image is not None and c.image.name.startswith("scr_")]
    reader = load_reader(2)
    photos = sorted({c.image for c in cases if c.image is not None})
    texts = {path: reader.read(Image.open(path).convert("RGB")) for path in photos}
    scorer = BundledScorer.load(threads=2)
    without = run(cases, scorer, source="screenshot cases, question only")
    with_text = run(
        cases, scorer, read_text=lambda p: texts[p] or None, source="screenshot cases, question + photo text"
    )
    for report in (without, with_text):
        print(format_report(report).split("\n\ndecisions")[0])
        print()
    if args.write_jsonl:
        by_name = {p.name: t for p, t in texts.items()}
        lines = []
        for line in args.cases.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            d = json.loads(line)
            name = Path(d["image"]).name if d.get("image") else None
            if by_name.get(name):
                d["image_text"] = by_name[name]
            lines.append(json.dumps(d, ensure_ascii=False))
        args.write_jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {args.write_jsonl}")


if __name__ == "__main__":
    main()
