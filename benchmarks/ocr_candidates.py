"""Compare OCR packages on the dev set's screenshots: milliseconds per image and accuracy.

Run it with the interpreter of a virtualenv that has one candidate installed (the candidates
pin different onnxruntime / opencv builds, so each gets its own throwaway venv)::

    python -m venv /tmp/ocr_a && /tmp/ocr_a/bin/pip install rapidocr-onnxruntime pillow
    python -m venv /tmp/ocr_b && /tmp/ocr_b/bin/pip install rapidocr onnxruntime pillow
    /tmp/ocr_a/bin/python benchmarks/ocr_candidates.py rapidocr_onnxruntime
    /tmp/ocr_b/bin/python benchmarks/ocr_candidates.py rapidocr

The reference text of each screenshot is every string literal of its ``scr_NN`` function in
``../shared/data/dev/tools/render_screenshots.py`` (the script that drew it). Accuracy:

- *strings found*: the share of reference strings (2+ characters) that appear verbatim in the OCR
  text (spaces and case ignored);
- *char recall*: the share of the reference's characters (multiset, spaces ignored) in the OCR text.
"""

from __future__ import annotations

import ast
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "dev"
STYLE_WORDS = {"", "b", "red", "grey", "big", "white", "black"}


def references() -> dict[str, list[str]]:
    tree = ast.parse((DEV / "tools" / "render_screenshots.py").read_text(encoding="utf-8"))
    refs: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("scr_"):
            strings = [
                n.value
                for n in ast.walk(node)
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value not in STYLE_WORDS
            ]
            refs[node.name] = [s for s in strings if len(s.strip()) >= 2 and s != node.name]
    return refs


def norm(text: str) -> str:
    return "".join(text.split()).lower()


def make_reader(package: str, threads: int) -> Any:
    if package == "rapidocr_onnxruntime":
        from rapidocr_onnxruntime import RapidOCR

        use_cls = os.environ.get("OCR_CLS", "1") == "1"
        engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1, use_cls=use_cls)

        def read(path: Path) -> str:
            result, _ = engine(str(path))
            return "\n".join(r[1] for r in result or [])

        return read
    if package == "rapidocr":
        from rapidocr import RapidOCR

        engine = RapidOCR(
            params={
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                "Global.log_level": "error",
                "Global.use_cls": os.environ.get("OCR_CLS", "1") == "1",
            }
        )

        def read(path: Path) -> str:
            out = engine(str(path))
            return "\n".join(out.txts or ())

        return read
    raise SystemExit(f"unknown package {package}")


def main() -> None:
    package = sys.argv[1]
    threads = int(os.environ.get("OCR_THREADS", "2"))
    refs = references()
    t0 = time.perf_counter()
    read = make_reader(package, threads)
    load_s = time.perf_counter() - t0
    images = sorted((DEV / "images").glob("scr_*.png"))
    read(images[0])  # warm-up
    times: list[float] = []
    found = total = 0
    char_hit = char_all = 0
    for path in images:
        t = time.perf_counter()
        text = read(path)
        times.append((time.perf_counter() - t) * 1000)
        got = norm(text)
        ref = refs.get(path.stem, [])
        found += sum(norm(s) in got for s in ref)
        total += len(ref)
        want = Counter(norm("".join(ref)))
        have = Counter(got)
        char_hit += sum(min(c, have[k]) for k, c in want.items())
        char_all += sum(want.values())
        if os.environ.get("OCR_SHOW"):
            print(f"--- {path.name}\n{text}")
    print(
        f"{package}: load {load_s:.1f}s, {len(images)} images, ms/image median {statistics.median(times):.0f}"
        f" p95 {sorted(times)[int(0.95 * (len(times) - 1))]:.0f} max {max(times):.0f};"
        f" strings found {found}/{total} = {found / max(total, 1):.3f};"
        f" char recall {char_hit / max(char_all, 1):.3f}"
    )


if __name__ == "__main__":
    main()
