"""The local policy copy (guard/local_copy.py) and the policy book's use of it, over a real SQLite
store: written 0600 when a policy is read that it does not hold, rewritten after a publish, and the
fallback of a book that starts while SQL fails (its own channel's policy, else the default
channel's, else the built-in default)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from guard.local_copy import PolicyCopy
from guard.pipeline import PolicyBook
from guard.policies import Policy, default_policy, parse_policy
from guard.store import Store, migrate

SHOP = {"bands": [{"lo": 0.0, "hi": 1.0, "action": "review"}]}


class DeadStore:
    """A store whose database is down."""

    def policy_in_force(self, channel: str) -> tuple[Policy, bool]:
        raise ConnectionError("the database is down")

    def active_policies(self) -> dict[str, Policy]:
        raise ConnectionError("the database is down")


async def _settled(book: PolicyBook, channel: str) -> Policy:
    policy = await book.get(channel)
    await book.stop()  # the copy's rewrite, if one started
    return policy


def test_the_copy_is_written_when_read_and_rewritten_after_a_publish(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'guard.db'}"
    migrate(url)
    store = Store.open(url)
    copy = PolicyCopy(tmp_path / "spool" / "policies-x.json")
    try:
        book = PolicyBook(store, copy=copy)
        assert asyncio.run(_settled(book, "shop")).version == 1  # the seeded default channel's
        assert stat.S_IMODE(copy.path.stat().st_mode) == 0o600
        assert set(PolicyCopy(copy.path).load() or {}) == {"default"}
        store.publish_policy(parse_policy(SHOP, channel="shop"), author="t")
        book.invalidate()
        assert asyncio.run(_settled(book, "shop")).channel == "shop"
        again = PolicyCopy(copy.path).load() or {}
        assert set(again) == {"default", "shop"} and again["shop"].bands[0].action == "review"
    finally:
        store.close()


def test_a_book_started_while_sql_fails_uses_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "policies-x.json"
    shop = parse_policy(SHOP, channel="shop", version=3)
    default = parse_policy({"bands": [{"lo": 0.0, "hi": 1.0, "action": "escalate"}]}, version=2)
    PolicyCopy(path).save({"shop": shop, "default": default})
    book = PolicyBook(DeadStore(), timeout_s=0.5, copy=PolicyCopy(path))  # type: ignore[arg-type]
    assert asyncio.run(_settled(book, "shop")) == shop
    assert asyncio.run(_settled(book, "other")) == default, "a channel without its own: the default's"
    assert not path.with_suffix(".tmp").exists()
    bare = PolicyBook(DeadStore(), timeout_s=0.5, copy=PolicyCopy(tmp_path / "none.json"))  # type: ignore[arg-type]
    assert asyncio.run(_settled(bare, "shop")) == default_policy(), "no copy: the built-in default"


def test_an_unreadable_copy_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "policies-x.json"
    path.write_text('{"shop": {"version": 1, "document": {"bands": []}}}')
    book = PolicyBook(DeadStore(), timeout_s=0.5, copy=PolicyCopy(path))  # type: ignore[arg-type]
    assert asyncio.run(_settled(book, "shop")) == default_policy()
