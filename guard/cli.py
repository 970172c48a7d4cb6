"""The ``guard`` command: serve, migrate, check, policy show|validate|publish, users create|unlock,
keys, eval, score."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from guard.errors import ImageError
from guard.followups import Messages, template_problems
from guard.images import DecodedImage, decode_image
from guard.policies import Policy, PolicyError, default_policy, parse_policy, policy_document
from guard.settings import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="guard", description="Reply Guard")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the guard over HTTP")
    serve.add_argument("--host", default=None, help="default: GUARD_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: GUARD_PORT or 8000")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="worker processes sharing the port (default 1; about one per core: docs/deployment.md)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="addresses of the reverse proxies whose X-Forwarded-For/-Proto are believed (the client"
        " address decides GUARD_AUTH=auto and the admin sign-in throttle); default: FORWARDED_ALLOW_IPS"
        " or 127.0.0.1,::1; '*' for any",
    )
    serve.add_argument(
        "--access-log", action="store_true", help="log every HTTP request (off: decisions are in SQL anyway)"
    )

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
    publish.add_argument("--note", default=None, help="why: the change note kept with the version")

    calibrate = sub.add_parser(
        "calibrate",
        help="fit a channel's score map on its supervisors' labels and keep it as a draft to publish",
    )
    calibrate.add_argument("--channel", required=True)
    calibrate.add_argument("--author", default="cli")
    calibrate.add_argument("--dry-run", action="store_true", help="report only; save no draft")
    calibrate.add_argument("--json", action="store_true", help="print the report as JSON")

    users = sub.add_parser("users", help="admin page accounts")
    usub = users.add_subparsers(dest="users_command", required=True)
    ucreate = usub.add_parser("create", help="create an admin page user (the first admin, for instance)")
    ucreate.add_argument("--username", required=True)
    ucreate.add_argument("--role", required=True, choices=["supervisor", "policy_owner", "admin"])
    ucreate.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin instead of a prompt"
    )

    uunlock = usub.add_parser(
        "unlock", help="lift the sign-in lock of a user (from every address) or of an address"
    )
    uunlock.add_argument("username", nargs="?", help="the user whose sign-ins were locked")
    uunlock.add_argument("--address", help="also (or only) lift the lock of this client address")

    keys = sub.add_parser("keys", help="API keys of chatbot clients")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kcreate = ksub.add_parser("create", help="create a key bound to a channel; it is printed only once")
    kcreate.add_argument("--channel", required=True)
    kcreate.add_argument("--name", default=None, help="a note: which chatbot uses it")
    ksub.add_parser("list", help="list keys (ids and channels; never the keys)")
    krevoke = ksub.add_parser("revoke", help="revoke a key by its id (the part after 'rg_')")
    krevoke.add_argument("key_id")

    ev = sub.add_parser("eval", help="measure a scorer on labelled cases (JSONL in the dev set's format)")
    ev.add_argument(
        "cases", type=Path, help="JSONL: question, reply, grade 0/1/2, optional image path and lang"
    )
    ev.add_argument("--scorer", default=None, help="scorer backend (default: GUARD_SCORER)")
    ev.add_argument("--json", action="store_true", help="print the report as JSON")
    ev.add_argument("--no-ocr", action="store_true", help="do not read text in the photos")
    ev.add_argument(
        "--no-generated", action="store_true", help="do not score the generated negatives (faster)"
    )

    score = sub.add_parser("score", help="print the score of one reply and the inputs it used")
    score.add_argument("--question", required=True)
    score.add_argument("--reply", required=True)
    score.add_argument("--image", type=Path, help="path of a JPEG, PNG, WebP or GIF photo")
    score.add_argument("--locale", choices=["zh", "en"])
    score.add_argument("--scorer", default=None, help="scorer backend (default: GUARD_SCORER)")
    score.add_argument("--json", action="store_true", help="print the result as JSON")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"guard: {exc}", file=sys.stderr)
        return 2
    command = args.command if args.command != "policy" else f"policy {args.policy_command}"
    if args.command == "users":
        command = f"users {args.users_command}"
    if args.command == "keys":
        command = f"keys {args.keys_command}"
    handler = {
        "serve": _serve,
        "migrate": _migrate,
        "check": _check,
        "policy show": _policy_show,
        "policy validate": _policy_validate,
        "policy publish": _policy_publish,
        "calibrate": _calibrate,
        "users create": _users_create,
        "users unlock": _users_unlock,
        "keys create": _keys_create,
        "keys list": _keys_list,
        "keys revoke": _keys_revoke,
        "eval": _eval,
        "score": _score,
    }[command]
    return handler(args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from guard.app import create_app, limit_malloc_arenas
    from guard.http_server import WORKER_PROTOCOL, http_limits, protocol_class

    # The address served is the one GUARD_AUTH=auto judges (guard/keys.py).
    settings = dataclasses.replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    if not settings.metrics_key and settings.host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"guard: /metrics and /readyz are open to anyone who reaches {settings.host}:{settings.port}; "
            "set GUARD_METRICS_KEY to require a key (docs/deployment.md)",
            file=sys.stderr,
        )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "access_log": args.access_log,
        "timeout_graceful_shutdown": 15,
        "proxy_headers": True,
        "forwarded_allow_ips": args.forwarded_allow_ips,
        # h11 with the guard's deadlines and limits (guard/http_server.py); no WebSockets are served.
        "ws": "none",
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
    with _metrics_folder(args.workers):
        if args.workers == 1:
            limit_malloc_arenas()
            uvicorn.run(create_app(settings), http=protocol_class(http_limits(settings)), **options)
            return 0
        # Each worker is a process of its own that builds the app from the environment (guard.app.
        # serve_app) and opens its own runtime in its lifespan: its own SQL pool, Redis client, scorer
        # and spool segments. The address goes to them in the environment, as GUARD_HOST/GUARD_PORT.
        os.environ["GUARD_HOST"] = settings.host
        os.environ["GUARD_PORT"] = str(settings.port)
        _first_key_once(settings)
        # A class made by protocol_class cannot be sent to a spawned worker: each names the module's
        # WorkerProtocol, which its app factory gives the limits of the same settings.
        uvicorn.run(
            "guard.app:serve_app", factory=True, workers=args.workers, http=WORKER_PROTOCOL, **options
        )
        return 0


@contextlib.contextmanager
def _metrics_folder(workers: int) -> Iterator[None]:
    """prometheus_client's multiprocess folder (guard/metrics.py), so that ``/metrics`` sums every
    worker's counts whichever worker answers. ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of the
    files a previous run left: one folder per ``guard serve``); else, with more than one worker, a
    fresh temporary one, removed when the command ends. One process alone needs none."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
        yield
        return
    if workers == 1:
        yield
        return
    folder = tempfile.mkdtemp(prefix="guard-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # the workers, spawned, import prometheus_client
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def _first_key_once(settings: Settings) -> None:
    """The first-start API key (guard/keys.py), created here before the workers start, so that N
    workers starting together do not each create one."""
    from guard.keys import ensure_first_key
    from guard.store import Store

    store = Store.open(settings.database_url)
    try:
        first = ensure_first_key(store, settings)
    except Exception as exc:  # the workers try again (and say so) once the database answers
        print(f"guard: API keys: could not check for a first key ({type(exc).__name__})", file=sys.stderr)
        return
    finally:
        store.close()
    if first is not None:
        print(
            f"guard: no API key existed and the guard listens on {settings.host}, so one was created for"
            f" channel 'default'. It is shown only this once; clients send it as"
            f" 'Authorization: Bearer <key>':\n\n    {first}\n",
            file=sys.stderr,
        )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _calibrate(args: argparse.Namespace, settings: Settings) -> int:
    """Fit the channel's map on its labels (held cases resolved, audit items marked) and save it as a
    draft; exit 1 when there are too few labels (the report says how many more)."""
    from guard.admin.calibrate import fit_from_labels
    from guard.admin.queries import AdminQueries
    from guard.store import Store

    store = Store.open(settings.database_url)
    try:
        fit, draft_id = fit_from_labels(
            store, AdminQueries(store.engine), args.channel, args.author, save=not args.dry_run
        )
    finally:
        store.close()
    report = fit.report
    if args.json:
        print(json.dumps({**report.to_json(), "draft_id": draft_id}, ensure_ascii=False, indent=2))
    else:
        print(report.message)
        if report.fitted:
            print(f"map: score = sigmoid({report.w:.4f} * logit(raw) + {report.b:.4f})")
            print(f"labels by grade (2 addresses / 1 right direction / 0 does not): {report.grades}")
            if draft_id is not None:
                print(
                    f"saved as draft {draft_id} of channel {args.channel}: preview and publish it on "
                    f"/admin/calibration/{args.channel}"
                )
            else:
                print("dry run: nothing saved")
    return 0 if report.fitted else 1


def _migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from guard.store import migrate

    migrate(settings.database_url)
    print(f"migrated {_safe_url(settings.database_url)} to head")
    return 0


def _check(args: argparse.Namespace, settings: Settings) -> int:
    """One decision, made by the server's own runtime over a scratch database (see ``one_off``)."""
    from guard.pipeline import CheckRequest, PolicyBook
    from guard.runtime import Runtime

    image = None
    if args.image is not None:
        image = _read_image(args.image, settings)
        if image is None:
            return 2
    loaded = _load_policy(args.policy) if args.policy else default_policy()
    if loaded is None:
        return 1
    policy: Policy = loaded

    class FixedPolicy(PolicyBook):
        async def get(self, channel: str) -> Policy:
            return policy

    async def run(scratch: Settings) -> dict[str, Any]:
        async with Runtime.open(scratch, policies=FixedPolicy(None)) as rt:
            result = await rt.pipeline.check(
                CheckRequest(question=args.question, reply=args.reply, locale=args.locale, image=image)
            )
        return result.to_json()

    with tempfile.TemporaryDirectory(prefix="guard-check-") as scratch_dir:
        scratch = one_off(settings, Path(scratch_dir), ocr=image is not None)
        print(json.dumps(asyncio.run(run(scratch)), ensure_ascii=False, indent=2))
    return 0


def one_off(settings: Settings, scratch_dir: Path, *, ocr: bool) -> Settings:
    """``settings`` for a one-off command that opens the ``Runtime``: a scratch SQLite database in
    ``scratch_dir`` (migrated here; the configured database is not touched) with its spool beside
    it, the scores cached in this process only, no webhooks, no API key created (a loopback host),
    OCR only when there is a photo. The runtime's background tasks end when it closes."""
    from guard.store import migrate

    url = f"sqlite:///{scratch_dir / 'guard.db'}"
    migrate(url)
    return dataclasses.replace(
        settings,
        database_url=url,
        spool_dir=str(scratch_dir / "spool"),
        redis_url=None,
        webhook_url=None,
        host="127.0.0.1",
        ocr=settings.ocr if ocr else "off",
    )


def _eval(args: argparse.Namespace, settings: Settings) -> int:
    from guard.errors import ScorerError
    from guard.evaluation import EvalError, format_report, load_cases, run
    from guard.ocr import load_reader
    from guard.runtime import load_scorer

    if args.scorer:
        settings = dataclasses.replace(settings, scorer=args.scorer)
    try:
        cases = load_cases(args.cases)
    except EvalError as exc:
        print(f"guard: {exc}", file=sys.stderr)
        return 2
    try:
        scorer = load_scorer(settings)
    except (ScorerError, ValueError) as exc:
        print(f"guard: cannot load scorer {settings.scorer!r}: {exc}", file=sys.stderr)
        return 2
    read_text = None
    reader_name = ""
    if not args.no_ocr and settings.ocr.strip().lower() != "off" and any(c.image for c in cases):
        reader = load_reader(max(1, settings.ocr_threads))
        reader_name = reader.name

        def read_text(path: Path) -> str | None:
            image = decode_image(
                path.read_bytes(), max_pixels=settings.max_image_pixels, max_bytes=settings.max_body_bytes
            )
            return reader.read(image.rgb) or None

    try:
        report = run(
            cases,
            scorer,
            read_text=read_text,
            source=str(args.cases),
            reader_name=reader_name,
            with_generated=not args.no_generated,
        )
    finally:
        scorer.close()
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 0


def _score(args: argparse.Namespace, settings: Settings) -> int:
    from guard.errors import ScorerError
    from guard.issues.text import detect_locale
    from guard.ocr import load_reader
    from guard.runtime import load_scorer
    from guard.scoring.base import ScoreInput

    if args.scorer:
        settings = dataclasses.replace(settings, scorer=args.scorer)
    image_text = None
    if args.image is not None:
        image = _read_image(args.image, settings)
        if image is None:
            return 2
        if settings.ocr.strip().lower() != "off":
            image_text = load_reader(max(1, settings.ocr_threads)).read(image.rgb) or None
    try:
        scorer = load_scorer(settings)
    except (ScorerError, ValueError) as exc:
        print(f"guard: the scorer failed: {exc}", file=sys.stderr)
        return 1
    try:
        result = scorer.score_batch(
            [
                ScoreInput(
                    question=args.question,
                    reply=args.reply,
                    image_text=image_text,
                    has_image=args.image is not None,
                    locale=detect_locale(args.question, args.locale),
                )
            ]
        )[0]
    except (ScorerError, ValueError) as exc:
        print(f"guard: the scorer failed: {exc}", file=sys.stderr)
        return 1
    finally:
        scorer.close()
    body = {
        "score": round(result.score, 4),
        "inputs_used": list(result.inputs_used),
        "image_text": image_text,
        "scorer": {"name": scorer.name, "version": scorer.version},
    }
    if args.json:
        print(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        print(f"score: {body['score']:.4f}")
        print(f"inputs used: {', '.join(result.inputs_used)}")
        if args.image is not None:
            print(f"text in the photo: {image_text!r}" if image_text else "text in the photo: none found")
        print(f"scorer: {scorer.name} {scorer.version}")
    return 0


def _policy_show(args: argparse.Namespace, settings: Settings) -> int:
    from guard.store import Store

    store = Store.open(settings.database_url)
    try:
        policy, _own = store.policy_in_force(args.channel)
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
        stored = store.publish_policy(policy, author=args.author, note=args.note)
    finally:
        store.close()
    print(f"published channel {stored.channel!r} version {stored.version}")
    return 0


def _users_create(args: argparse.Namespace, settings: Settings) -> int:
    import getpass

    from guard.admin import auth
    from guard.admin.queries import AdminQueries

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
        if getpass.getpass("again: ") != password:
            print("guard: the passwords differ", file=sys.stderr)
            return 1
    problem = auth.username_problem(args.username) or auth.password_problem(password)
    if problem:
        print(f"guard: {problem}", file=sys.stderr)
        return 1
    queries = AdminQueries.open(settings.database_url)
    try:
        if queries.user_by_name(args.username) is not None:
            print(f"guard: there is already a user {args.username!r}", file=sys.stderr)
            return 1
        queries.create_user(args.username, auth.hash_password(password), args.role, actor="cli")
    finally:
        queries.close()
    print(f"created {args.role} {args.username!r}")
    return 0


def _users_unlock(args: argparse.Namespace, settings: Settings) -> int:
    from guard.admin import auth
    from guard.admin.queries import AdminQueries

    if not args.username and not args.address:
        print("guard: name a user, an --address, or both", file=sys.stderr)
        return 2
    queries = AdminQueries.open(settings.database_url)
    try:
        if args.username and queries.user_by_name(args.username) is None:
            print(f"guard: there is no user {args.username!r}", file=sys.stderr)
            return 1
        cleared = 0
        if args.username:
            match = auth.user_throttle_prefix(args.username)
            cleared += queries.unlock_login(match, "cli", f"user {args.username}")
        if args.address:
            match = auth.address_throttle_key(args.address)
            cleared += queries.unlock_login(match, "cli", f"address {args.address}")
    finally:
        queries.close()
    what = " and ".join(x for x in (args.username and repr(args.username), args.address) if x)
    print(f"unlocked {what}" if cleared else f"{what}: no sign-in lock or failed sign-ins to clear")
    return 0


def _keys_create(args: argparse.Namespace, settings: Settings) -> int:
    from guard.keys import create_key
    from guard.store import Store

    store = Store.open(settings.database_url)
    try:
        key = create_key(store, args.channel, args.name)
    except ValueError as exc:
        print(f"guard: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"created a key for channel {args.channel!r}; it is shown only now:", file=sys.stderr)
    print(key)
    return 0


def _keys_list(_args: argparse.Namespace, settings: Settings) -> int:
    from guard.store import Store

    store = Store.open(settings.database_url)
    try:
        rows = store.api_keys()
    finally:
        store.close()
    for row in rows:
        state = "revoked" if row.revoked_at else "active"
        print(f"{row.id}  {state:8} channel={row.channel!r}  {row.name or ''}".rstrip())
    return 0


def _keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from guard.store import Store

    store = Store.open(settings.database_url)
    try:
        revoked = store.revoke_api_key(args.key_id)
    finally:
        store.close()
    if not revoked:
        print(f"guard: no active key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


def _read_image(path: Path, settings: Settings) -> DecodedImage | None:
    """The decoded photo at ``path``, or None after saying why it cannot be used."""
    try:
        return decode_image(
            path.read_bytes(), max_pixels=settings.max_image_pixels, max_bytes=settings.max_body_bytes
        )
    except (OSError, ImageError) as exc:
        print(f"guard: cannot use {path}: {exc}", file=sys.stderr)
        return None


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
