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

Costly images are refused too, each with its own code: a JPEG with more than ``max_scans`` scans
(counted from its markers before decoding: a progressive JPEG's decoding time grows with its scans,
and a few hundred KB can hold thousands; ``image_too_many_scans``), an image whose decoding would
take more than ``max_decoded_bytes`` of memory (estimated from its header before any pixel is
decoded, checked again before it is turned; ``image_decoded_too_large``), and one still decoding at
its deadline (``image_decode_timeout``: the decoder reads its input through a file object that
stops it at the next read). The pixels are not copied more than needed: an RGB image without an
EXIF rotation is kept as decoded.

:class:`ImageDecoder` runs decoding in a bounded pool of its own, so that hostile photos never hold
the threads SQL, OCR and the scorer use.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from guard.errors import ImageDecodeCode, ImageError, Unavailable
from guard.settings import Settings

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

MAX_SCANS = 100
"""Default most scans in a JPEG: encoders write 1 (baseline) to about 10 (progressive)."""
MAX_DECODED_BYTES = 256 * 1024 * 1024
"""Default most memory one decoding may take (Pillow keeps 4 bytes per RGB pixel)."""

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
    data: bytes,
    *,
    max_pixels: int = 40_000_000,
    max_bytes: int = 10 * 1024 * 1024,
    max_scans: int = MAX_SCANS,
    max_decoded_bytes: int = MAX_DECODED_BYTES,
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> DecodedImage:
    """Validate and decode ``data`` completely; raise :class:`ImageError` if it is not acceptable.

    ``deadline`` (a ``time.monotonic()`` value) and ``stop`` end a decoding still running then
    (``image_decode_timeout``), at the decoder's next read of its input or the next step.
    """
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
    if fmt == "jpeg":
        _check_scans(data, max_scans)
    pil_format, mime_type = _FORMATS[fmt]
    source = _Timed(data, deadline, stop)
    try:
        im = Image.open(source, formats=[pil_format])
        if fmt == "jpeg" and (im.info.get("progressive") or im.info.get("progression")):
            source.block = _PROGRESSIVE_BLOCK  # its scans are decoded as their bytes come in
        _check_size(im.size, limit)
        _check_memory(im, fmt, max_decoded_bytes, loaded=False)
        im.load()  # first frame only; raises on truncated or corrupt data
        source.check()
        _check_memory(im, fmt, max_decoded_bytes, loaded=True)
        oriented = _orient(im)
        source.check()
        rgb = _to_rgb(oriented)
        if rgb is im:  # kept as decoded: a plain image over the same pixels, without the file
            rgb = im._new(im.im)
    except ImageError:
        raise
    except _Expired as e:
        raise ImageError(
            "image_decode_timeout", "the image took too long to decode (it is too costly to decode)"
        ) from e
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


class _Expired(Exception):
    """The decoding's deadline passed (or it was told to stop)."""


_PROGRESSIVE_BLOCK = 1024
"""Bytes a progressive JPEG's decoder gets per read: it decodes each scan as it comes in, so the
work between two reads (two deadline checks) is the few scans in 1 KB (measured: at most 0.6 s
for a 12 MP image, and no slower overall than 64 KB blocks)."""


class _Timed(BytesIO):
    """The image's bytes as the decoder reads them, ending the decoding at its deadline.

    Pillow feeds its decoders from ``read`` (in blocks of 64 KB; ``block`` makes them smaller), so a
    decoding that runs past its deadline stops at its next read; the C decoder itself cannot be
    interrupted.
    """

    def __init__(self, data: bytes, deadline: float | None, stop: threading.Event | None) -> None:
        super().__init__(data)
        self._deadline = deadline
        self._stop = stop
        self.block: int | None = None

    def check(self) -> None:
        if (self._stop is not None and self._stop.is_set()) or (
            self._deadline is not None and time.monotonic() > self._deadline
        ):
            raise _Expired

    def read(self, size: int | None = -1, /) -> bytes:
        self.check()
        if self.block is not None and (size is None or size < 0 or size > self.block):
            size = self.block
        return super().read(size)


