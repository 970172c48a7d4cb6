"""GUARD_IMAGE_RETENTION_DAYS: a registered photo past it is refused (410 image_expired) and the
sweep deletes it (then 404), except the photo of a case still pending in the queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from guard.settings import Settings
from guard.tables import utcnow
from tests.apptools import b64, flush, guard_client, png_bytes, runtime_of


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


def backdate_images(client: object, days: float) -> None:
    rt = runtime_of(client)  # type: ignore[arg-type]
    with rt.store.session() as s:
        s.execute(sa.text("UPDATE images SET created_at = :t"), {"t": utcnow() - timedelta(days=days)})


def sweep(client: object) -> int:
    portal = client.portal  # type: ignore[attr-defined]
    return int(portal.call(runtime_of(client).retention.sweep))  # type: ignore[arg-type]


def test_the_default_retention_is_30_days() -> None:
    assert Settings().image_retention_days == 30.0
    assert Settings.from_env({"GUARD_IMAGE_RETENTION_DAYS": "0"}).image_retention_days == 0


def test_an_expired_photo_is_refused_then_deleted_and_can_be_registered_again(db_url: str) -> None:
    with guard_client(db_url, image_retention_days=7) as client:
        photo = png_bytes(size=(40, 30), color="blue")
        image_id = client.post("/v1/images", json={"image": {"data": b64(photo)}}).json()["image_id"]
        check = {"question": "口袋开线怎么办？", "reply": "reply [score=0.8]", "image": {"id": image_id}}
        assert client.post("/v1/guard", json=check).status_code == 200
        assert sweep(client) == 0, "a fresh photo is kept"

        backdate_images(client, 8)
        r = client.post("/v1/guard", json=check)
        assert r.status_code == 410, r.text
        assert r.json()["error"]["code"] == "image_expired"
        assert "GUARD_IMAGE_RETENTION_DAYS" in r.json()["error"]["message"]

        assert sweep(client) == 1
        r = client.post("/v1/guard", json=check)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_image"
        assert "kept 7 days" in r.json()["error"]["message"]

        # Registered again: a new retention period.
        assert client.post("/v1/images", json={"image": {"data": b64(photo)}}).status_code == 201
        assert client.post("/v1/guard", json=check).status_code == 200


def test_registering_a_photo_again_restarts_its_retention(db_url: str) -> None:
    with guard_client(db_url, image_retention_days=7) as client:
        photo = b64(png_bytes(color="green"))
        image_id = client.post("/v1/images", json={"image": {"data": photo}}).json()["image_id"]
        backdate_images(client, 6)
        client.post("/v1/images", json={"image": {"data": photo}})
        found = runtime_of(client).store.get_image_stored_at(image_id)
        assert found is not None and utcnow() - found[1] < timedelta(minutes=1)


def test_the_sweep_keeps_the_photo_of_a_pending_case(db_url: str) -> None:
    with guard_client(db_url, image_retention_days=7) as client:
        held = png_bytes(color="red")
        sent = png_bytes(color="yellow")
        r = client.post(
            "/v1/guard",
            json={"question": "口袋开线怎么办？", "reply": "off [score=0.1]", "image": {"data": b64(held)}},
        )
        assert r.json()["action"] == "escalate"
        client.post("/v1/images", json={"image": {"data": b64(sent)}})
        flush(client)
        backdate_images(client, 30)
        assert sweep(client) == 1, "only the registered photo of no pending case is deleted"
        with runtime_of(client).store.session() as s:
            assert s.execute(sa.text("SELECT count(*) FROM images")).scalar_one() == 1


def test_zero_keeps_photos_for_ever(sqlite_url: str) -> None:
    with guard_client(sqlite_url, image_retention_days=0) as client:
        image_id = client.post("/v1/images", json={"image": {"data": b64(png_bytes())}}).json()["image_id"]
        backdate_images(client, 3650)
        check = {"question": "q", "reply": "reply [score=0.8]", "image": {"id": image_id}}
        assert client.post("/v1/guard", json=check).status_code == 200


def test_the_sweep_finds_expired_photos_by_an_index(db_url: str) -> None:
    from guard.store import Store, migrate

    migrate(db_url)
    store = Store.open(db_url)
    try:
        indexes = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("images")}
    finally:
        store.close()
    assert "ix_images_created_at" in indexes
