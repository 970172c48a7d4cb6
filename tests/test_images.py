"""Tests for guard.images: every image is built here with Pillow (or by hand), no binary fixtures."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from guard.errors import ImageError
from guard.images import DecodedImage, decode_base64, decode_image, thumbnail_for_scoring

# --- builders ---------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def noisy(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """An image whose compressed data is long enough to be cut in the middle."""
    return Image.frombytes(mode, size, bytes((i * 7919) % 251 for i in range(size[0] * size[1] * len(mode))))


def png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG claiming width x height, with a tiny (wrong-sized) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + png_chunk(b"IEND", b"")
    )


def gif_header_only(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + b";"


def gif_with_large_frame(width: int, height: int) -> bytes:
    """A 10x10 GIF whose first frame claims width x height (Pillow grows the canvas to fit)."""
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return gif_header_only(10, 10)[:-1] + frame + b";"


def webp_vp8x_header_only(width: int, height: int) -> bytes:
    body = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunks = b"WEBP" + b"VP8X" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(chunks)) + chunks


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(encode(noisy((16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def with_exif_orientation(fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(noisy((40, 20)), fmt, exif=exif.tobytes())


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), color) for color in ("red", "lime", "blue")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


@pytest.fixture
def no_pixel_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Records any attempt to decode pixels (ImageFile.load) instead of doing it."""
    calls: list[object] = []

    def forbidden_load(self: ImageFile.ImageFile) -> Any:
        calls.append(self)
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", forbidden_load)
    yield calls
    assert calls == [], "decode_image tried to decode pixels of an oversized image"


# --- accepted images --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pil_format", "mode", "expected_format", "mime_type"),
    [
        ("JPEG", "RGB", "jpeg", "image/jpeg"),
        ("JPEG", "L", "jpeg", "image/jpeg"),
        ("JPEG", "CMYK", "jpeg", "image/jpeg"),
        ("PNG", "RGB", "png", "image/png"),
        ("PNG", "RGBA", "png", "image/png"),
        ("PNG", "P", "png", "image/png"),
        ("PNG", "I;16", "png", "image/png"),
        ("WEBP", "RGB", "webp", "image/webp"),
        ("WEBP", "RGBA", "webp", "image/webp"),
        ("GIF", "P", "gif", "image/gif"),
        ("GIF", "L", "gif", "image/gif"),
    ],
)
def test_accepted_formats(pil_format: str, mode: str, expected_format: str, mime_type: str) -> None:
    data = encode(Image.new(mode, (37, 21)), pil_format)

    img = decode_image(data)

    assert (img.format, img.mime_type, img.width, img.height) == (expected_format, mime_type, 37, 21)
    assert img.sha256 == hashlib.sha256(data).hexdigest()
    assert img.data == data
    assert (img.rgb.mode, img.rgb.size) == ("RGB", (37, 21))


def test_format_comes_from_content_not_from_what_the_caller_claims() -> None:
    # PNG bytes that a client might have named photo.jpg: we only look at the bytes.
    assert decode_image(encode(noisy(), "PNG")).format == "png"


def test_mpo_from_a_camera_is_accepted_as_jpeg() -> None:
    frames = [noisy((24, 16)), Image.new("RGB", (24, 16), "blue")]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])

    img = decode_image(data)

    assert (img.format, img.mime_type, img.width, img.height) == ("jpeg", "image/jpeg", 24, 16)


@pytest.mark.parametrize("pil_format", ["GIF", "WEBP", "PNG"])  # PNG: APNG
def test_animated_image_gives_first_frame(pil_format: str) -> None:
    img = decode_image(animated(pil_format))

    assert (img.width, img.height) == (32, 32)
    r, g, b = img.rgb.getpixel((16, 16))  # type: ignore[misc]
    assert r > 200 and g < 50 and b < 50, "expected the red first frame"


