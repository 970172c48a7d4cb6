"""Image decoding without a deadline (issue 12, item 12): a progressive JPEG with a thousand scans
(119 KB, 20 s to decode with Pillow alone), a flat 6300x6300 PNG under the pixel limit, and six
hostile photos at once against a served guard. Each costly photo is refused with its own code, the
decoder's own pool keeps /readyz and the decisions of other requests answering meanwhile."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image

from guard.app import create_app
from guard.errors import ImageError
from guard.images import ImageDecoder, decode_image, decoded_bytes, jpeg_scans
from guard.settings import Settings
from guard.store import migrate
from tests.fakes import FakeScorer
from tests.serving import serve
from tests.test_fuzz_images import peak_rss as peak_rss  # fixture: (result, peak RSS growth in MB) of fn()
from tests.test_images import encode, noisy, with_exif_orientation


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of a JPEG's segments; a scan's end includes its entropy-coded data."""
    out, i = [], 2
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((marker, i, i + 2))
            break
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:
            while data[(end := data.index(b"\xff", end)) + 1] in (0, *range(0xD0, 0xD8)):
                end += 2
        out.append((marker, i, end))
        i = end
    return out


def many_scans_jpeg(size: tuple[int, int] = (4000, 3000), scans: int = 1000) -> bytes:
    """A flat progressive JPEG whose last scan (with its Huffman tables) is repeated ``scans`` times:
    each copy is 48 bytes (an end-of-band run over every block) and costs the decoder a pass over
    the whole image. libjpeg only warns about the odd progression; Pillow decodes it."""
    data = encode(Image.new("RGB", size, (128, 128, 128)), "JPEG", progressive=True, quality=90)
    segs = _segments(data)
    last = max(k for k, seg in enumerate(segs) if seg[0] == 0xDA)
    first = last
    while segs[first - 1][0] == 0xC4:  # the DHT before it
        first -= 1
    start, end = segs[first][1], segs[last][2]
    return data[:start] + data[start:end] * scans + data[end:]


HOSTILE = many_scans_jpeg()


def test_scans_are_counted_from_the_markers() -> None:
    assert jpeg_scans(encode(noisy(), "JPEG")) == 1
    assert jpeg_scans(encode(noisy(), "JPEG", progressive=True)) == 10
    assert jpeg_scans(HOSTILE) == 1009
    assert jpeg_scans(HOSTILE, stop_after=100) == 101, "counting stops past the limit"
    # An EXIF thumbnail is a whole JPEG inside APP1: its scan is not counted.
    exif = Image.Exif()
    exif[0x927C] = encode(noisy((16, 16)), "JPEG", progressive=True)
    assert jpeg_scans(encode(noisy(), "JPEG", exif=exif.tobytes())) == 1


def test_a_progressive_jpeg_with_many_scans_is_refused_quickly() -> None:
    assert 100_000 < len(HOSTILE) < 130_000
    started = time.perf_counter()
    with pytest.raises(ImageError) as refused:
        decode_image(HOSTILE)
    took = time.perf_counter() - started
    assert (refused.value.code, refused.value.status) == ("image_too_many_scans", 422)
    assert took < 0.5, f"refused in {took:.2f}s"
    assert decode_image(encode(noisy(), "JPEG", progressive=True)).width == 64, "a normal one passes"


def test_a_decoding_past_its_deadline_stops() -> None:
    """With the scan limit out of the way, the deadline ends the 20 s decoding (checked at each 1 KB
    the decoder reads) and frees the thread."""
    started = time.perf_counter()
    with pytest.raises(ImageError) as refused:
        decode_image(HOSTILE, max_scans=10**6, deadline=time.monotonic() + 1.0)
    took = time.perf_counter() - started
    assert refused.value.code == "image_decode_timeout"
    assert took < 3.0, f"stopped after {took:.2f}s (deadline 1 s)"


def _flat_png(mode: str, side: int = 6300) -> bytes:
    return encode(Image.new(mode, (side, side), "white" if mode != "RGBA" else (255, 255, 255, 255)), "PNG")


def test_a_large_flat_png_is_decoded_within_its_estimate_or_refused_before_its_pixels(peak_rss: Any) -> None:
    """6300x6300 = 39.7 MP, under the 40 MP limit, about 115 KB. In RGB it is decoded in place (159 MB,
    no copy for the rotation or the conversion: before, 480 MB); in RGBA the estimate (RGBA + the RGB
    it is flattened to) is over 256 MiB: refused before any pixel is decoded."""
    rgb = _flat_png("RGB")
    assert len(rgb) < 200_000
    image, peak_mb = peak_rss(lambda: decode_image(rgb))
    assert (image.width, image.rgb.mode) == (6300, "RGB")
    assert peak_mb < 200, f"decoding took {peak_mb:.0f} MB"
    with Image.open(io.BytesIO(rgb)) as header:
        estimate_mb = decoded_bytes(header, "png", turned=False) / 2**20
    assert peak_mb < estimate_mb * 1.1 + 10, (peak_mb, estimate_mb)
    print(
        f"flat 6300x6300 RGB PNG ({len(rgb):,} bytes): peak {peak_mb:.0f} MB, estimate {estimate_mb:.0f} MiB"
    )
    del image

    rgba = _flat_png("RGBA")
    refused, peak_mb = peak_rss(lambda: _refusal(rgba))
    assert (refused.code, refused.status) == ("image_decoded_too_large", 413), refused
    assert peak_mb < 20, f"refusing took {peak_mb:.0f} MB"
    assert "MiB" in refused.message


def _refusal(data: bytes, **limits: Any) -> ImageError:
    try:
        decode_image(data, **limits)
    except ImageError as exc:
        return exc
    raise AssertionError("not refused")


