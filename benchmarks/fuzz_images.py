"""A coverage-guided fuzz run over image decoding with atheris, run by hand (CI runs the hypothesis
fuzz in tests/test_fuzz_images.py).

    .venv/bin/python benchmarks/fuzz_images.py -max_total_time=300 [-rss_limit_mb=1024] [CORPUS_DIR]

The corpus is seeded with the same valid, animated, EXIF-heavy and extreme-aspect images as the
tests. Any exception other than ImageError, a decode over 10 s, or a result over the pixel limit
is a crash; libFuzzer's ``-rss_limit_mb`` bounds memory.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from PIL import Image  # noqa: F401  (instrumented: coverage of Pillow's Python plugins)

    from guard.errors import ImageError
    from guard.images import decode_image

MAX_PIXELS = 1_000_000


def one_input(data: bytes) -> None:
    started = time.monotonic()
    try:
        img = decode_image(data, max_pixels=MAX_PIXELS)
    except ImageError:
        return
    finally:
        if time.monotonic() - started > 10:
            raise RuntimeError(f"decode_image took {time.monotonic() - started:.1f}s")
    if img.width * img.height > MAX_PIXELS or img.rgb.mode != "RGB":
        raise RuntimeError(f"decode_image returned {img.width}x{img.height} {img.rgb.mode}")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_fuzz_images import SEEDS

    args = sys.argv[:]
    corpus = next((a for a in args[1:] if not a.startswith("-")), None)
    if corpus is None:
        corpus = tempfile.mkdtemp(prefix="fuzz_images_")
        args.append(corpus)
    for name, seed in SEEDS.items():
        path = Path(corpus) / f"seed_{name}"
        if not path.exists():
            path.write_bytes(seed)
    if not any(a.startswith("-rss_limit_mb") for a in args):
        args.append("-rss_limit_mb=1024")
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
