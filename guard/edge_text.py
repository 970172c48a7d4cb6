"""One rule for the text that enters the guard at any edge (check API, proxy, middleware, LocalGuard).

Two things no database keeps verbatim: a NUL character and an unpaired surrogate (valid in JSON as
``"\\ud800"``, not encodable in UTF-8). And the ``decisions`` columns with a length limit:
``LIMITS`` is read from the table definition, so the edges and the table cannot disagree.

- An edge that can refuse (the check API, the proxy) refuses: :func:`checked` raises a 422
  (``invalid_text`` or ``too_long``).
- Where nobody can be asked again (the middleware, ``LocalGuard``, a draft the upstream wrote),
  :func:`repaired` puts U+FFFD in place of each NUL and lone surrogate, and :func:`fitted` also
  shortens a value over its column's limit to ``<first characters>~<16 hex of its SHA-256>``,
  exactly the limit long: two long values stay apart, and the cut value is the same every time.
"""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import String

from guard.errors import InvalidField
from guard.tables import Decision

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"
_HASH_CHARS = 16

LIMITS: dict[str, int] = {
    column.name: column.type.length
    for column in Decision.__table__.columns
    if isinstance(column.type, String) and column.type.length is not None
}
"""The length limit of each ``decisions`` column that has one (conversation_id, channel, ...)."""


def problem(value: str) -> str | None:
    """What in ``value`` no database can keep (a NUL or an unpaired surrogate), or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    return "a NUL character (\\u0000)" if found.group() == "\x00" else "an unpaired surrogate"


def checked(value: str, what: str, *, limit: int | None = None) -> str:
    """``value`` unchanged, or InvalidField (422) if it is over ``limit`` or cannot be stored."""
    if limit is not None and len(value) > limit:
        raise InvalidField("too_long", f"{what} is {len(value)} characters; the limit is {limit}")
    trouble = problem(value)
    if trouble is not None:
        raise InvalidField("invalid_text", f"{what} contains {trouble}")
    return value


def repaired(value: str) -> str:
    """``value`` with U+FFFD in place of each NUL and unpaired surrogate."""
    return _UNSTORABLE.sub(REPLACEMENT, value)


def fitted(value: str, column: str) -> str:
    """``value`` repaired and, if longer than ``column``'s limit, cut to it with a hash of the whole."""
    value = repaired(value)
    limit = LIMITS[column]
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_HASH_CHARS]
    return f"{value[: limit - _HASH_CHARS - 1]}~{digest}"
