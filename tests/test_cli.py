"""The `guard` command, run as a user runs it (a subprocess with GUARD_* variables)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from guard.store import Store
from tests.apptools import png_bytes

ROOT = Path(__file__).resolve().parents[1]


def guard(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "guard.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def test_migrate_then_policy_show(sqlite_url: str) -> None:
    env = {"GUARD_DATABASE_URL": sqlite_url}
    done = guard("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert "to head" in done.stdout
    shown = guard("policy", "show", env=env)
    assert shown.returncode == 0, shown.stderr
    doc = yaml.safe_load(shown.stdout)
    assert [b["action"] for b in doc["bands"]] == ["escalate", "review", "follow_up", "follow_up", "send"]
    assert "version 1" in shown.stdout


def test_policy_validate_accepts_a_good_file_and_names_the_gap_in_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "channel: shop\non_error: review\nbands:\n"
        "  - {lo: 0.0, hi: 0.5, action: escalate}\n  - {lo: 0.5, hi: 1.0, action: send}\n"
    )
    ok = guard("policy", "validate", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "[0.0,0.5) escalate, [0.5,1.0] send" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "bands:\n  - {lo: 0.0, hi: 0.4, action: escalate}\n  - {lo: 0.5, hi: 1.0, action: send}\n"
        "templates:\n  followup.en: '{% if %}'\n"
    )
    failed = guard("policy", "validate", str(bad))
    assert failed.returncode == 1
    assert "gap: no band covers [0.4,0.5)" in failed.stderr
    broken_template = tmp_path / "tpl.yaml"
    broken_template.write_text(good.read_text() + "templates:\n  followup.en: '{% if %}'\n")
    failed = guard("policy", "validate", str(broken_template))
    assert failed.returncode == 1 and "followup.en" in failed.stderr
    not_yaml = tmp_path / "x.yaml"
    not_yaml.write_text("bands: [")
    assert guard("policy", "validate", str(not_yaml)).returncode == 1


def test_policy_publish_makes_the_next_version(sqlite_url: str, tmp_path: Path) -> None:
    env = {"GUARD_DATABASE_URL": sqlite_url}
    assert guard("migrate", env=env).returncode == 0
    policy = tmp_path / "p.json"
    policy.write_text(
        json.dumps(
            {"bands": [{"lo": 0, "hi": 0.8, "action": "review"}, {"lo": 0.8, "hi": 1, "action": "send"}]}
        )
    )
    published = guard("policy", "publish", str(policy), "--author", "alice", "--note", "Hold more.", env=env)
    assert published.returncode == 0, published.stderr
    assert "version 2" in published.stdout
    assert "0.8" in guard("policy", "show", env=env).stdout
    store = Store.open(sqlite_url)
    try:
        newest = store.policy_versions("default", newest_first=True)[0]
    finally:
        store.close()
    assert (newest.author, newest.note) == ("alice", "Hold more."), "the change note is kept"


def test_bad_settings_are_a_clear_error() -> None:
    done = guard("policy", "show", env={"GUARD_CACHE_TTL_S": "soon"})
    assert done.returncode == 2 and "GUARD_CACHE_TTL_S" in done.stderr


@pytest.mark.parametrize("locale", ["zh", "en"])
def test_check_prints_the_decision_with_the_bundled_scorer(tmp_path: Path, locale: str) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes())
    question, reply = {
        "zh": ("新买的牛仔裤，右边口袋开线了", "亲，本店新品上架，关注店铺可领取5元无门槛优惠券哦～"),
        "en": ("The button on my jeans popped off.", "Sign up for our newsletter to get 10% off!"),
    }[locale]
    done = guard("check", "--question", question, "--reply", reply, "--image", str(photo))
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["action"] in {"escalate", "review"}, body
    assert body["scorer"]["name"] == "bundled"
    assert body["holding_message"] and body["escalation_id"]
    assert body["locale"] == locale


def test_check_refuses_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"hello")
    done = guard("check", "--question", "q", "--reply", "r", "--image", str(bad))
    assert (done.returncode == 2 and "not_an_image" in done.stderr) or "not an image" in done.stderr.lower()
