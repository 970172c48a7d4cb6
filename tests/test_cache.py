"""The score cache: keys, validation on read, the in-process LRU and real Redis."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
import redis

from guard.cache import KEY_PREFIX, CachedScore, MemoryCache, RedisCache, decode, encode, score_key

KEY_ARGS = {
    "scorer": "bundled",
    "version": "v1",
    "instruction": "Judge...",
    "image_sha256": None,
    "question": "口袋开线怎么办？",
    "reply": "给您补寄",
}


def test_key_is_a_hash_without_user_text() -> None:
    key = score_key(**KEY_ARGS)  # type: ignore[arg-type]
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 64
    assert "口袋" not in key and "补寄" not in key


@pytest.mark.parametrize("field", ["scorer", "version", "instruction", "image_sha256", "question", "reply"])
def test_every_input_changes_the_key(field: str) -> None:
    changed = KEY_ARGS | {field: "something else"}
    assert score_key(**changed) != score_key(**KEY_ARGS)  # type: ignore[arg-type]


def test_key_parts_cannot_run_into_each_other() -> None:
    a = score_key(**(KEY_ARGS | {"question": "ab", "reply": "c"}))  # type: ignore[arg-type]
    b = score_key(**(KEY_ARGS | {"question": "a", "reply": "bc"}))  # type: ignore[arg-type]
    assert a != b


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        b'{"s": "0.5", "i": []}',
        b'{"s": 1.5, "i": []}',
        b'{"s": NaN, "i": []}',
        b'{"s": true, "i": []}',
        b'{"s": 0.5, "i": ["question", "password"]}',
        b'{"s": 0.5, "i": "question"}',
        b'{"s": 0.5, "i": ["reply"]}',  # written before instruction_used was: scored again
        b'{"s": 0.5, "i": ["reply"], "u": "yes"}',
        b"[1, 2]",
    ],
)
def test_malformed_values_are_misses(raw: bytes) -> None:
    assert decode(raw) is None


def test_round_trip() -> None:
    for used in (False, True):
        value = CachedScore(0.73, ("question", "reply"), instruction_used=used)
        assert decode(encode(value)) == value


def test_memory_cache_is_an_lru_with_a_ttl() -> None:
    async def run() -> None:
        cache = MemoryCache(max_entries=2, ttl_s=60)
        await cache.set("a", CachedScore(0.1, ()))
        await cache.set("b", CachedScore(0.2, ()))
        assert await cache.get("a") is not None  # a is now the most recent
        await cache.set("c", CachedScore(0.3, ()))
        assert await cache.get("b") is None and await cache.get("a") is not None
        expiring = MemoryCache(ttl_s=0.01)
        await expiring.set("k", CachedScore(0.5, ()))
        await asyncio.sleep(0.02)
        assert await expiring.get("k") is None

    asyncio.run(run())


@pytest.mark.integration
def test_redis_cache_round_trip_with_ttl_and_validation(redis_url: str) -> None:
    async def run() -> None:
        cache = RedisCache(redis_url, ttl_s=300, timeout_s=1.0)
        key = score_key(**KEY_ARGS)  # type: ignore[arg-type]
        await cache.set(key, CachedScore(0.66, ("question", "reply")))
        assert await cache.get(key) == CachedScore(0.66, ("question", "reply"))
        raw = redis.Redis.from_url(redis_url)
        assert 0 < raw.ttl(key) <= 300
        raw.set(key, b'{"s": 7, "i": []}')
        assert await cache.get(key) is None, "an invalid value in Redis is a miss"
        raw.close()
        await cache.close()

    asyncio.run(run())


@pytest.mark.integration
def test_the_in_process_layer_in_front_of_redis_skips_the_round_trip(redis_url: str) -> None:
    async def run() -> None:
        cache = RedisCache(redis_url, ttl_s=300, timeout_s=1.0, local_size=2)
        raw = redis.Redis.from_url(redis_url)
        keys = [score_key(**{**KEY_ARGS, "reply": f"r{i}"}) for i in range(3)]  # type: ignore[arg-type]
        await cache.set(keys[0], CachedScore(0.66, ("question",)))
        assert raw.get(keys[0]) is not None, "written through to Redis, for the other replicas"
        raw.delete(keys[0])
        assert await cache.get(keys[0]) == CachedScore(0.66, ("question",)), "served in process"
        raw.set(keys[1], b'{"s": 0.2, "i": ["reply"], "u": false}')  # another replica's score
        assert await cache.get(keys[1]) == CachedScore(0.2, ("reply",))
        raw.delete(keys[1])
        assert await cache.get(keys[1]) == CachedScore(0.2, ("reply",)), "a Redis hit is kept in process"
        raw.set(keys[2], b'{"s": 0.9, "i": [], "u": false}')
        assert await cache.get(keys[2]) == CachedScore(0.9, ())  # the LRU holds 2: keys[0] goes
        assert await cache.get(keys[0]) is None
        raw.close()
        await cache.close()

    asyncio.run(run())


def test_dead_redis_costs_milliseconds_and_is_skipped_for_a_while() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> None:
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_s=60, timeout_s=0.05, cooldown_s=5)
        t = time.perf_counter()
        assert await cache.get("k") is None
        await cache.set("k", CachedScore(0.5, ()))
        assert await cache.get("k") is None
        assert time.perf_counter() - t < 0.5
        assert await cache.ping() is False
        await cache.close()

    asyncio.run(run())


def test_hung_redis_is_cut_off_by_the_socket_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    port = listener.getsockname()[1]

    async def run() -> None:
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_s=60, timeout_s=0.05)
        t = time.perf_counter()
        assert await cache.get("k") is None
        assert time.perf_counter() - t < 0.5
        await cache.close()

    try:
        asyncio.run(run())
    finally:
        listener.close()
