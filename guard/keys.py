"""API keys of chatbot clients: created by ``guard keys create``, stored only as hashes.

A key looks like ``rg_<id>_<secret>``: the id finds the row, the SHA-256 of the whole key is
compared in constant time with the stored one. The secret is 256 random bits, so a plain hash
is enough (a slow password hash would only add latency to every request).

Every key is bound to a channel, and so to that channel's policy. ``guard.key_middleware`` checks
the key on every ``/v1/`` route and puts the channel in ``scope["state"]["guard_channel"]``.

The default (``GUARD_AUTH=auto``) keeps the first run easy without opening a non-loopback
address: with no key in the database, a guard that listens on loopback serves loopback clients
without a key; a guard that listens anywhere else creates a key for the ``default`` channel on
first start and logs it once. ``GUARD_AUTH=required`` always asks for a key.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from typing import get_args

from starlette.types import Scope

from guard.errors import ConfigError, Forbidden, Unavailable
from guard.settings import AuthMode, Settings
from guard.store import Store, bounded

log = logging.getLogger(__name__)

AUTH_MODES: tuple[str, ...] = get_args(AuthMode)
_KEY = re.compile(r"rg_([0-9a-f]{16})_[A-Za-z0-9_-]{20,100}")
PROTECTED_PREFIX = "/v1/"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, full key) of a fresh key."""
    key_id = secrets.token_hex(8)
    return key_id, f"rg_{key_id}_{secrets.token_urlsafe(32)}"


def create_key(store: Store, channel: str, name: str | None = None) -> str:
    """Store a new key for ``channel`` and return it: the only time the full key is seen."""
    if not channel or len(channel) > 100:
        raise ValueError("the channel must be 1 to 100 characters")
    key_id, key = new_key()
    store.create_api_key(key_id, channel, hash_key(key), name)
    return key


@functools.lru_cache(maxsize=1024)
def is_loopback_host(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_mode(settings: Settings) -> None:
    if settings.auth not in AUTH_MODES:
        raise ConfigError(f"GUARD_AUTH={settings.auth!r} is not one of {', '.join(AUTH_MODES)}")


def ensure_first_key(store: Store, settings: Settings) -> str | None:
    """On a first start that listens beyond loopback with no key yet: create one and return it."""
    check_mode(settings)
    if settings.auth != "auto" or is_loopback_host(settings.host) or store.count_api_keys() > 0:
        return None
    return create_key(store, "default", name="created on first start")


class KeyRing:
    """Looks keys up in SQL, remembering answers for a few seconds (a revoked key dies within ``ttl_s``)."""

    def __init__(self, store: Store, settings: Settings, ttl_s: float = 5.0) -> None:
        check_mode(settings)
        self._store = store
        self._settings = settings
        self._ttl = ttl_s
        self._known: dict[str, tuple[float, str | None]] = {}
        self._any: tuple[float, bool] | None = None

    async def channel_of(self, key: str) -> str | None:
        """The channel ``key`` is bound to, or None when it is not an active key.

        A fresh answer is served from memory without leaving the event loop. When SQL fails or
        does not answer within GUARD_SQL_TIMEOUT_S, the last answer for the key stands; with none,
        KeysUnavailable is raised (a 503, never a guess).
        """
        match = _KEY.fullmatch(key)
        if match is None:
            return None
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._known.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            found = await bounded(self._settings.sql_timeout_s, self._store.api_key, match.group(1))
        except Exception as exc:
            if hit is None:
                raise KeysUnavailable from exc
            log.warning("API keys: SQL did not answer; the last answer for key %s stands", match.group(1))
            self._known[digest] = (now + self._ttl, hit[1])
            return hit[1]
        channel = found[0] if found is not None and hmac.compare_digest(digest, found[1]) else None
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[digest] = (now + self._ttl, channel)
        return channel

    async def open_to(self, scope: Scope) -> bool:
        """May this request go without a key? Only in auto mode, on loopback, before any key exists."""
        if self._settings.auth != "auto" or not is_loopback_host(self._settings.host):
            return False
        client = scope.get("client")
        if not client or not is_loopback_host(client[0]):
            return False
        now = time.monotonic()
        if self._any is None or self._any[0] <= now:
            try:
                count = await bounded(self._settings.sql_timeout_s, self._store.count_api_keys)
                self._any = (now + self._ttl, count > 0)
            except Exception as exc:
                if self._any is None:
                    raise KeysUnavailable from exc
                log.warning("API keys: SQL did not answer; the last count stands")
                self._any = (now + self._ttl, self._any[1])
        return not self._any[1]


class KeysUnavailable(Unavailable):
    """SQL could not tell whether a key is valid, and there is no earlier answer to fall back on."""

    def __init__(self) -> None:
        super().__init__(
            "database_unavailable", "the API key cannot be checked now (the database does not answer)"
        )


def presented_key(scope: Scope) -> str | None:
    """``X-Guard-Key`` if sent, else the bearer token of ``Authorization``."""
    bearer = None
    for name, value in scope.get("headers", ()):
        text = bytes(value).decode("latin-1")
        if name == b"x-guard-key":
            return text.strip()
        if name == b"authorization":
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
    return bearer


def request_channel(scope: Scope, asked: str | None) -> str:
    """The channel a request acts in: its API key's, when a key was used (asking for another one is
    a 403 ``channel_forbidden``); without a key (an open loopback guard), the one asked for, else
    ``default``."""
    bound = scope.get("state", {}).get("guard_channel")
    if bound is None:
        return asked or "default"
    if asked is not None and asked != bound:
        raise Forbidden("channel_forbidden", f"this API key is for channel {bound!r}, not {asked!r}")
    return str(bound)


def sees_channel(scope: Scope, channel: str) -> bool:
    """Whether the request may see what was decided in ``channel``: a key sees only its own."""
    bound = scope.get("state", {}).get("guard_channel")
    return bound is None or bound == channel