@pytest.mark.parametrize("pil_format", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize(
    ("orientation", "size"), [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))]
)
def test_exif_orientation_is_applied(pil_format: str, orientation: int, size: tuple[int, int]) -> None:
    img = decode_image(with_exif_orientation(pil_format, orientation))

    assert (img.width, img.height) == size
    assert img.rgb.size == size


def test_transparency_is_flattened_onto_white() -> None:
    data = encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG")

    assert decode_image(data).rgb.getpixel((0, 0)) == (255, 255, 255)


def test_decoded_image_is_immutable_and_to_rgb_returns_a_copy() -> None:
    img = decode_image(encode(Image.new("RGB", (4, 4), "red"), "PNG"))

    copy = img.to_rgb()
    copy.putpixel((0, 0), (0, 0, 255))

    assert img.rgb.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(AttributeError):
        img.width = 5  # type: ignore[misc]
    assert isinstance(img, DecodedImage)


# --- rejected images --------------------------------------------------------------------------

JPEG = encode(noisy(), "JPEG")
PNG = encode(noisy(), "PNG")
WEBP = encode(noisy(), "WEBP")
GIF = encode(noisy(), "GIF")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"", "empty_image", id="empty"),
        pytest.param(b"hello, this is plain text and not a picture\n", "not_an_image", id="text"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not_an_image", id="svg"),
        pytest.param(encode(noisy(), "BMP"), "unsupported_image_format", id="bmp"),
        pytest.param(encode(noisy(), "TIFF"), "unsupported_image_format", id="tiff"),
        pytest.param(encode(noisy((16, 16)), "ICO"), "unsupported_image_format", id="ico"),
        pytest.param(b"\x00\x00\x00\x18ftypheic" + bytes(16), "unsupported_image_format", id="heic"),
        pytest.param(cut(JPEG, 0.5), "truncated_image", id="jpeg-half"),
        pytest.param(JPEG[:-2], "truncated_image", id="jpeg-no-eoi"),
        pytest.param(cut(PNG, 0.5), "truncated_image", id="png-half"),
        pytest.param(PNG[:-12], "truncated_image", id="png-no-iend"),
        pytest.param(PNG[:20], "truncated_image", id="png-in-header"),
        pytest.param(cut(WEBP, 0.5), "truncated_image", id="webp-half"),
        pytest.param(cut(GIF, 0.5), "truncated_image", id="gif-half"),
        pytest.param(
            b"GIF89a\x10\x00\x10\x00\x00\x00\x00 then text", "not_an_image", id="gif-magic-text-body"
        ),
        pytest.param(b"GIF89a" + bytes(range(256)) * 4, "not_an_image", id="gif-magic-garbage"),
        pytest.param(b"\xff\xd8\xff" + PNG, "not_an_image", id="jpeg-magic-png-body"),
        pytest.param(PNG[:29] + b"\x00" * 4 + PNG[33:], "not_an_image", id="png-bad-ihdr-crc"),
        pytest.param(png_header_only(0, 10), "empty_image", id="png-zero-width"),
        pytest.param(gif_header_only(10, 0), "empty_image", id="gif-zero-height"),
    ],
)
def test_rejected(data: bytes, code: str) -> None:
    with pytest.raises(ImageError) as exc_info:
        decode_image(data)

    assert exc_info.value.code == code
    assert exc_info.value.message == str(exc_info.value)
    assert isinstance(exc_info.value, ValueError)


def test_over_the_byte_limit() -> None:
    with pytest.raises(ImageError) as exc_info:
        decode_image(PNG, max_bytes=len(PNG) - 1)

    assert exc_info.value.code == "image_too_large"
    assert f"{len(PNG) - 1:,}" in exc_info.value.message
    assert decode_image(PNG, max_bytes=len(PNG)).format == "png"


# --- decompression bombs ----------------------------------------------------------------------


