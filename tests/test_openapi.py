"""``GET /openapi.json`` is true: a valid OpenAPI 3.1 document, every error code the guard raises is in
it, real responses of every route (successes and each error shape) validate against it, and a
bounded schemathesis run against a live ``guard serve`` finds no 5xx and no response outside it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from PIL import Image
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from guard.openapi import document, error_codes
from guard.store import migrate
from tests.apptools import flush, guard_client, new_key, png_bytes, runtime_of
from tests.serving import BIN, closed_port, guard_serve, serve, serve_env
from tests.test_images import png_header_only

GUARD = Path(__file__).resolve().parents[1] / "guard"
DOC = document()
PNG = png_bytes()
TEXT = "We have logged the open seam on your pocket; a specialist will contact you."


# -- a fake upstream model server: what it answers is chosen by the request's "model" ------------


def _completion(content: str | None, **message: Any) -> dict[str, Any]:
    msg = {"role": "assistant", "content": content, **message}
    return {
        "id": "c-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
    }


def _stream(content: str) -> str:
    chunks = [
        {
            "id": "c-1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": content}}],
        },
        {
            "id": "c-1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        },
    ]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


async def upstream_chat(request: Request) -> Response:
    doc = await request.json()
    model = doc.get("model", "")
    if model == "tools":
        call = {"id": "t1", "type": "function", "function": {"name": "track", "arguments": "{}"}}
        return JSONResponse(_completion(None, tool_calls=[call]))
    if model == "fail":
        return Response("upstream broke", status_code=500)
    if model == "not-json":
        return Response("hello", media_type="application/json")
    if model == "big":
        return JSONResponse(_completion("x" * 100_000))
    if model == "slow":
        await asyncio.sleep(3)
    if model == "client-error":
        error = {"message": "no such model", "type": "invalid_request_error", "code": None}
        return JSONResponse({"error": error}, status_code=400)
    if doc.get("stream") and model != "no-stream":
        return Response(_stream(TEXT), media_type="text/event-stream")
    return JSONResponse(_completion(TEXT))


UPSTREAM = Starlette(routes=[Route("/v1/chat/completions", upstream_chat, methods=["POST"])])


# -- validating a response against the document ---------------------------------------------------


def response_spec(path: str, method: str, status: int) -> dict[str, Any]:
    responses = DOC["paths"][path][method]["responses"]
    found = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    assert found is not None, f"{method.upper()} {path} answered {status}, which is not documented"
    return dict(found)


def check_against_document(path: str, method: str, status: int, headers: Any, body: bytes) -> None:
    spec = response_spec(path, method, status)
    media = headers.get("content-type", "").split(";")[0].strip()
    assert media in spec["content"], f"{method.upper()} {path} {status}: {media} is not documented"
    schema = spec["content"][media]["schema"]
    if media == "application/json":
        validator = Draft202012Validator(
            {**schema, "components": DOC["components"]}, format_checker=Draft202012Validator.FORMAT_CHECKER
        )
        errors = sorted(validator.iter_errors(json.loads(body)), key=lambda e: list(e.path))
        assert not errors, f"{method.upper()} {path} {status}: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors[:5]
        )
    for name, header in spec.get("headers", {}).items():
        if name.lower() in headers:
            Draft202012Validator(header["schema"]).validate(headers[name.lower()])


# -- the in-process guard -------------------------------------------------------------------------


@dataclass
class Guard:
    client: TestClient
    key: str
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    def call(
        self,
        path: str,
        method: str,
        status: int,
        code: str | None = None,
        *,
        url: str | None = None,
        auth: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        headers = {"authorization": f"Bearer {self.key}"} if auth is None else auth
        headers.update(kwargs.pop("headers", {}))
        resp = self.client.request(method.upper(), url or path, headers=headers, **kwargs)
        assert resp.status_code == status, resp.text[:500]
        check_against_document(path, method, status, resp.headers, resp.content)
        operation = DOC["paths"][path][method]["operationId"]
        if code is not None:
            assert resp.json()["error"]["code"] == code, resp.text[:500]
            assert code in error_codes(operation)[status]
        self.seen.add((operation, str(status), code or ""))
        return resp


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guard]:
    tmp = tmp_path_factory.mktemp("openapi")
    url = f"sqlite:///{tmp / 'guard.db'}"
    migrate(url)
    key = new_key(url)
    with (
        serve(UPSTREAM) as upstream,
        guard_client(
            url,
            spool_dir=str(tmp / "spool"),
            ocr="off",
            max_body_bytes=300_000,
            max_image_pixels=1_000_000,
            upstream_url=upstream + "/v1",
            upstream_timeout_s=1.0,
            upstream_max_bytes=50_000,
        ) as client,
    ):
        yield Guard(client, key)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check(**fields: Any) -> dict[str, Any]:
    return {"json": {"question": "口袋开线怎么办？", "reply": "已为您登记 [score=0.9]", **fields}}


def chat(content: Any = "My pocket seam came open", **fields: Any) -> dict[str, Any]:
    return {"json": {"model": "m", "messages": [{"role": "user", "content": content}], **fields}}


def truncated_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(out, "PNG")
    return out.getvalue()[:-40]


G, IMG, D, R, C = (
    "/v1/guard",
    "/v1/images",
    "/v1/decisions/{decision_id}",
    "/v1/rerank",
    "/v1/chat/completions",
)
BMP = b"BM" + b"\x00" * 60

CASES: list[tuple[str, str, int, str | None, dict[str, Any]]] = [
    # the check API
    (G, "post", 200, None, check()),
    (
        G,
        "post",
        200,
        None,
        check(reply="sorry [score=0.45]", candidates=["a [score=0.2]"], channel="default"),
    ),
    (G, "post", 200, None, check(reply="no [score=0.1]", image={"data": b64(PNG)}, conversation_id="c-1")),
    (G, "post", 200, None, {"data": {"question": "q?", "reply": "r [score=0.55]"}, "files": {"image": PNG}}),
    (G, "post", 400, "invalid_json", {"content": b"{nope", "headers": {"content-type": "application/json"}}),
    (G, "post", 400, "invalid_json", {"json": ["a list"]}),
    (G, "post", 400, "invalid_content_length", {"content": b"{}", "headers": {"content-length": "x"}}),
    (
        G,
        "post",
        400,
        "invalid_multipart",
        {"content": b"--b\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=b"}},
    ),
    (G, "post", 400, "unexpected_file", {"data": {"question": "q", "reply": "r"}, "files": {"photo": PNG}}),
    (G, "post", 403, "channel_forbidden", check(channel="other")),
    (G, "post", 404, "unknown_image", check(image={"id": "0" * 64})),
    (G, "post", 405, "method_not_allowed", {"method": "get"}),
    (G, "post", 413, "body_too_large", check(reply="x" * 400_000)),
    (G, "post", 413, "image_too_many_pixels", check(image={"data": b64(png_header_only(5000, 5000))})),
    (G, "post", 415, "unsupported_image_format", check(image={"data": b64(BMP)})),
    (G, "post", 422, "missing_field", {"json": {"question": "q"}}),
    (G, "post", 422, "wrong_type", check(reply=3)),
    (G, "post", 422, "too_long", check(conversation_id="c" * 201)),
    (G, "post", 422, "invalid_text", check(reply="a\x00b")),
    (G, "post", 422, "empty_reply", check(reply="  ")),
    (G, "post", 422, "empty_question", check(question="")),
    (G, "post", 422, "too_many_candidates", check(candidates=["c"] * 100)),
    (G, "post", 422, "invalid_base64", check(image={"data": "!!!"})),
    (G, "post", 422, "not_an_image", check(image={"data": b64(b"this is not an image at all")})),
    (G, "post", 422, "truncated_image", check(image={"data": b64(truncated_png())})),
    (G, "post", 422, "empty_image", check(image={"data": ""})),
    # photos
    (IMG, "post", 201, None, {"json": {"image": {"data": b64(PNG)}}}),
    (IMG, "post", 201, None, {"files": {"image": PNG}}),
    (IMG, "post", 422, "missing_field", {"json": {}}),
    (IMG, "post", 422, "wrong_type", {"json": {"image": {"data": 1, "id": 2}}}),
    # decisions
    (D, "get", 404, "not_found", {"url": "/v1/decisions/nope"}),
    # rerank
    (R, "post", 200, None, {"json": {"query": "seam open", "documents": ["we fix seams", "hello"]}}),
    (R, "post", 200, None, {"json": {"query": "q", "documents": ["d"], "image": {"data": b64(PNG)}}}),
    (R, "post", 422, "wrong_type", {"json": {"query": "q", "documents": []}}),
    (R, "post", 422, "too_many_documents", {"json": {"query": "q", "documents": ["d"] * 65}}),
    (R, "post", 403, "channel_forbidden", {"json": {"query": "q", "documents": ["d"], "channel": "vip"}}),
    # the proxy
    (C, "post", 200, None, chat()),
    (C, "post", 200, None, chat(stream=True)),
    (
        C,
        "post",
        200,
        None,
        chat(
            [
                {"type": "text", "text": "seam"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(PNG)}},
            ]
        ),
    ),
    (C, "post", 200, None, chat(model="tools")),
    (C, "post", 400, None, chat(model="client-error")),  # the upstream's own 4xx, passed on
    (C, "post", 400, "invalid_json", {"content": b"[", "headers": {"content-type": "application/json"}}),
    (C, "post", 403, "channel_forbidden", chat(channel="vip")),
    (
        C,
        "post",
        422,
        "missing_field",
        {"json": {"model": "m", "messages": [{"role": "system", "content": "x"}]}},
    ),
    (C, "post", 422, "wrong_type", chat(stream="yes")),
    (C, "post", 422, "unsupported", chat(n=2)),
    (C, "post", 422, "invalid_text", chat("a\x00b")),
    (
        C,
        "post",
        422,
        "image_url_not_allowed",
        chat([{"type": "image_url", "image_url": {"url": "https://images.example.com/x.png"}}]),
    ),
    (
        C,
        "post",
        415,
        "unsupported_image_format",
        chat([{"type": "image_url", "image_url": {"url": "data:image/bmp;base64," + b64(BMP)}}]),
    ),
    (C, "post", 502, "upstream_error", chat(model="fail")),
    (C, "post", 502, "upstream_malformed", chat(model="not-json")),
    (C, "post", 502, "upstream_malformed", chat(model="no-stream", stream=True)),
    (C, "post", 502, "upstream_too_large", chat(model="big")),
    (C, "post", 504, "upstream_timeout", chat(model="slow")),
]


def _case_id(case: tuple[str, str, int, str | None, dict[str, Any]]) -> str:
    path, method, status, code, _ = case
    return f"{method.upper()} {path} {status} {code or ''}".strip()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_real_responses_validate_against_the_document(
    guard: Guard, case: tuple[str, str, int, str | None, dict[str, Any]]
) -> None:
    path, method, status, code, kwargs = case
    kwargs = dict(kwargs)
    method_sent = kwargs.pop("method", method)
    if method_sent != method:  # a method the route does not take: described under the route's own
        resp = guard.client.request(
            method_sent.upper(), path, headers={"authorization": f"Bearer {guard.key}"}
        )
        assert resp.status_code == status
        check_against_document(path, method, status, resp.headers, resp.content)
        assert resp.json()["error"]["code"] == code
        return
    resp = guard.call(path, method, status, code, **kwargs)
    if path == C and status == 200:
        assert resp.headers["x-guard-action"] in ("send", "follow_up", "review", "escalate", "unguarded")


def test_a_decision_as_it_is_read_back(guard: Guard) -> None:
    made = guard.call(G, "post", 200, **check(reply="sorry [score=0.45]")).json()
    flush(guard.client)
    got = guard.call(D, "get", 200, url=f"/v1/decisions/{made['decision_id']}").json()
    assert got["state"] == "pending" and got["created_at"].endswith("+00:00")


def test_a_proxy_answer_with_nothing_to_guard_is_marked_and_counted(guard: Guard) -> None:
    metrics = runtime_of(guard.client).metrics
    before = metrics.value("guard_unguarded_total", reason="no_text_to_guard")
    resp = guard.call(C, "post", 200, **chat(model="tools"))
    assert (resp.headers["x-guard-action"], resp.headers["x-guard-reason"]) == (
        "unguarded",
        "no_text_to_guard",
    )
    assert resp.json()["guard"] == {"action": None, "reason": "no_text_to_guard"}
    assert metrics.value("guard_unguarded_total", reason="no_text_to_guard") == before + 1


def test_the_auth_schemes_and_their_refusals(guard: Guard) -> None:
    guard.call(G, "post", 200, auth={"x-guard-key": guard.key}, **check())
    resp = guard.call(G, "post", 401, "unauthorized", auth={}, **check())
    assert resp.headers["www-authenticate"].startswith("Bearer")
    guard.call(G, "post", 401, "unauthorized", auth={"authorization": "Bearer rg_0_wrong"}, **check())
    guard.call(IMG, "post", 401, "unauthorized", auth={"x-guard-key": "wrong"}, json={})
    guard.call(D, "get", 401, "unauthorized", auth={}, url="/v1/decisions/x")
    guard.call(R, "post", 401, "unauthorized", auth={}, json={})
    guard.call(C, "post", 401, "unauthorized", auth={}, **chat())
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["bearerKey"]["scheme"] == "bearer" and schemes["guardKey"]["name"] == "X-Guard-Key"
    assert all(DOC["paths"][p][m]["security"] for p in (G, IMG, D, R, C) for m in DOC["paths"][p])


def test_the_services_errors_have_the_documented_shape(guard: Guard, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime_of(guard.client)

    def down(*_args: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("the database is down"))

    monkeypatch.setattr(rt.store, "get_decision", down)
    guard.call(D, "get", 503, "database_unavailable", url="/v1/decisions/x")
    spool = rt.decision_log._spool
    assert spool is not None

    def full(*_args: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "append", full)
    guard.call(G, "post", 503, "spool_unavailable", **check(reply="full disk [score=0.8]"))
    guard.call(C, "post", 503, "spool_unavailable", **chat())


def test_health_readiness_metrics_and_the_document_itself(guard: Guard) -> None:
    for path, media in [
        ("/healthz", "application/json"),
        ("/readyz", "application/json"),
        ("/metrics", "text/plain"),
    ]:
        resp = guard.client.get(path)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(media)
        check_against_document(path, "get", 200, resp.headers, resp.content)
    resp = guard.client.get("/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert resp.json() == DOC
    validate_spec(resp.json())


# -- every code, both ways -------------------------------------------------------------------------

_RAISED = re.compile(
    r"\b(?:BadRequest|Unauthorized|Forbidden|NotFound|BodyTimeout|BodyTooLarge|InvalidField|ImageError|"
    r"FetchError|Unavailable|UpstreamError|UpstreamTimeout|super\(\)\.__init__|cls)\(\s*\"([a-z0-9_]+)\"",
    re.S,
)
NOT_HTTP = {"invalid_setting", "internal_error", "invalid_form"}
"""ConfigError's code (start-up only), the catch-all of an unexpected failure (never planned), and
``read_form``'s (guard/body.py: the admin pages' forms, answered with a page, not the API's JSON)."""


