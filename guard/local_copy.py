"""Local copies of what SQL holds and a guard needs to serve: the API keys (guard/keys.py) and the
policies in force (:class:`PolicyCopy`), kept beside the spool so that a guard restarted while the
database is down serves as the running guard did.

Each copy is one JSON file ``<GUARD_SPOOL_DIR>/<kind>-<database key>.json`` (the database key is
the spool's, so a copy never serves another database), mode 0600, replaced atomically (written
to a temporary file, fsync'd, renamed). Without a spool directory there are no copies.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from guard.policies import Policy, PolicyError, parse_policy, policy_document
from guard.settings import Settings
from guard.spool import spool_key

log = logging.getLogger(__name__)


def copy_path(settings: Settings, kind: str) -> Path | None:
    """Where the ``kind`` copy of ``settings``' database lives (None without a spool directory)."""
    if not settings.spool_dir:
        return None
    return Path(settings.spool_dir) / f"{kind}-{spool_key(settings.database_url)}.json"


def save_json(path: Path, doc: Any) -> None:
    """Replace ``path`` with ``doc`` as JSON, atomically, readable by this user only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of this process's own: the workers of one guard (and guards sharing the spool folder)
    # rewrite the copies too, and one's half-written file must never be another's.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class PolicyCopy:
    """The published policy of every channel, as last read from SQL (``policies-<database key>.json``).

    The policy book (guard/pipeline.py) rewrites it when it reads a policy the copy does not hold
    (at start-up, after a publish), and falls back on it for a channel whose policy it never read
    while SQL answered, so a guard started during an outage decides under the policies published
    before it, not the built-in default.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._policies: dict[str, Policy] | None = None
        self._loaded = False

    def save(self, policies: Mapping[str, Policy]) -> None:
        doc = {
            channel: {"version": p.version, "document": policy_document(p)} for channel, p in policies.items()
        }
        save_json(self.path, doc)
        self._policies = dict(policies)
        self._loaded = True

    def load(self) -> dict[str, Policy] | None:
        """The policies of the last copy, or None when there is none (or it cannot be read)."""
        if not self._loaded:
            self._loaded = True
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                self._policies = {
                    str(name): parse_policy(entry["document"], channel=name, version=int(entry["version"]))
                    for name, entry in doc.items()
                }
            except FileNotFoundError:
                self._policies = None
            except (OSError, ValueError, TypeError, KeyError, AttributeError, PolicyError) as exc:
                log.warning("policies: the local copy %s cannot be read (%r); not used", self.path, exc)
                self._policies = None
        return self._policies

    def policy_for(self, channel: str) -> Policy | None:
        """The policy ``channel`` was under by the copy (its own, else the default channel's)."""
        policies = self.load()
        if policies is None:
            return None
        return policies.get(channel) or policies.get("default")

    def holds(self, policy: Policy) -> bool:
        """Whether the copy already has ``policy`` (its channel at its version)."""
        policies = self.load() or {}
        kept = policies.get(policy.channel)
        if kept is None:
            return policy.version == 0 and self._policies is not None  # the built-in default
        return kept.version == policy.version


def policy_copy(settings: Settings) -> PolicyCopy | None:
    path = copy_path(settings, "policies")
    return None if path is None else PolicyCopy(path)
