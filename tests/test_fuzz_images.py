"""A time-boxed fuzz run over image decoding (issue 6, "Bad input, fuzzed"): byte mutations of valid
JPEG/PNG/WebP/GIF and animated images, images that lie about their format, extreme aspect ratios,
huge EXIF and multi-frame files. decode_image must only ever raise ImageError, return promptly and
keep its memory bounded. A short run of the decoder's deadline mutates progressive JPEGs with many
scans (each costs a pass over the image) and checks every decoding ends within its deadline plus
one read. The hypothesis budget keeps the whole file to roughly 25 s; for a longer run by hand
there is benchmarks/fuzz_images.py (atheris).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from guard.errors import ImageError
from guard.images import DecodedImage, decode_image
from tests.test_images import (
    animated,
    encode,
    gif_with_large_frame,
    noisy,
    png_header_only,
    webp_vp8x_header_only,
)

MAX_PIXELS = 1_000_000
PER_CALL_S = 10.0  # generous: a "no hang" bound, not a speed target
PEAK_MB = 200
CODES = {
    "image_too_many_pixels",
    "not_an_image",
    "unsupported_image_format",
    "truncated_image",
    "empty_image",
    "image_too_many_scans",
    "image_decoded_too_large",
    "image_decode_timeout",
}
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def big_exif_jpeg(size: int = 60_000) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    exif[0x927C] = bytes(i % 251 for i in range(size))  # MakerNote
    data = encode(noisy((40, 20)), "JPEG", exif=exif.tobytes())
    assert len(data) > size
    return data


def seeds() -> dict[str, bytes]:
    frames = [noisy((24, 16)), Image.new("RGB", (24, 16), "blue")]
    return {
        "jpeg": encode(noisy(), "JPEG"),
        "jpeg_progressive": encode(noisy(), "JPEG", progressive=True),
        "jpeg_cmyk": encode(noisy((32, 16), "CMYK"), "JPEG"),
        "jpeg_exif_60k": big_exif_jpeg(),
        "mpo": encode(frames[0], "MPO", save_all=True, append_images=frames[1:]),
        "png": encode(noisy(), "PNG"),
        "png_palette_transparency": encode(noisy((32, 16), "L").convert("P"), "PNG", transparency=0),
        "png_16bit": encode(Image.new("I;16", (16, 16), 1000), "PNG"),
        "png_interlaced": encode(noisy(), "PNG", interlace=1),
        "apng": animated("PNG"),
        "webp": encode(noisy(), "WEBP"),
        "webp_lossless_alpha": encode(noisy((32, 16), "RGBA"), "WEBP", lossless=True),
        "webp_animated": animated("WEBP"),
        "gif": encode(noisy(), "GIF"),
        "gif_animated": animated("GIF"),
        "png_1x20000": encode(Image.new("L", (1, 20_000), 128), "PNG"),
        "jpeg_20000x1": encode(Image.new("RGB", (20_000, 1), "red"), "JPEG"),
        "webp_1x16383": encode(Image.new("RGB", (1, 16_383), "red"), "WEBP"),
        "gif_1x20000": encode(Image.new("P", (1, 20_000)), "GIF"),
        "png_claims_bomb": png_header_only(50_000, 50_000),
        "gif_large_frame": gif_with_large_frame(1, 20_000),
    }


SEEDS = seeds()
MAGICS = [
    b"\xff\xd8\xff",
    b"\xff\xd8\xff\xe1",
    b"\x89PNG\r\n\x1a\n",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"\x00\x00\x00\x1cftypheic",
    b"%PDF",
    b"",
]
EXTREMES = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x01", b"\x80\x00"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "overwrite", "extreme", "insert", "delete", "duplicate", "magic"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif op == "extreme":  # size, length and offset fields set to their limits
            data[at : at + 4] = draw(st.sampled_from(EXTREMES))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
        elif op == "magic":  # lie about the format: another format's magic over or before the data
            magic = draw(st.sampled_from(MAGICS))
            data = bytearray(magic + data[len(magic) :] if draw(st.booleans()) else magic + data)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def rss_kb(field: str) -> int:
    found = re.search(rf"{field}:\s+(\d+) kB", STATUS.read_text())
    assert found is not None
    return int(found.group(1))


@pytest.fixture(scope="module")
def peak_rss() -> Iterator[Any]:
    """A function giving the peak RSS growth (MB) while it runs ``fn``; None where Linux cannot say."""
    try:
        CLEAR_REFS.write_text("5")  # reset VmHWM (the peak) to the current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")

    def measure(fn: Any) -> tuple[Any, float]:
        CLEAR_REFS.write_text("5")
        before = rss_kb("VmRSS")
        result = fn()
        return result, (rss_kb("VmHWM") - before) / 1024

    yield measure


def check(data: bytes, measure: Any) -> None:
    def run() -> DecodedImage | ImageError:
        try:
            return decode_image(data, max_pixels=MAX_PIXELS)
        except ImageError as e:
            return e

    started = time.monotonic()
    result, peak_mb = measure(run)
    took = time.monotonic() - started
    assert took < PER_CALL_S, f"decode took {took:.1f}s"
    assert peak_mb < PEAK_MB, f"decoding used {peak_mb:.0f} MB"
    if isinstance(result, ImageError):
        assert result.code in CODES, result
    else:
        assert result.rgb.mode == "RGB" and result.width * result.height <= MAX_PIXELS
        assert result.rgb.size == (result.width, result.height)


def test_every_seed_decodes(peak_rss: Any) -> None:
    """The seeds are real images (so mutations start from something valid), except the two bombs."""
    for name, data in SEEDS.items():
        if name == "png_claims_bomb":
            with pytest.raises(ImageError) as err:
                decode_image(data, max_pixels=MAX_PIXELS)
            assert err.value.code == "image_too_many_pixels"
        elif name == "gif_large_frame":
            with pytest.raises(ImageError):
                decode_image(data, max_pixels=10_000)
        else:
            img = decode_image(data, max_pixels=MAX_PIXELS)
            assert img.width * img.height > 0, name
        check(data, peak_rss)


def test_the_memory_probe_sees_a_big_allocation(peak_rss: Any) -> None:
    """The probe the fuzz relies on is not blind: 300 MB held briefly shows as a peak over the bound."""
    _, peak_mb = peak_rss(lambda: len(bytearray(300 * 1024 * 1024)))
    assert peak_mb > PEAK_MB


IMAGE_FUZZ = settings(
    max_examples=1200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@IMAGE_FUZZ
@given(data=mutated())
def test_mutated_images_only_raise_image_error_promptly_and_in_bounded_memory(
    peak_rss: Any, data: bytes
) -> None:
    check(data, peak_rss)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 0xFFFF) | st.sampled_from([1, 20_000, 0xFFFF]),
    height=st.integers(1, 0xFFFF) | st.sampled_from([1, 20_000, 0xFFFF]),
    fmt=st.sampled_from(["png", "gif", "gif_frame", "webp"]),
)
def test_claimed_sizes_and_aspect_ratios_are_checked_before_pixels(
    peak_rss: Any, width: int, height: int, fmt: str
) -> None:
    if fmt == "png":
        data = bytearray(png_header_only(width, height))
    elif fmt == "gif":
        data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
        data[6:10] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    elif fmt == "gif_frame":
        data = bytearray(gif_with_large_frame(width, height))
    else:
        data = bytearray(webp_vp8x_header_only(min(width, 0x3FFF), min(height, 0x3FFF)))
    check(bytes(data), peak_rss)


# The decoder's deadline ------------------------------------------------------------------------

DEADLINE_S = 0.3
DEADLINE_SLACK_S = 1.5
"""The work between two reads of a progressive JPEG (1 KB) is well under this, even on a busy machine."""


@functools.cache
def scan_seeds() -> list[bytes]:
    from tests.test_image_limits import many_scans_jpeg

    return [
        many_scans_jpeg((1600, 1200), 400),
        many_scans_jpeg((3000, 2000), 150),
        many_scans_jpeg((800, 600), 900),
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_decoding_deadline_holds_for_mutated_many_scan_jpegs(data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from(scan_seeds())))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(0, len(seed) - 1))
        op = data.draw(st.sampled_from(["flip", "overwrite", "duplicate", "cut"]))
        if op == "flip":
            seed[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "overwrite":
            seed[at : at + 2] = data.draw(st.binary(min_size=1, max_size=2))
        elif op == "duplicate":
            seed[at:at] = seed[at : at + data.draw(st.integers(1, 4096))]
        else:
            del seed[at : at + data.draw(st.integers(1, 64))]
    started = time.monotonic()
    try:
        decode_image(bytes(seed), max_scans=10**6, deadline=started + DEADLINE_S)
    except ImageError as e:
        assert e.code in CODES, e
    took = time.monotonic() - started
    assert took < DEADLINE_S + DEADLINE_SLACK_S, f"decoding ran {took:.2f}s past a {DEADLINE_S}s deadline"
