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

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
from pathlib import Path

from starlette.types import Scope

from guard.errors import Forbidden, Unavailable
from guard.local_copy import copy_path, save_json
from guard.settings import Settings
from guard.store import Store, bounded

log = logging.getLogger(__name__)

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


def ensure_first_key(store: Store, settings: Settings) -> str | None:
    """On a first start that listens beyond loopback with no key yet: create one and return it."""
    if settings.auth != "auto" or is_loopback_host(settings.host) or store.count_api_keys() > 0:
        return None
    return create_key(store, "default", name="created on first start")


class KeyCopy:
    """A local copy of the active keys (ids, channels, SHA-256 hashes: never a key itself).

    Kept beside the spool (``<GUARD_SPOOL_DIR>/keys-<database key>.json``, mode 0600: guard/local_copy.py)
    and rewritten
    while SQL answers, so that a guard restarted while the database is down still knows its keys.
    A key revoked before the last copy is not in it, and stays refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, tuple[str, str]] | None = None

    def save(self, keys: dict[str, tuple[str, str]]) -> None:
        save_json(self.path, {k: list(v) for k, v in keys.items()})
        self._keys = dict(keys)

    def load(self) -> dict[str, tuple[str, str]] | None:
        """The keys of the last copy, or None when there is none (or it cannot be read)."""
        if self._keys is None:
            try:
                doc = json.loads(self.path.read_text())
                self._keys = {str(k): (str(v[0]), str(v[1])) for k, v in doc.items()}
            except (OSError, ValueError, TypeError, IndexError, AttributeError):
                return None
        return self._keys


def key_copy(settings: Settings) -> KeyCopy | None:
    """The local key copy of ``settings`` (None without a spool directory)."""
    path = copy_path(settings, "keys")
    return None if path is None else KeyCopy(path)


class KeyRing:
    """Looks keys up in SQL, remembering answers for a few seconds (a revoked key dies within ``ttl_s``).

    When SQL does not answer and no answer for the key is remembered, the local copy
    (:class:`KeyCopy`, refreshed every ``copy_every_s`` while SQL answers) decides.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        ttl_s: float = 5.0,
        *,
        copy: KeyCopy | None = None,
        copy_every_s: float = 10.0,
    ) -> None:
        self._store = store
        self._settings = settings
        self._ttl = ttl_s
        self._known: dict[str, tuple[float, str | None]] = {}
        self._any: tuple[float, bool] | None = None
        self._copy = copy
        self._copy_every = copy_every_s
        self._task: asyncio.Task[None] | None = None

    async def refresh_copy(self) -> bool:
        """Rewrite the local copy from SQL; False (and the old copy kept) when SQL does not answer."""
        if self._copy is None:
            return False
        try:
            keys = await bounded(self._settings.sql_timeout_s, self._store.active_api_keys)
            await asyncio.to_thread(self._copy.save, keys)
        except Exception as exc:
            log.warning("API keys: the local copy was not refreshed (%s)", type(exc).__name__)
            return False
        return True

    def start(self) -> None:
        if self._copy is not None:
            self._task = asyncio.create_task(self._refresh_loop(), name="api-key-copy")

    async def stop(self) -> None:
        """Stop refreshing the copy, after a last refresh (keys revoked meanwhile leave it)."""
        if self._task is not None:
            # Cancelled until it has ended: on Python 3.11 asyncio.wait_for (inside bounded()) can
            # swallow a cancellation that arrives just as its SQL read finishes, and the loop went
            # on sleeping and refreshing: a shutdown was seen to hang here (tests/test_keys.py).
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=1.0)
            await self.refresh_copy()

    async def _refresh_loop(self) -> None:
        while True:
            await self.refresh_copy()
            await asyncio.sleep(self._copy_every)

    def _copied(self, key_id: str, digest: str) -> str | None:
        """The channel of the key by the local copy; KeysUnavailable when there is no copy."""
        keys = None if self._copy is None else self._copy.load()
        if keys is None:
            raise KeysUnavailable
        found = keys.get(key_id)
        return found[0] if found is not None and hmac.compare_digest(digest, found[1]) else None

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
        except Exception:
            if hit is None:
                log.warning(
                    "API keys: SQL did not answer; key %s is checked in the local copy", match.group(1)
                )
                return self._copied(match.group(1), digest)
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
                    copied = None if self._copy is None else self._copy.load()
                    if copied is None:
                        raise KeysUnavailable from exc
                    self._any = (now, bool(copied))
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