def raised_codes() -> set[str]:
    found: set[str] = set()
    for path in GUARD.rglob("*.py"):
        if "admin" in path.parts:  # the admin pages answer with pages, not the API's JSON
            continue
        found |= set(_RAISED.findall(path.read_text(encoding="utf-8")))
    return found - NOT_HTTP


_ERROR_OPS = ("check", "register_image", "get_decision", "rerank", "chat_completions")


def _codes(operation: str) -> set[str]:
    return {code for codes in error_codes(operation).values() for code in codes}


def test_every_code_the_guard_raises_is_documented_and_no_other() -> None:
    raised = raised_codes()
    documented = set().union(*(_codes(op) for op in _ERROR_OPS))
    assert len(raised) > 30, "the scan found too few codes to mean anything"
    assert raised - documented == set(), "raised but not in /openapi.json"
    assert documented - raised == {"method_not_allowed", "not_found"} - raised, "documented but never raised"


def test_the_document_is_valid_openapi_3_1() -> None:
    validate_spec(DOC)
    assert DOC["openapi"].startswith("3.1")
    assert {(p, m) for p in DOC["paths"] for m in DOC["paths"][p]} >= {
        (G, "post"),
        (IMG, "post"),
        (D, "get"),
        (R, "post"),
        (C, "post"),
    }