def jpeg_scans(data: bytes, stop_after: int | None = None) -> int:
    """How many scans (SOS segments) a JPEG holds, read from its markers (stops past ``stop_after``).

    Walks the segments from SOI: each marker's length skips its payload (so an EXIF thumbnail's
    markers are not counted), and a scan's entropy-coded data ends at the first 0xFF that is not
    a stuffed 0xFF00 or a restart marker. A malformed structure ends the count (the decoder then
    says what is wrong).
    """
    scans = 0
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker != 0xDA:
            continue
        scans += 1
        if stop_after is not None and scans > stop_after:
            break
        while True:  # the scan's entropy-coded data
            i = data.find(b"\xff", i)
            if i < 0 or i + 1 >= n:
                return scans
            following = data[i + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                i += 2
                continue
            break
    return scans


def _check_scans(data: bytes, max_scans: int) -> None:
    scans = jpeg_scans(data, stop_after=max_scans)
    if scans > max_scans:
        raise ImageError(
            "image_too_many_scans",
            f"the JPEG has more than {max_scans} scans (each costs a pass over the whole image); "
            "re-encode it as a baseline or standard progressive JPEG",
        )


def _pixel_bytes(mode: str) -> int:
    """Bytes per pixel as Pillow stores ``mode`` (RGB takes 4, like RGBA)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decoded_bytes(im: Image.Image, fmt: str, *, turned: bool) -> int:
    """An upper bound of the memory decoding ``im`` to RGB takes: its pixels as decoded, the
    decoder's own buffer (a progressive JPEG's coefficients, libwebp's canvas), the rotated copy
    when ``turned``, and the conversions to RGB."""
    pixels = im.width * im.height
    own = pixels * _pixel_bytes(im.mode)
    total = own
    if fmt == "jpeg" and (im.info.get("progressive") or im.info.get("progression")):
        total += pixels * len(im.getbands()) * 2  # 16-bit DCT coefficients of every component
    elif fmt == "webp":
        # Pillow decodes WebP through libwebp's animation decoder: an RGBA canvas, the previous
        # frame's and the frame itself (measured: 15 bytes a pixel in all for an RGB picture).
        total += pixels * 12
    if turned:
        total += own
    if _has_alpha(im):
        total += (0 if im.mode == "RGBA" else pixels * 4) + pixels * 4
    elif im.mode != "RGB":
        total += pixels * 4
    return total


def _check_memory(im: Image.Image, fmt: str, max_decoded_bytes: int, *, loaded: bool) -> None:
    # A PNG's EXIF may follow its pixels: read only after loading (getexif would load it).
    known = loaded or fmt != "png" or "exif" in im.info
    need = decoded_bytes(im, fmt, turned=known and _orientation(im) > 1)
    if need > max_decoded_bytes:
        raise ImageError(
            "image_decoded_too_large",
            f"decoding the {im.width}x{im.height} {im.mode} image takes about {need / 2**20:,.0f} MiB; "
            f"the limit is {max_decoded_bytes / 2**20:,.0f} MiB",
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


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1: as stored); broken EXIF counts as 1."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # malformed EXIF metadata
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (a turned copy; ``im`` itself when there is nothing to turn);
    broken EXIF is ignored rather than rejecting the photo."""
    if _orientation(im) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF metadata
        return im


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with any transparency flattened onto white (not black) so content stays visible;
    ``im`` itself when it is RGB already."""
    if _has_alpha(im):
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        out = Image.new("RGB", rgba.size, "white")
        out.paste(rgba, (0, 0), rgba)  # the alpha band is the mask
        return out
    return im if im.mode == "RGB" else im.convert("RGB")


def _is_truncation(e: Exception) -> bool:
    return isinstance(e, EOFError) or "truncat" in str(e).lower()


def _too_large_message(size: int, limit: int) -> str:
    return f"the image is {size:,} bytes; the limit is {limit:,} bytes"


class ImageDecoder:
    """Decodes photos in a bounded pool of its own, never in the default thread pool that SQL
    lookups, the decision log and OCR start-up share.

    At most ``threads`` photos decode at once and ``max_pending`` wait or run; one more is refused
    at once (503 ``image_decoder_busy``). Each photo gets ``timeout_s`` from its arrival: one still
    waiting for a thread then is refused the same way, one still decoding is stopped (422
    ``image_decode_timeout``) and its thread freed at the decoder's next read. Pillow releases the
    GIL while it decodes, so the event loop keeps answering meanwhile.
    """

    def __init__(
        self,
        *,
        threads: int = 2,
        max_pending: int = 16,
        timeout_s: float = 5.0,
        max_pixels: int = 40_000_000,
        max_bytes: int = 10 * 1024 * 1024,
        max_scans: int = MAX_SCANS,
        max_decoded_bytes: int = MAX_DECODED_BYTES,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="image-decode")
        self._max_pending = max(1, max_pending)
        self._timeout = timeout_s
        self._limits = {
            "max_pixels": max_pixels,
            "max_bytes": max_bytes,
            "max_scans": max_scans,
            "max_decoded_bytes": max_decoded_bytes,
        }
        self._lock = threading.Lock()
        self.pending = 0
        """Photos waiting for a thread or decoding now."""
        self.timeouts = 0
        self.busy = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageDecoder:
        return cls(
            threads=settings.image_decode_threads,
            max_pending=settings.image_decode_max_pending,
            timeout_s=settings.image_decode_timeout_s,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_body_bytes,
            max_scans=settings.max_image_scans,
            max_decoded_bytes=settings.max_image_decoded_bytes,
        )

    async def decode(self, data: bytes) -> DecodedImage:
        """``data`` decoded (ImageError when refused; Unavailable when the decoder is busy)."""
        with self._lock:
            if self.pending >= self._max_pending:
                self.busy += 1
                raise _busy(f"{self.pending} photos are being decoded")
            self.pending += 1
        deadline = time.monotonic() + self._timeout
        stop = threading.Event()
        started = threading.Event()
        try:
            job = self._pool.submit(self._run, data, deadline, stop, started)
        except BaseException:
            self._done()
            raise
        job.add_done_callback(lambda _job: self._done())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job), self._timeout)
        except TimeoutError:
            stop.set()
            with self._lock:
                self.timeouts += 1
            if not started.is_set():
                raise _busy(f"no decoder was free within {self._timeout:g}s") from None
            raise ImageError(
                "image_decode_timeout",
                f"the image took longer than {self._timeout:g}s to decode (it is too costly to decode)",
            ) from None
        finally:
            stop.set()  # a caller that went away (or timed out) stops its decoding

    def _run(
        self, data: bytes, deadline: float, stop: threading.Event, started: threading.Event
    ) -> DecodedImage:
        if stop.is_set() or time.monotonic() > deadline:  # it waited its whole time: never started
            raise ImageError("image_decode_timeout", "the image was not decoded in time")
        started.set()
        return decode_image(data, deadline=deadline, stop=stop, **self._limits)

    def _done(self) -> None:
        with self._lock:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _busy(why: str) -> Unavailable:
    return Unavailable("image_decoder_busy", f"the photo cannot be decoded now ({why}); try again shortly")
