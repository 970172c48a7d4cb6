"""One frozen Settings object, built once from GUARD_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


class SettingsError(ValueError):
    """A GUARD_* variable has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/guard.db"
    """SQLAlchemy URL of the decision log (SQLite file by default; PostgreSQL in production)."""
    redis_url: str | None = None
    """Redis URL for the score cache; unset means an in-process LRU."""
    scorer: str = "bundled"
    """Scorer backend; "bundled" (the default) is the only one so far."""
    scorer_threads: int = 2
    """CPU threads the scorer may use."""
    score_timeout_s: float = 10.0
    """Deadline for one scoring call; past it the policy's on_error action applies."""
    cache_ttl_s: int = 7 * 24 * 3600
    """How long a cached score lives."""
    cache_size: int = 10_000
    """Entries kept by the in-process LRU (when no Redis URL is set)."""
    redis_timeout_s: float = 0.05
    """Socket timeout for Redis calls: a dead or hung Redis costs at most about this much."""
    max_body_bytes: int = 10 * 1024 * 1024
    """Largest accepted request body, enforced while reading."""
    max_image_pixels: int = 40_000_000
    """Largest accepted image (width x height), checked before decoding pixels."""
    max_question_chars: int = 4_000
    max_reply_chars: int = 8_000
    max_candidates: int = 16
    host: str = "127.0.0.1"
    port: int = 8000
    followup_response_time_zh: str = "2小时"
    """The response time promised in follow-ups (zh)."""
    followup_response_time_en: str = "2 hours"
    """The response time promised in follow-ups (en)."""
    log_queue_size: int = 10_000
    """Decisions waiting to be written to SQL; past it, requests wait for the writer (nothing is dropped)."""
    log_batch_size: int = 200
    """Decisions written to SQL per transaction."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from GUARD_<FIELD> variables (e.g. GUARD_DATABASE_URL), then apply overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("GUARD_" + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, str(f.type), raw)
        values.update(overrides)
        return cls(**values)


def _parse(name: str, type_name: str, raw: str) -> Any:
    var = "GUARD_" + name.upper()
    if "None" in type_name and raw.strip() == "":
        return None
    try:
        if type_name.startswith("int"):
            value: Any = int(raw)
            if value < 0:
                raise ValueError
            return value
        if type_name.startswith("float"):
            value = float(raw)
            if not value > 0:
                raise ValueError
            return value
    except ValueError:
        raise SettingsError(f"{var}={raw!r} is not a valid non-negative number") from None
    return raw


def documented_variables() -> list[tuple[str, str, Any]]:
    """(variable, type, default) for every setting; a test keeps docs/configuration.md whole with it."""
    return [("GUARD_" + f.name.upper(), str(f.type), f.default) for f in fields(Settings)]


__all__ = ["Settings", "SettingsError", "documented_variables"]
