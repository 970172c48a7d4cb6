"""The score cache: Redis when GUARD_REDIS_URL is set, an in-process LRU when not.

Keys are hashes, never raw user text; the scorer's name and version and the instruction
are part of the key, so a new model, a new calibration or an edited instruction never
serves a stale score. Values are validated when read: anything malformed is a miss.
A dead or hung Redis costs at most its short socket timeout, then is skipped for a
moment (a small circuit breaker) and probed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guard.metrics import Metrics

log = logging.getLogger(__name__)

KEY_PREFIX = "rg:score:"
_KNOWN_INPUTS = frozenset({"question", "reply", "image_text", "image"})


@dataclass(frozen=True, slots=True)
class CachedScore:
    score: float
    inputs_used: tuple[str, ...]
    instruction_used: bool = False


def score_key(
    *,
    scorer: str,
    version: str,
    instruction: str,
    image_sha256: str | None,
    question: str,
    reply: str,
    image_text: str | None = None,
) -> str:
    """The cache key for one scored pair: a SHA-256 over every input that can change the score.

    ``image_text`` (the photo's text, when it was read in time) is part of it: a score computed
    without the text is never served for a request that has it, nor the other way round.
    """
    h = hashlib.sha256()
    parts = (scorer, version, instruction, image_sha256 or "-", question, reply)
    for part in parts if image_text is None else (*parts, "image_text", image_text):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return KEY_PREFIX + h.hexdigest()


def encode(value: CachedScore) -> bytes:
    return json.dumps({"s": value.score, "i": list(value.inputs_used), "u": value.instruction_used}).encode()


def decode(raw: bytes | str | None) -> CachedScore | None:
    """The cached value, or None when it is missing or malformed (an entry that does not say whether
    the instruction was used, written before that was recorded, is scored again)."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        score, inputs, instruction_used = doc["s"], doc["i"], doc["u"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(score, float | int) or isinstance(score, bool):
        return None
    if not math.isfinite(score) or not 0.0 <= score <= 1.0 or not isinstance(instruction_used, bool):
        return None
    if not isinstance(inputs, list) or not all(isinstance(i, str) and i in _KNOWN_INPUTS for i in inputs):
        return None
    return CachedScore(float(score), tuple(inputs), instruction_used)


MAX_TEXT_BYTES = 64 * 1024


def decode_text(raw: bytes | str | None) -> str | None:
    """A cached photo text, or None when it is missing, too long or not UTF-8."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_TEXT_BYTES:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


class ScoreCache(Protocol):
    name: str

    async def get(self, key: str) -> CachedScore | None: ...

    async def set(self, key: str, value: CachedScore) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class MemoryCache:
    """An in-process LRU with a TTL; the default when no Redis URL is configured."""

    name = "memory"

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 7 * 24 * 3600) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s

    def raw(self, key: str) -> bytes | None:
        """The stored bytes of ``key``, or None when missing or expired."""
        item = self._data.get(key)
        if item is None:
            return None
        expires, raw = item
        if expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return raw

    def put_raw(self, key: str, raw: bytes) -> None:
        self._data[key] = (time.monotonic() + self._ttl, raw)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def get(self, key: str) -> CachedScore | None:
        return decode(self.raw(key))

    async def set(self, key: str, value: CachedScore) -> None:
        self.put_raw(key, encode(value))

    async def get_text(self, key: str) -> str | None:
        """A cached photo text (guard/ocr.py), or None."""
        return decode_text(self.raw(key))

    async def set_text(self, key: str, text: str) -> None:
        self.put_raw(key, text.encode("utf-8", "surrogatepass"))

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Redis with short timeouts; errors are logged and count as misses, never as failures.

    With ``local_size`` > 0 an in-process LRU sits in front of Redis: a value read from or written
    to Redis is kept there too, so a repeated key skips the round trip. That is safe because a key
    is a hash of everything that can change its value, so a value never goes stale; it only expires.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: int,
        timeout_s: float = 0.05,
        cooldown_s: float = 1.0,
        local_size: int = 0,
    ) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._ttl = ttl_s
        self._cooldown = cooldown_s
        self._down_until = 0.0
        self._local = MemoryCache(local_size, ttl_s) if local_size > 0 else None
        self.errors = 0
        """Redis calls that failed (each one skips Redis for ``cooldown_s``)."""

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    @property
    def skipping(self) -> bool:
        """Redis is being skipped after a failure (the cache's breaker is open)."""
        return not self._available()

    def register_metrics(self, metrics: Metrics) -> None:
        metrics.gauge_from(
            "guard_cache_breaker_open",
            "Whether Redis is being skipped after a failed call (1; scores are then misses) or not (0).",
            lambda: float(self.skipping),
            workers="livemax",
        )
        metrics.counter_from(
            "guard_cache_errors_total", "Redis calls that failed or timed out.", lambda: float(self.errors)
        )

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors += 1
        self._down_until = time.monotonic() + self._cooldown
        log.warning("redis %s failed (%s); skipping the cache for %.1fs", op, exc, self._cooldown)

    async def _get(self, key: str) -> bytes | None:
        if self._local is not None and (held := self._local.raw(key)) is not None:
            return held
        if not self._available():
            return None
        try:
            raw: bytes | str | None = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return None
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if raw is not None and self._local is not None:
            self._local.put_raw(key, raw)
        return raw

    async def _set(self, key: str, raw: bytes) -> None:
        if self._local is not None:
            self._local.put_raw(key, raw)
        if not self._available():
            return
        try:
            await self._redis.set(key, raw, ex=self._ttl)
        except (RedisError, OSError) as exc:
            self._failed("set", exc)

    async def get(self, key: str) -> CachedScore | None:
        return decode(await self._get(key))

    async def set(self, key: str, value: CachedScore) -> None:
        await self._set(key, encode(value))

    async def get_text(self, key: str) -> str | None:
        """A cached photo text (guard/ocr.py), or None; Redis errors are misses."""
        return decode_text(await self._get(key))

    async def set_text(self, key: str, text: str) -> None:
        await self._set(key, text.encode("utf-8", "surrogatepass"))

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        if self._local is not None:
            await self._local.close()
        await self._redis.aclose()
