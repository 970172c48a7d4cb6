"""The ``guard`` command: serve, migrate, check, policy show|validate|publish."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from guard.followups import Messages, template_problems
from guard.images import ImageError, decode_image
from guard.policies import Policy, PolicyError, default_policy, parse_policy, policy_document
from guard.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guard", description="Reply Guard")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the guard over HTTP")
    serve.add_argument("--host", default=None, help="default: GUARD_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: GUARD_PORT or 8000")

    sub.add_parser("migrate", help="create or upgrade the database schema (GUARD_DATABASE_URL)")

    check = sub.add_parser("check", help="print the decision for one reply, without a server or database")
    check.add_argument("--question", required=True)
    check.add_argument("--reply", required=True)
    check.add_argument("--image", type=Path, help="path of a JPEG, PNG, WebP or GIF photo")
    check.add_argument("--locale", choices=["zh", "en"])
    check.add_argument(
        "--policy", type=Path, help="a policy file (YAML or JSON); default: the default policy"
    )

    policy = sub.add_parser("policy", help="show, validate or publish policies")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    show = psub.add_parser("show", help="print the policy in force for a channel (from the database)")
    show.add_argument("--channel", default="default")
    validate = psub.add_parser("validate", help="check a policy file; exit 1 listing every problem")
    validate.add_argument("file", type=Path)
    publish = psub.add_parser(
        "publish", help="validate a policy file and store it as the channel's next version"
    )
    publish.add_argument("file", type=Path)
    publish.add_argument("--author", default="cli")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"guard: {exc}", file=sys.stderr)
        return 2
    command = args.command if args.command != "policy" else f"policy {args.policy_command}"
    handler = {
        "serve": _serve,
        "migrate": _migrate,
        "check": _check,
        "policy show": _policy_show,
        "policy validate": _policy_validate,
        "policy publish": _policy_publish,
    }[command]
    return handler(args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from guard.app import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level="info",
        timeout_graceful_shutdown=15,
    )
    return 0


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from guard.store import migrate

    migrate(settings.database_url)
    print(f"migrated {_safe_url(settings.database_url)} to head")
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    from guard.app import load_scorer
    from guard.cache import MemoryCache
    from guard.pipeline import CheckRequest, Guard, PolicyBook, ScoringService

    image = None
    if args.image is not None:
        try:
            image = decode_image(
                args.image.read_bytes(),
                max_pixels=settings.max_image_pixels,
                max_bytes=settings.max_body_bytes,
            )
        except (OSError, ImageError) as exc:
            print(f"guard: cannot use {args.image}: {exc}", file=sys.stderr)
            return 2
    loaded = _load_policy(args.policy) if args.policy else default_policy()
    if loaded is None:
        return 1
    policy: Policy = loaded

    class FixedPolicy(PolicyBook):
        async def get(self, channel: str) -> Policy:
            return policy

    async def run() -> dict[str, Any]:
        scoring = ScoringService(load_scorer(settings), settings.score_timeout_s)
        guard = Guard(settings, scoring, MemoryCache(), FixedPolicy(None), None)
        try:
            result = await guard.check(
                CheckRequest(question=args.question, reply=args.reply, locale=args.locale, image=image)
            )
        finally:
            scoring.close()
        return result.to_json()

    print(json.dumps(asyncio.run(run()), ensure_ascii=False, indent=2))
    return 0


def _policy_show(args: argparse.Namespace, settings: Settings) -> int:
    from guard.store import Store

    store = Store.open(settings.database_url)
    try:
        policy = store.active_policy(args.channel) or store.active_policy("default") or default_policy()
    finally:
        store.close()
    print(f"# channel {args.channel!r}: policy of channel {policy.channel!r}, version {policy.version}")
    print(yaml.safe_dump(policy_document(policy), allow_unicode=True, sort_keys=False), end="")
    return 0


def _policy_validate(args: argparse.Namespace, _settings: Settings) -> int:
    policy = _load_policy(args.file)
    if policy is None:
        return 1
    bands = ", ".join(
        f"{b.label(top=i == len(policy.bands) - 1)} {b.action}" for i, b in enumerate(policy.bands)
    )
    print(f"ok: channel {policy.channel!r}, on_error {policy.on_error}: {bands}")
    return 0


def _policy_publish(args: argparse.Namespace, settings: Settings) -> int:
    from guard.store import Store

    policy = _load_policy(args.file)
    if policy is None:
        return 1
    store = Store.open(settings.database_url)
    try:
        stored = store.publish_policy(policy, author=args.author)
    finally:
        store.close()
    print(f"published channel {stored.channel!r} version {stored.version}")
    return 0


def _load_policy(path: Path) -> Policy | None:
    """The validated policy in ``path``, or None after printing every problem."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"{path}: cannot read the policy: {exc}", file=sys.stderr)
        return None
    try:
        policy = parse_policy(doc)
    except PolicyError as exc:
        problems = exc.problems
    else:
        problems = template_problems(policy.templates, Messages())
        if not problems:
            return policy
    print(f"{path}: invalid policy:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return None


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    sys.exit(main())