@pytest.mark.parametrize("warning_action", ["error", "ignore"])
@pytest.mark.parametrize(
    "data",
    [
        pytest.param(png_header_only(10_000, 10_000), id="png-10000x10000"),
        pytest.param(png_header_only(2**31 - 1, 2**31 - 1), id="png-max"),
        pytest.param(gif_header_only(65_535, 65_535), id="gif-max"),
        pytest.param(gif_with_large_frame(7_000, 7_000), id="gif-frame-7000x7000"),
        pytest.param(gif_with_large_frame(20_000, 20_000), id="gif-frame-20000x20000"),
        pytest.param(webp_vp8x_header_only(16_384, 16_384), id="webp-vp8x-max"),
        pytest.param(webp_vp8x_header_only(8_000, 8_000), id="webp-vp8x-8000"),
        pytest.param(jpeg_with_size(10_000, 10_000), id="jpeg-10000x10000"),
        pytest.param(jpeg_with_size(8_000, 8_000), id="jpeg-8000x8000"),
        pytest.param(jpeg_with_size(65_535, 65_535), id="jpeg-max"),
    ],
)
def test_bomb_rejected_from_header_quickly_without_decoding(
    data: bytes, warning_action: Any, no_pixel_load: list[object]
) -> None:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter(warning_action)
        with pytest.raises(ImageError) as exc_info:
            decode_image(data)

    assert time.perf_counter() - start < 0.5
    assert exc_info.value.code == "image_too_many_pixels"
    assert "40,000,000" in exc_info.value.message


def test_png_bomb_message_says_size_and_limit() -> None:
    with pytest.raises(ImageError) as exc_info:
        decode_image(png_header_only(10_000, 10_000))

    assert exc_info.value.message == "the image is 10000x10000 = 100,000,000 pixels; the limit is 40,000,000"


@pytest.mark.parametrize(("max_pixels", "accepted"), [(600, True), (599, False)])
def test_pixel_limit_is_a_parameter(max_pixels: int, accepted: bool) -> None:
    data = encode(noisy((30, 20)), "PNG")
    if accepted:
        assert decode_image(data, max_pixels=max_pixels).width == 30
    else:
        with pytest.raises(ImageError, match="limit is 599") as exc_info:
            decode_image(data, max_pixels=max_pixels)
        assert exc_info.value.code == "image_too_many_pixels"


def test_pillow_global_limit_caps_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)

    with pytest.raises(ImageError) as exc_info:
        decode_image(encode(noisy((30, 20)), "JPEG"), max_pixels=10**9)

    assert exc_info.value.code == "image_too_many_pixels"


# --- base64 -----------------------------------------------------------------------------------

B64 = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(B64, id="plain"),
        pytest.param(f"data:image/png;base64,{B64}", id="data-url"),
        pytest.param(f"DATA:image/jpeg;base64,{B64}", id="data-url-any-image-type-any-case"),
        pytest.param(f"data:image/png;name=a.png;base64,{B64}", id="data-url-with-parameter"),
        pytest.param("\n".join(B64[i : i + 76] for i in range(0, len(B64), 76)) + "\n", id="mime-lines"),
        pytest.param(f"  {B64[:10]} \r\n\t{B64[10:]}  ", id="whitespace"),
    ],
)
def test_decode_base64_accepts(text: str) -> None:
    assert decode_base64(text, max_bytes=len(PNG)) == PNG


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("", "empty_image", id="empty"),
        pytest.param(" \n ", "empty_image", id="only-whitespace"),
        pytest.param("data:image/png;base64,", "empty_image", id="empty-data-url"),
        pytest.param("not base64!!", "invalid_base64", id="punctuation"),
        pytest.param("QUJD=", "invalid_base64", id="bad-padding"),
        pytest.param("QUJDRA", "invalid_base64", id="missing-padding"),
        pytest.param("QUJD-_==", "invalid_base64", id="urlsafe-alphabet"),
        pytest.param("QUJDRA==é", "invalid_base64", id="non-ascii"),
        pytest.param("QUJDRA===", "invalid_base64", id="excess-padding"),
        pytest.param("QUJD==QUJD", "invalid_base64", id="padding-in-the-middle"),
        pytest.param("QUJD\x00", "invalid_base64", id="nul"),
        pytest.param(f"data:text/plain;base64,{B64}", "invalid_base64", id="data-url-not-image"),
        pytest.param(f"data:image/png,{B64}", "invalid_base64", id="data-url-not-base64"),
        pytest.param(B64, "image_too_large", id="over-limit"),
    ],
)
def test_decode_base64_rejects(text: str, code: str) -> None:
    with pytest.raises(ImageError) as exc_info:
        decode_base64(text, max_bytes=len(PNG) - 1)

    assert exc_info.value.code == code


