"""Accounts and sessions: argon2 password hashes, signed session cookies, CSRF tokens, roles.

The session cookie holds a random token signed with the secret key (HMAC-SHA256); the database
keeps only the token's SHA-256, with the user, the session's CSRF token and its expiry. Signing
out deletes the row, so a copied cookie stops working too. Nothing here is kept in process
memory, so any replica can serve any request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from guard.tables import USER_ROLES

SESSION_COOKIE = "rg_session"
LOGIN_CSRF_COOKIE = "rg_login_csrf"
SECRET_KEY_FILE = Path("var") / "secret_key"

# Login throttling: this many failures within the window lock the username from that address
# (USER_FAILURE_LIMIT), or the address for every username (IP_FAILURE_LIMIT). Never the username
# alone, so guesses from elsewhere cannot lock a known admin out; an admin unlocks with the Users
# page or `guard users unlock`.
USER_FAILURE_LIMIT = 5
IP_FAILURE_LIMIT = 20
FAILURE_WINDOW_S = 15 * 60
LOCK_S = 15 * 60

MIN_PASSWORD_CHARS = 10
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,100}$")

ROLE_LABELS = {"supervisor": "Supervisor", "policy_owner": "Policy owner", "admin": "Admin"}

# Which roles may use which part of the admin pages. Every route names one of these.
ACCESS: dict[str, frozenset[str]] = {
    "any": frozenset(USER_ROLES),
    "queue": frozenset({"supervisor", "admin"}),
    "policies": frozenset({"policy_owner", "admin"}),
    "users": frozenset({"admin"}),
    "playground": frozenset({"supervisor", "policy_owner", "admin"}),
}

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not a password anyone has")


@dataclass(frozen=True)
class CurrentUser:
    id: int
    username: str
    role: str
    csrf: str
    token_hash: str

    def may(self, area: str) -> bool:
        return self.role in ACCESS[area]


def user_throttle_key(username: str, address: str) -> str:
    """The sign-in throttle's key of ``username`` signing in from ``address``."""
    return f"user:{username.lower()}|ip:{address}"


def user_throttle_prefix(username: str) -> str:
    """What every throttle key of ``username`` starts with (``|`` is not in a username)."""
    return f"user:{username.lower()}|"


def address_throttle_key(address: str) -> str:
    return f"ip:{address}"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; an unknown user is checked against a dummy hash (same cost)."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    if len(password) < MIN_PASSWORD_CHARS:
        return f"the password must have at least {MIN_PASSWORD_CHARS} characters"
    return None


def username_problem(username: str) -> str | None:
    if not USERNAME.match(username):
        return "a username is 1-100 letters, digits or _ . @ -"
    return None


def role_problem(role: str) -> str | None:
    if role not in USER_ROLES:
        return f"unknown role {role!r} (known: {', '.join(USER_ROLES)})"
    return None


def load_secret_key(configured: str | None, path: Path = SECRET_KEY_FILE) -> bytes:
    """GUARD_SECRET_KEY, or a random key generated once and kept in ``path`` (mode 0600)."""
    if configured:
        return configured.encode()
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48).encode()
    # Written whole under a name of its own, then linked into place: another process starting at
    # the same moment (a worker of the same `guard serve`) finds either no file or the whole key.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:  # another process wrote it first: use theirs
        return path.read_bytes().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return key


class Signer:
    """HMAC-SHA256 signatures for cookie values, with a purpose so one kind cannot stand in for another."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, purpose: str, value: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, purpose: str, value: str) -> str:
        return f"{value}.{self._mac(purpose, value)}"

    def unsign(self, purpose: str, signed: str | None) -> str | None:
        if not signed or "." not in signed:
            return None
        value, mac = signed.rsplit(".", 1)
        return value if hmac.compare_digest(mac, self._mac(purpose, value)) else None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
