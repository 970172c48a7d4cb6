from __future__ import annotations

import dataclasses
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import pytest

from guard.settings import Settings, SettingsError, choices, documented_variables

ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.database_url == "sqlite:///var/guard.db"
    assert s.redis_url is None and s.scorer == "bundled"
    assert s.max_body_bytes == 10 * 1024 * 1024 and s.max_image_pixels == 40_000_000


def test_values_are_parsed_by_type() -> None:
    s = Settings.from_env(
        {
            "GUARD_REDIS_URL": "redis://x:6379/1",
            "GUARD_MAX_BODY_BYTES": "1024",
            "GUARD_SCORE_TIMEOUT_S": "2.5",
        }
    )
    assert (s.redis_url, s.max_body_bytes, s.score_timeout_s) == ("redis://x:6379/1", 1024, 2.5)
    assert Settings.from_env({"GUARD_REDIS_URL": ""}).redis_url is None


@pytest.mark.parametrize(
    ("var", "value"), [("GUARD_MAX_BODY_BYTES", "ten"), ("GUARD_PORT", "-1"), ("GUARD_SCORE_TIMEOUT_S", "0")]
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})


def test_zero_means_no_wait_only_where_a_wait_is_optional() -> None:
    s = Settings.from_env({"GUARD_SCORE_BATCH_WAIT_MS": "0", "GUARD_LOG_LINGER_MS": "0"})
    assert (s.score_batch_wait_ms, s.log_linger_ms) == (0.0, 0.0)
    with pytest.raises(SettingsError, match="GUARD_SQL_TIMEOUT_S"):
        Settings.from_env({"GUARD_SQL_TIMEOUT_S": "0"})


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


def test_every_variable_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name, _type, _default in documented_variables() if name not in doc]
    assert missing == []


FIXED = [
    (f.name, allowed)
    for f in fields(Settings)
    if (allowed := choices(get_type_hints(Settings)[f.name])) is not None
]


def test_the_settings_with_fixed_values_are_known() -> None:
    assert {name for name, _ in FIXED} == {
        "scorer",
        "auth",
        "reranker_template",
        "remote_query",
        "remote_api",
        "remote_instruction",
        "spool_on_error",
    }


@pytest.mark.parametrize(("name", "allowed"), FIXED)
def test_a_fixed_value_setting_takes_each_of_its_values_and_refuses_others(
    name: str, allowed: tuple[str, ...]
) -> None:
    var = "GUARD_" + name.upper()
    for value in allowed:
        assert getattr(Settings.from_env({var: value}), name) == value
    for wrong in ("", "nope", allowed[0].upper() + " "):
        with pytest.raises(SettingsError, match=var):
            Settings.from_env({var: wrong})


def test_a_rule_across_fields_holds_for_every_settings_object() -> None:
    with pytest.raises(SettingsError, match="GUARD_WEBHOOK_SECRET"):
        Settings(webhook_url="http://127.0.0.1:9/hook")
    with pytest.raises(SettingsError, match="GUARD_WEBHOOK_SECRET"):
        Settings.from_env({"GUARD_WEBHOOK_URL": "http://127.0.0.1:9/hook"})
    ok = Settings(webhook_url="http://127.0.0.1:9/hook", webhook_secret="s")
    with pytest.raises(SettingsError, match="GUARD_WEBHOOK_SECRET"):
        dataclasses.replace(ok, webhook_secret=None)


@pytest.mark.parametrize(("name", "allowed"), FIXED)
def test_validate_refuses_a_fixed_value_passed_in_code(name: str, allowed: tuple[str, ...]) -> None:
    Settings(**{name: allowed[-1]}).validate()
    bad = Settings(**{name: "nope"})  # what the type checker would refuse, built anyway
    with pytest.raises(SettingsError, match="GUARD_" + name.upper()):
        bad.validate()