# -- schemathesis against a live guard ---------------------------------------------------------------

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,ignored_auth"
)


def test_schemathesis_against_a_live_guard_finds_no_5xx_and_no_schema_violation(tmp_path: Path) -> None:
    """A bounded run (at most 25 cases per operation and phase, a fixed seed) over every operation."""
    url = f"sqlite:///{tmp_path / 'guard.db'}"
    migrate(url)
    key = new_key(url)
    port = closed_port()
    with serve(UPSTREAM) as upstream:
        env = serve_env(
            url, tmp_path / "spool", GUARD_UPSTREAM_URL=upstream + "/v1", GUARD_UPSTREAM_TIMEOUT_S="5"
        )
        with guard_serve(env, port, tmp_path / "guard.log"):
            run = subprocess.run(
                [
                    str(BIN / "schemathesis"),
                    "run",
                    f"http://127.0.0.1:{port}/openapi.json",
                    "--header",
                    f"Authorization: Bearer {key}",
                    "--header",
                    f"X-Guard-Key: {key}",
                    "--checks",
                    CHECKS,
                    "--max-examples",
                    "25",
                    "--seed",
                    "1",
                    "--workers",
                    "1",
                    "--request-timeout",
                    "10",
                    "--report",
                    "json",
                    "--report-dir",
                    str(tmp_path / "report"),
                ],
                capture_output=True,
                text=True,
                timeout=150,
                env={**env, "NO_COLOR": "1"},
                cwd=tmp_path,  # its own cache folder (.schemathesis) stays out of the checkout
            )
    report = json.loads(next((tmp_path / "report").glob("*.json")).read_text())
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    assert report["failures"] == [] or not report["failures"], summary
    assert report["operations"]["tested"] >= 8, summary
    assert report["test_cases"]["generated"] >= 300, summary
    assert report["test_cases"]["with_failures"] == 0, summary
    cases, operations = report["test_cases"]["generated"], report["operations"]["tested"]
    print(f"schemathesis: {cases} cases over {operations} operations")