@pytest.mark.parametrize(
    ("mode", "fmt", "extra"),
    [
        ("RGB", "PNG", {}),
        ("RGBA", "PNG", {}),
        ("L", "PNG", {}),
        ("P", "PNG", {"transparency": 0}),
        ("RGB", "JPEG", {"progressive": True}),
        ("RGB", "WEBP", {"lossless": True}),
    ],
)
def test_the_estimate_bounds_what_decoding_takes(
    peak_rss: Any, mode: str, fmt: str, extra: dict[str, Any]
) -> None:
    """The decoded-bytes limit means what it says: for each kind of image the peak memory of decoding
    it (3000x3000 flat) stays under the estimate the limit is checked against."""
    data = encode(Image.new(mode, (3000, 3000)), fmt, **extra)
    with Image.open(io.BytesIO(data)) as header:
        estimate_mb = decoded_bytes(header, fmt.lower(), turned=False) / 2**20
    _, peak_mb = peak_rss(lambda: decode_image(data))
    assert peak_mb < estimate_mb * 1.1 + 10, (peak_mb, estimate_mb)
    assert _refusal(data, max_decoded_bytes=int(estimate_mb * 2**20) - 1).code == "image_decoded_too_large"


def test_a_rotated_photo_counts_its_turned_copy() -> None:
    data = with_exif_orientation("JPEG", 6)
    with Image.open(io.BytesIO(data)) as header:
        turned = decoded_bytes(header, "jpeg", turned=True)
        assert turned > decoded_bytes(header, "jpeg", turned=False)
    assert decode_image(data, max_decoded_bytes=turned).width == 20
    assert _refusal(data, max_decoded_bytes=turned - 1).code == "image_decoded_too_large"


def test_the_decoder_pool_is_bounded_and_refuses_when_full() -> None:
    async def main() -> list[Any]:
        decoder = ImageDecoder(threads=1, max_pending=2, timeout_s=1.0, max_scans=10**6)
        try:
            return await asyncio.gather(*(decoder.decode(HOSTILE) for _ in range(3)), return_exceptions=True)
        finally:
            decoder.close()

    started = time.perf_counter()
    outcomes = asyncio.run(main())
    took = time.perf_counter() - started
    codes = [getattr(o, "code", repr(o)) for o in outcomes]
    # The first decodes until its time is up; the third finds two pending and is refused at once.
    # The second waits for the one thread, which frees as its own time runs out: busy when it never
    # started, a decode timeout when the thread took it up in the last instant; either is right.
    assert codes[0] == "image_decode_timeout" and codes[2] == "image_decoder_busy", codes
    assert codes[1] in {"image_decoder_busy", "image_decode_timeout"}, codes
    assert took < 3.0


@pytest.mark.integration
def test_six_hostile_photos_at_once_leave_readyz_and_other_decisions_answering(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'guard.db'}"
    migrate(url)
    settings = Settings(
        database_url=url,
        spool_dir=str(tmp_path / "spool"),
        ocr="off",
        max_image_scans=10**6,  # let them in: the deadline and the pool are what is tested here
        image_decode_timeout_s=2.0,
    )
    photo = {"data": base64.b64encode(HOSTILE).decode()}
    with serve(create_app(settings, scorer=FakeScorer())) as base:

        async def main() -> tuple[list[httpx2.Response], list[float], float, str]:
            async with httpx2.AsyncClient(base_url=base, timeout=30) as client:
                attacks = [
                    asyncio.create_task(
                        client.post("/v1/guard", json={"question": "看图", "reply": "好的", "image": photo})
                    )
                    for _ in range(6)
                ]
                await asyncio.sleep(0.3)  # they are decoding now
                ready: list[float] = []
                while not all(a.done() for a in attacks):
                    t = time.perf_counter()
                    assert (await client.get("/readyz")).status_code == 200
                    ready.append(time.perf_counter() - t)
                    await asyncio.sleep(0.1)
                t = time.perf_counter()
                other = await client.post(
                    "/v1/guard", json={"question": "口袋开线怎么办", "reply": "我们会处理"}
                )
                return (
                    [a.result() for a in attacks],
                    ready,
                    time.perf_counter() - t,
                    other.json()["decision_id"],
                )

        t = time.perf_counter()
        answers, ready, other_s, other_id = asyncio.run(main())
        took = time.perf_counter() - t
        codes = sorted(r.json()["error"]["code"] for r in answers)
        assert set(codes) <= {"image_decode_timeout", "image_decoder_busy"}, codes
        assert codes.count("image_decode_timeout") >= 2, codes
        assert {r.status_code for r in answers} <= {422, 503}
        assert took < 8, f"the six took {took:.1f}s (deadline 2 s)"
        assert ready and max(ready) < 1.0, f"/readyz took up to {max(ready):.2f}s"
        assert other_s < 1.0
        deadline = time.monotonic() + 10
        while httpx2.get(f"{base}/v1/decisions/{other_id}", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "the other decision never reached SQL"
            time.sleep(0.05)
        print(f"six hostile photos: {took:.2f}s, /readyz max {max(ready) * 1000:.0f} ms over {len(ready)}")

    with serve(
        create_app(Settings(database_url=url, spool_dir=None, ocr="off"), scorer=FakeScorer())
    ) as base:
        t = time.perf_counter()
        refused = [
            httpx2.post(
                base + "/v1/guard", json={"question": "看图", "reply": "好的", "image": photo}, timeout=10
            )
            for _ in range(6)
        ]
        assert {r.json()["error"]["code"] for r in refused} == {"image_too_many_scans"}
        assert time.perf_counter() - t < 3.0, "with the default limits they are refused at once"