def test_decode_base64_checks_size_before_decoding() -> None:
    # 40 MB of invalid characters: rejected for its size, without attempting to decode it.
    huge = "!" * (40 * 1024 * 1024)
    start = time.perf_counter()

    with pytest.raises(ImageError) as exc_info:
        decode_base64(huge, max_bytes=10 * 1024 * 1024)

    assert exc_info.value.code == "image_too_large"
    assert "10,485,760" in exc_info.value.message
    assert time.perf_counter() - start < 2


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 100])
def test_decode_base64_size_limit_is_exact(size: int) -> None:
    payload = bytes(range(size % 256)) * (size // 256) + bytes(range(size % 256))
    text = base64.b64encode(payload).decode()

    if payload:
        assert decode_base64(text, max_bytes=len(payload)) == payload
    if len(payload) > 0:
        with pytest.raises(ImageError, match="image is"):
            decode_base64(text, max_bytes=len(payload) - 1)


# --- thumbnails -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((400, 200), 100, (100, 50)), ((200, 400), 100, (50, 100)), ((60, 30), 100, (60, 30))],
)
def test_thumbnail_for_scoring(size: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    original = noisy(size)

    thumb = thumbnail_for_scoring(original, max_side)

    assert thumb.size == expected
    assert original.size == size, "the input must not be modified"


def test_thumbnail_rejects_nonpositive_side() -> None:
    with pytest.raises(ValueError):
        thumbnail_for_scoring(noisy(), 0)


# --- fuzzing ----------------------------------------------------------------------------------

MAGICS = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x01\x00\x00WEBP", b"GIF89a", b"GIF87a"]
VALID = [JPEG, PNG, WEBP, GIF, animated("GIF"), animated("WEBP"), with_exif_orientation("JPEG", 6)]


def decode_or_image_error(data: bytes) -> None:
    try:
        img = decode_image(data, max_pixels=1_000_000)
    except ImageError as e:
        assert e.code in {
            "image_too_many_pixels",
            "not_an_image",
            "unsupported_image_format",
            "truncated_image",
            "empty_image",
        }
    else:
        assert img.rgb.mode == "RGB"
        assert img.width * img.height <= 1_000_000


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(prefix=st.sampled_from(MAGICS), rest=st.binary(max_size=2048))
def test_random_bytes_only_raise_image_error(prefix: bytes, rest: bytes) -> None:
    decode_or_image_error(prefix + rest)


@FUZZ
@given(base=st.sampled_from(VALID), data=st.data())
def test_corrupted_images_only_raise_image_error(base: bytes, data: st.DataObject) -> None:
    corrupted = bytearray(base)
    for _ in range(data.draw(st.integers(1, 8))):
        corrupted[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
    length = data.draw(st.integers(0, len(base)))
    decode_or_image_error(bytes(corrupted[:length]))


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text_only_raises_image_error_from_decode_base64(text: str) -> None:
    try:
        decode_base64(text, max_bytes=1000)
    except ImageError as e:
        assert e.code in {"invalid_base64", "empty_image", "image_too_large"}
