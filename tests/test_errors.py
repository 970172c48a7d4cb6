"""The error tree: every class has its place in the drawn tree and a status of its kind, and the
one handler writes any of them as the documented JSON."""

from __future__ import annotations

import asyncio
import inspect
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guard import errors, keys
from guard.errors import GuardError, ImageError, RequestError, ServiceError
from guard.responses import guard_error
from guard.scoring.base import ScorerError


def error_classes() -> list[type[GuardError]]:
    found = {c for m in (errors, keys) for _, c in inspect.getmembers(m, inspect.isclass)}
    return sorted((c for c in found if issubclass(c, GuardError)), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_is_drawn_in_the_tree_and_has_a_status_of_its_kind(cls: type[GuardError]) -> None:
    assert f"── {cls.__name__} " in (errors.__doc__ or "") or cls is GuardError
    if issubclass(cls, RequestError) and cls is not ImageError:
        assert 400 <= cls.status < 500
    if issubclass(cls, ServiceError):
        assert 500 <= cls.status < 600


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("image_too_large", 413),
        ("image_too_many_pixels", 413),
        ("unsupported_image_format", 415),
        ("not_an_image", 422),
        ("invalid_base64", 422),
        ("truncated_image", 422),
        ("empty_image", 422),
        ("image_url_not_allowed", 422),
        ("image_fetch_failed", 422),
    ],
)
def test_an_image_errors_status_follows_its_code(code: errors.ImageErrorCode, status: int) -> None:
    assert ImageError(code, "m").status == status
    assert errors.FetchError(code, "m").status == status


@given(
    cls=st.sampled_from(
        [
            c
            for c in error_classes()
            if c not in (errors.ConfigError, errors.ScorerError, ImageError, errors.FetchError)
        ]
    ).filter(lambda c: c is not keys.KeysUnavailable),
    code=st.from_regex(r"[a-z_]{1,30}", fullmatch=True),
    message=st.text(max_size=200),
)
def test_the_handler_writes_the_documented_json(cls: type[GuardError], code: str, message: str) -> None:
    response = asyncio.run(guard_error(None, cls(code, message)))  # type: ignore[arg-type]
    assert response.status_code == cls.status
    assert json.loads(bytes(response.body)) == {"error": {"code": code, "message": message}}


def test_a_scorer_error_is_in_the_tree_as_the_scorer_being_unavailable() -> None:
    exc = errors.ScorerError("the model is missing")
    assert isinstance(exc, errors.Unavailable) and isinstance(exc, GuardError)
    assert (exc.status, exc.code, exc.message) == (503, "scorer_unavailable", "the model is missing")
    assert ScorerError is errors.ScorerError  # the scorers' own import path names the same class
