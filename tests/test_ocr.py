"""Text in the photo: the OCR service (budget, cache, shared reads), the real reader, and the API."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

import guard.ocr
from guard.cache import MemoryCache, RedisCache, score_key
from guard.images import DecodedImage, decode_image
from guard.ocr import OcrService, load_reader, ocr_key
from tests.apptools import b64, flush, guard_client, png_bytes, queries_of, runtime_of
from tests.fakes import FakeScorer

SCREENSHOT = Path(__file__).parent / "data" / "scr_02.png"


class FakeReader:
    """Returns ``text``; waits for ``release`` first when ``hold`` is set; counts its reads."""

    name = "fake-ocr-1"

    def __init__(self, text: str = "SHOPLY ORDER 58213 zipper is broken", hold: bool = False) -> None:
        self.text = text
        self.reads = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail = False

    def read(self, image: Image.Image) -> str:
        self.reads += 1
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("ocr exploded")
        return self.text


def image(color: str = "red") -> DecodedImage:
    return decode_image(png_bytes(color=color), max_pixels=10_000_000, max_bytes=10_000_000)


def test_reads_once_then_serves_from_the_cache() -> None:
    reader = FakeReader()

    async def main() -> None:
        ocr = OcrService(reader, MemoryCache(), budget_s=5.0)
        photo = image()
        ocr.start(photo)
        first, second = await asyncio.gather(ocr.text(photo), ocr.text(photo))  # one read, shared
        assert first.text == reader.text and first.status == "read"
        assert second.text == reader.text
        again = await ocr.text(photo)
        assert again.status == "cached" and again.text == reader.text
        await ocr.close()

    asyncio.run(main())
    assert reader.reads == 1


def test_a_reading_past_its_budget_is_reported_and_still_cached_for_later() -> None:
    reader = FakeReader(hold=True)

    async def main() -> None:
        ocr = OcrService(reader, MemoryCache(), budget_s=0.1)
        photo = image()
        late = await ocr.text(photo)
        assert late.text is None and late.status == "timeout"
        reader.release.set()
        for _ in range(100):  # the reading goes on in the background
            await asyncio.sleep(0.02)
            if not ocr._inflight:
                break
        later = await ocr.text(photo)
        assert later.status == "cached" and later.text == reader.text
        await ocr.close()

    asyncio.run(main())
    assert reader.reads == 1


def test_reader_errors_empty_photos_and_a_full_queue() -> None:
    async def main() -> None:
        failing = FakeReader()
        failing.fail = True
        ocr = OcrService(failing, MemoryCache(), budget_s=5.0)
        assert (await ocr.text(image())).status == "error"
        await ocr.close()

        blank = OcrService(FakeReader(text="  "), MemoryCache(), budget_s=5.0)
        assert (await blank.text(image())).status == "empty"
        await blank.close()

        held = FakeReader(hold=True)
        busy = OcrService(held, MemoryCache(), budget_s=5.0, max_pending=1)
        busy.start(image("red"))
        assert (await busy.text(image("blue"))).status == "busy"
        held.release.set()
        await busy.close()

    asyncio.run(main())


def test_the_score_key_includes_the_photo_text_only_when_there_is_some() -> None:
    base = {
        "scorer": "s",
        "version": "1",
        "instruction": "i",
        "image_sha256": "ab",
        "question": "q",
        "reply": "r",
    }
    plain = score_key(**base)
    assert score_key(**base, image_text=None) == plain
    assert score_key(**base, image_text="58213") != plain
    assert score_key(**base, image_text="58213") != score_key(**base, image_text="58214")


def test_the_real_reader_reads_a_screenshot() -> None:
    reader = load_reader(2)
    assert "rapidocr" in reader.name
    text = reader.read(Image.open(SCREENSHOT).convert("RGB"))
    assert "58213" in text and "42.78" in text
    assert reader.read(Image.new("RGB", (64, 48), "white")) == ""
    assert reader.read(Image.new("RGB", (300, 20), "white")) == ""  # too small to read: skipped


@pytest.mark.integration
def test_photo_text_in_redis(redis_url: str) -> None:
    async def main() -> None:
        cache = RedisCache(redis_url, ttl_s=60, timeout_s=1.0)
        key = ocr_key("reader", "f" * 64)
        assert await cache.get_text(key) is None
        await cache.set_text(key, "已签收 58213")
        assert await cache.get_text(key) == "已签收 58213"
        await cache._redis.set(key, b"\xff\xfe not utf-8")
        assert await cache.get_text(key) is None
        await cache.close()

    asyncio.run(main())


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> FakeReader:
    fake = FakeReader(text="Tracking: the zipper is broken on order 58213")
    monkeypatch.setattr(guard.ocr, "load_reader", lambda threads: fake)
    return fake


@pytest.fixture
def client(sqlite_url: str, reader: FakeReader) -> Iterator[TestClient]:
    with guard_client(sqlite_url, FakeScorer(), ocr="on", ocr_budget_s=0.5) as c:
        yield c


def test_a_registered_photo_is_read_on_arrival_and_its_text_used(
    client: TestClient, reader: FakeReader
) -> None:
    registered = client.post("/v1/images", json={"image": {"data": b64(png_bytes())}})
    assert registered.status_code == 201
    for _ in range(100):
        if reader.reads:
            break
        threading.Event().wait(0.01)
    assert reader.reads == 1  # started by POST /v1/images, before any check
    res = client.post(
        "/v1/guard",
        json={
            "question": "Look at this, what now?",
            "reply": "Sorry about that [score=0.55]",
            "image": {"id": registered.json()["image_id"]},
        },
    )
    body = res.json()
    assert res.status_code == 200, body
    assert body["image_text_status"] in {"read", "cached"}
    assert "image_text" in body["inputs_used"]
    assert body["action"] == "follow_up" and body["reason"] is None
    assert body["issue_phrase"] == "broken zip"  # from the photo's text: the question names nothing
    assert reader.reads == 1
    flush(client)
    row = runtime_of(client).store.get_decision(body["decision_id"])
    assert row is not None and row.row.image_text == "Tracking: the zipper is broken on order 58213"


def test_supervisors_see_the_text_read_from_the_photo(client: TestClient) -> None:
    from tests.apptools import make_users, signed_in

    held = client.post(
        "/v1/guard",
        json={
            "question": "what now?",
            "reply": "Newsletter! [score=0.1]",
            "image": {"data": b64(png_bytes())},
        },
    ).json()
    flush(client)
    make_users(queries_of(client))
    signed_in(client, "sup")
    page = client.get(f"/admin/cases/{held['escalation_id']}")
    assert page.status_code == 200
    assert "Text in the photo" in page.text and "the zipper is broken on order 58213" in page.text


def test_a_photo_not_read_in_time_is_scored_without_its_text(client: TestClient, reader: FakeReader) -> None:
    reader.release.clear()
    res = client.post(
        "/v1/guard",
        json={
            "question": "My pocket seam came open, what now?",
            "reply": "Sorry [score=0.9]",
            "image": {"data": b64(png_bytes())},
        },
    )
    reader.release.set()
    body = res.json()
    assert res.status_code == 200, body
    assert body["image_text_status"] == "timeout"
    assert body["reason"] == "image_text_timeout" and body["degraded"] is False
    assert body["inputs_used"] == ["question", "reply"]
    assert body["action"] == "send" and body["uncertain"] is False
    flush(client)
    row = runtime_of(client).store.get_decision(body["decision_id"])
    assert row is not None and row.row.reason == "image_text_timeout"


def test_a_vague_question_whose_photo_was_not_read_in_time_is_uncertain(
    client: TestClient, reader: FakeReader
) -> None:
    reader.release.clear()
    res = client.post(
        "/v1/guard",
        json={"question": "what now?", "reply": "Sorry [score=0.9]", "image": {"data": b64(png_bytes())}},
    )
    reader.release.set()
    body = res.json()
    assert body["image_text_status"] == "timeout" and body["inputs_used"] == ["question", "reply"]
    assert (body["action"], body["uncertain"], body["uncertain_reason"]) == (
        "review",
        True,
        "issue_not_stated",
    )
    assert body["reason"] == "issue_not_stated", "why the action was not the band's"


def test_ocr_off_reads_nothing(sqlite_url: str, reader: FakeReader) -> None:
    with guard_client(sqlite_url, FakeScorer(), ocr="off") as c:
        body = c.post(
            "/v1/guard",
            json={"question": "The zip broke", "reply": "r", "image": {"data": b64(png_bytes())}},
        ).json()
    assert body["image_text_status"] == "off" and reader.reads == 0
    assert body["reason"] is None


def test_a_bad_ocr_setting_fails_at_start(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="GUARD_OCR"), guard_client(sqlite_url, FakeScorer(), ocr="maybe"):
        pass
