"""Safe decoding of customer photos: JPEG, PNG, WebP and GIF (first frame), nothing else.

Everything that can go wrong with untrusted image bytes surfaces as one exception type,
:class:`guard.errors.ImageError`, carrying a stable ``code``, its HTTP status and a human-readable
``message``.

Decompression bombs are rejected from the header, before any pixel memory is allocated:
for PNG, GIF and WebP the size is read from the raw bytes before Pillow sees them (libwebp
allocates its canvas as soon as the file is opened), and for every format the size Pillow
parsed is checked again before pixels are loaded. The effective limit never exceeds
Pillow's own ``Image.MAX_IMAGE_PIXELS``, so any ``DecompressionBombWarning`` Pillow emits
corresponds to an image we reject; if warnings are configured as errors, the warning (and
``DecompressionBombError``) is turned into ``image_too_many_pixels`` too. No global Pillow
or ``warnings`` state is modified, so this module is safe to call from several threads.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass, field
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

from guard.errors import ImageDecodeCode, ImageError

ErrorCode = ImageDecodeCode

# Our format name -> (Pillow format name, MIME type).
_FORMATS: dict[str, tuple[str, str]] = {
    "jpeg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
}
_ACCEPTED = "JPEG, PNG, WebP, GIF"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the final chunk, with its fixed CRC

# Well-known formats we refuse, recognised only to give a better error than "not an image".
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}

_DATA_URL = re.compile(r"data:image/[a-z0-9.+-]+(?:;[a-z0-9_.+-]+=[^;,]*)*;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class DecodedImage:
    """A fully validated image. ``width``/``height`` are after EXIF orientation."""

    data: bytes = field(repr=False)
    """The original bytes, unchanged."""
    sha256: str
    """Hex SHA-256 of ``data`` (cache key)."""
    format: str
    """One of "jpeg", "png", "webp", "gif"."""
    width: int
    height: int
    mime_type: str
    rgb: Image.Image = field(repr=False, compare=False)
    """The decoded, oriented RGB pixels (first frame). Shared: do not mutate; see :meth:`to_rgb`."""

    def to_rgb(self) -> Image.Image:
        """A private copy of the decoded RGB image, safe to modify."""
        return self.rgb.copy()


def decode_base64(data: str, *, max_bytes: int) -> bytes:
    """Strictly decode base64 image data, optionally prefixed by ``data:image/...;base64,``.

    Whitespace (including line breaks) is ignored. The decoded size is computed from the
    encoded length and checked against ``max_bytes`` before anything is decoded.
    """
    text = data.strip()
    if text[:5].lower() == "data:":
        match = _DATA_URL.match(text)
        if match is None:
            raise ImageError(
                "invalid_base64", "expected a data URL of the form data:image/<type>;base64,<data>"
            )
        text = text[match.end() :]
    text = "".join(text.split())
    if not text:
        raise ImageError("empty_image", "the image data is empty")
    padding = len(text) - len(text.rstrip("="))
    decoded_size = len(text) * 3 // 4 - min(padding, 2)
    if decoded_size > max_bytes:
        raise ImageError("image_too_large", _too_large_message(decoded_size, max_bytes))
    if len(text) % 4:
        raise ImageError("invalid_base64", "the image is not valid base64 (length is not a multiple of 4)")
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII characters
        raise ImageError("invalid_base64", f"the image is not valid base64 ({e})") from e


def decode_image(
    data: bytes, *, max_pixels: int = 40_000_000, max_bytes: int = 10 * 1024 * 1024
) -> DecodedImage:
    """Validate and decode ``data`` completely; raise :class:`ImageError` if it is not acceptable."""
    if not data:
        raise ImageError("empty_image", "the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageError("image_too_large", _too_large_message(len(data), max_bytes))
    fmt = _sniff(data)
    limit = _pixel_limit(max_pixels)
    size = _header_size(fmt, data)
    if size is not None:
        _check_size(size, limit)
    _check_complete(fmt, data)
    pil_format, mime_type = _FORMATS[fmt]
    try:
        with Image.open(BytesIO(data), formats=[pil_format]) as im:
            _check_size(im.size, limit)
            im.load()  # first frame only; raises on truncated or corrupt data
            rgb = _to_rgb(_orient(im))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("image_too_many_pixels", f"the image has too many pixels (limit {limit:,})") from e
    except UnidentifiedImageError as e:
        raise ImageError(
            "not_an_image", f"the data starts like {pil_format} but is not a valid {pil_format} image"
        ) from e
    except Exception as e:  # untrusted input: Pillow raises many exception types
        if _is_truncation(e):
            raise ImageError(
                "truncated_image", f"the {pil_format} image is truncated (incomplete data)"
            ) from e
        raise ImageError(
            "not_an_image", f"the {pil_format} image is corrupt ({type(e).__name__}: {e})"
        ) from e
    return DecodedImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=rgb.width,
        height=rgb.height,
        mime_type=mime_type,
        rgb=rgb,
    )


def thumbnail_for_scoring(img: Image.Image, max_side: int) -> Image.Image:
    """A copy of ``img`` scaled down (never up) so neither side exceeds ``max_side``."""
    if max_side < 1:
        raise ValueError("max_side must be at least 1")
    thumb = img.copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return thumb


def _sniff(data: bytes) -> str:
    """Our format name from the magic bytes (same tests as Pillow's), or raise."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    other = next((name for magic, name in _OTHER_MAGIC if data.startswith(magic)), None)
    if other is None and data[4:8] == b"ftyp":
        other = _FTYP_BRANDS.get(data[8:12])
    if other is not None:
        raise ImageError(
            "unsupported_image_format", f"{other} images are not supported (accepted: {_ACCEPTED})"
        )
    raise ImageError("not_an_image", f"the data is not an image (accepted: {_ACCEPTED})")


def _header_size(fmt: str, data: bytes) -> tuple[int, int] | None:
    """Width and height read straight from the header, where that is cheap (not JPEG)."""
    if fmt == "png" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt == "gif" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if fmt == "webp":
        chunk = data[12:16]
        if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(
                data[28:30], "little"
            ) & 0x3FFF
        if chunk == b"VP8X" and len(data) >= 30:
            return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
        if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _check_complete(fmt: str, data: bytes) -> None:
    """Catch truncations Pillow tolerates (PNG cut after its pixel data) or reports vaguely (WebP)."""
    if fmt == "png":
        complete = _PNG_IEND in data
    elif fmt == "webp":
        complete = len(data) >= 8 + int.from_bytes(data[4:8], "little")  # RIFF size field
    else:
        return
    if not complete:
        raise ImageError("truncated_image", f"the {_FORMATS[fmt][0]} image is truncated (incomplete data)")


def _pixel_limit(max_pixels: int) -> int:
    """Our limit, capped at Pillow's so Pillow never warns about an image we would accept."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)


def _check_size(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError("empty_image", f"the image has zero width or height ({width}x{height})")
    if width * height > limit:
        raise ImageError(
            "image_too_many_pixels",
            f"the image is {width}x{height} = {width * height:,} pixels; the limit is {limit:,}",
        )


def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; broken EXIF is ignored rather than rejecting the photo."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF metadata
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with any transparency flattened onto white (not black) so content stays visible."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return im.convert("RGB")


def _is_truncation(e: Exception) -> bool:
    return isinstance(e, EOFError) or "truncat" in str(e).lower()


def _too_large_message(size: int, limit: int) -> str:
    return f"the image is {size:,} bytes; the limit is {limit:,} bytes"
