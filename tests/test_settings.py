from __future__ import annotations

from pathlib import Path

import pytest

from guard.settings import Settings, SettingsError, documented_variables

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
