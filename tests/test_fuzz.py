"""Property-based fuzzing of the untrusted inputs (issue 6, "Bad input, fuzzed"): the check API's JSON
and multipart bodies, the policy format, and slow oversized bodies. The image decoder's fuzz run is in
tests/test_fuzz_images.py.

Every property has an oracle that can fail: a 5xx, a non-JSON 4xx, text that is stored changed, a
policy parser that raises something other than PolicyError, or a body that is read to its end.
"""

from __future__ import annotations

import itertools
import json
import math
import select
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from guard.app import create_app
from guard.images import ErrorCode
from guard.policies import ACTIONS, TEMPLATE_KEYS, Policy, PolicyError, decide, parse_policy
from guard.settings import Settings
from guard.store import migrate
from tests.apptools import b64, flush, guard_client, make_users, png_bytes, queries_of, runtime_of, signed_in
from tests.fakes import FakeScorer
from tests.serving import serve

API_FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PURE_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LIMITS = {"question": 4_000, "reply": 8_000, "channel": 100, "conversation_id": 200, "locale": 16}
TEXT_FIELDS = tuple(LIMITS)
IMAGE_CODES = set(get_args(ErrorCode))

# Fragments that have broken real systems: markup, SQL, template syntax, bidi and zero-width
# controls, combining marks, ZWJ emoji sequences, NUL and other control characters.
NASTY = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'; DROP TABLE decisions; --",
    "' OR '1'='1",
    "Robert'); DELETE FROM queue_items WHERE ('1'='1",
    "{{ 7*7 }}{% raw %}${jndi:ldap://x}%s%n",
    "\u202e\u200f\u061c",  # RTL override, RLM, Arabic letter mark
    "\u200b\u200c\u200d\u2060\ufeff",  # zero-width space/non-joiner/joiner, word joiner, BOM
    "e\u0301\u0308\u0334\u20dd",  # stacked combining marks
    "👩\u200d👩\u200d👧\u200d👦🏳️\u200d🌈\U0001f600",
    "\x00",
    "\r\n\t\x0b\x0c\x1b[31m\x7f\u0085\u2028\u2029",
    '\\"\\u0000',
    "口袋开线怎么办？",
    "[score=0.55]",
]
nasty_text = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=12)), max_size=6).map("".join)
lone_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
# Python strs with lone surrogates; json.dumps writes them as raw "\ud800" escapes.
surrogate_text = st.lists(st.one_of(nasty_text, lone_surrogate), min_size=1, max_size=4).map("".join)
huge_text = st.sampled_from(
    [
        "",
        " ",
        "\u200b" * 50,
        "x" * 16,
        "x" * 17,
        "x" * 100,
        "x" * 101,
        "x" * 200,
        "x" * 201,
        "é" * 4_000,
        "😀" * 4_001,
        "x" * 8_000,
        "y" * 8_001,
        "<script>" * 1_200,
    ]
)
field_text = st.one_of(nasty_text, surrogate_text, huge_text)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
any_value = st.one_of(field_text, json_values)


def assert_clean_response(r: Any) -> dict[str, Any]:
    """< 500, JSON, and for a 4xx the documented error object."""
    assert r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body: dict[str, Any] = r.json()
    if r.status_code >= 400:
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["code"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'guard.db'}"
    with guard_client(url) as c:
        yield c


@pytest.fixture(scope="module")
def small_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz_small') / 'guard.db'}"
    with guard_client(url, max_body_bytes=64 * 1024) as c:
        yield c


# --- the check API's JSON -------------------------------------------------------------------------


@API_FUZZ
@given(
    doc=st.fixed_dictionaries(
        {},
        optional={
            "question": any_value,
            "reply": any_value,
            "channel": any_value,
            "conversation_id": any_value,
            "locale": any_value,
            "candidates": st.one_of(st.lists(nasty_text, max_size=20), json_values),
            "image": json_values,
        },
    ),
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
def test_any_json_fields_give_a_clean_answer(
    client: TestClient, doc: dict[str, Any], extra: dict[str, Any]
) -> None:
    r = client.post(
        "/v1/guard", content=json.dumps({**extra, **doc}), headers={"content-type": "application/json"}
    )
    body = assert_clean_response(r)
    if r.status_code == 200:
        assert body["action"] in ACTIONS


@API_FUZZ
@given(doc=json_values | st.text(max_size=30) | st.binary(max_size=30))
def test_any_json_document_gives_a_clean_answer(client: TestClient, doc: Any) -> None:
    content = doc if isinstance(doc, bytes) else json.dumps(doc)
    r = client.post("/v1/guard", content=content, headers={"content-type": "application/json"})
    assert_clean_response(r)
    if not isinstance(doc, dict):
        assert r.status_code in (400, 422), r.text


def expected_status(doc: dict[str, Any]) -> int:
    """What the API promises for a document whose fields are all strings (docs/api.md)."""
    for name, value in doc.items():
        too_long = len(value) > LIMITS[name]
        unstorable = "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        if too_long or unstorable:
            return 422
    if not doc["reply"].strip() or not doc["question"].strip():
        return 422
    return 200


@API_FUZZ
@given(
    question=field_text,
    reply=field_text,
    optional=st.fixed_dictionaries({}, optional={name: field_text for name in TEXT_FIELDS[2:]}),
    ascii_only=st.booleans(),
)
def test_text_fields_are_refused_exactly_when_invalid_and_otherwise_stored_verbatim(
    client: TestClient, question: str, reply: str, optional: dict[str, str], ascii_only: bool
) -> None:
    text = json.dumps({"question": question, "reply": reply, **optional}, ensure_ascii=ascii_only)
    raw = text.encode("utf-8", "surrogatepass")  # with ensure_ascii=False: invalid UTF-8 for surrogates
    r = client.post("/v1/guard", content=raw, headers={"content-type": "application/json"})
    body = assert_clean_response(r)
    # What the server sees: json.loads(bytes) decodes with surrogatepass, and "\ud83d\ude00" pairs up.
    sent: dict[str, str] = json.loads(raw)
    assert r.status_code == expected_status(sent), (sent, body)
    if r.status_code != 200:
        return
    flush(client)
    decision = client.get(f"/v1/decisions/{body['decision_id']}")
    assert decision.status_code == 200, decision.text
    assert decision.json()["draft"] == sent["reply"]
    assert decision.json()["conversation_id"] == sent.get("conversation_id")
    row = runtime_of(client).store.get_decision(body["decision_id"])
    assert row is not None and row.row.question == sent["question"] and row.row.draft == sent["reply"]


@pytest.fixture
def admin_client(sqlite_url: str, cheap_hashes: None) -> Iterator[TestClient]:
    with guard_client(sqlite_url, secret_key="test-secret-key") as c:
        make_users(queries_of(c))
        yield c


def test_markup_stored_verbatim_is_rendered_escaped_on_the_case_page(admin_client: TestClient) -> None:
    attack = "<script>alert(1)</script>"
    sql = "'; DROP TABLE decisions; --"
    r = admin_client.post(
        "/v1/guard",
        json={
            "question": f"{attack} {sql} 口袋开线",
            "reply": f"{attack} [score=0.1]",
            "conversation_id": attack,
            "candidates": [f"{attack} [score=0.05]"],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["escalation_id"] is not None
    flush(admin_client)
    row = runtime_of(admin_client).store.get_decision(body["decision_id"])
    assert row is not None and row.row.question == f"{attack} {sql} 口袋开线"
    assert row.row.conversation_id == attack
    signed_in(admin_client, "sup")
    page = admin_client.get(f"/admin/cases/{body['escalation_id']}")
    assert page.status_code == 200
    assert attack not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "DROP TABLE decisions" in page.text  # the SQL fragment is shown as text, and the table survived
    assert runtime_of(admin_client).store.count_decisions() == 1


# --- multipart ------------------------------------------------------------------------------------

BOUNDARY = "fuzzboundary7MA4YWxkTrZu0gW"


def multipart(parts: Sequence[tuple[bytes, bytes | None, bytes]]) -> bytes:
    """(name, filename or None, value) parts, written by hand so names may hold anything."""
    out = b""
    for name, filename, value in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + BOUNDARY.encode() + b"--\r\n"


def post_multipart(client: TestClient, body: bytes) -> Any:
    return client.post(
        "/v1/guard", content=body, headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    )


part_name = st.one_of(
    st.sampled_from([b"question", b"reply", b"channel", b"locale", b"candidates", b"image", b""]),
    st.binary(max_size=12),
    nasty_text.map(lambda t: t.encode("utf-8")),
)


@API_FUZZ
@given(
    parts=st.lists(
        st.tuples(
            part_name,
            st.none() | st.binary(max_size=8),
            st.binary(max_size=64) | field_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
        ),
        max_size=12,
    ),
    truncate=st.none() | st.integers(0, 400),
)
def test_random_multipart_gives_a_clean_answer(
    client: TestClient, parts: list[tuple[bytes, bytes | None, bytes]], truncate: int | None
) -> None:
    body = multipart(parts)
    if truncate is not None:
        body = body[:truncate]
    assert_clean_response(post_multipart(client, body))


def as_multipart_text(value: bytes) -> str:
    """What a multipart text field reads as: UTF-8, or Latin-1 when it is not valid UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


@API_FUZZ
@given(
    question=field_text,
    reply=field_text,
    candidates=st.lists(nasty_text, max_size=20),
)
def test_multipart_text_fields_follow_the_same_rules_as_json(
    client: TestClient, question: str, reply: str, candidates: list[str]
) -> None:
    parts: list[tuple[bytes, bytes | None, bytes]] = [
        (b"question", None, question.encode("utf-8", "surrogatepass"))
    ]
    parts += [(b"reply", None, reply.encode("utf-8", "surrogatepass"))]
    parts += [(b"candidates", None, c.encode("utf-8")) for c in candidates]
    r = post_multipart(client, multipart(parts))
    body = assert_clean_response(r)
    if len(parts) > 32:
        assert (r.status_code, body["error"]["code"]) == (400, "invalid_multipart")
        return
    sent = {"question": as_multipart_text(parts[0][2]), "reply": as_multipart_text(parts[1][2])}
    expected = expected_status(sent)
    if expected == 200 and (len(candidates) > 16 or any("\x00" in c for c in candidates)):
        expected = 422
    assert r.status_code == expected, (sent, body)
    if r.status_code == 200:
        flush(client)
        row = runtime_of(client).store.get_decision(body["decision_id"])
        assert row is not None and row.row.question == sent["question"]


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.99])
def test_a_cut_off_multipart_body_is_a_clean_400_not_a_check_without_its_photo(
    client: TestClient, keep: float
) -> None:
    parts = [(b"question", None, b"q"), (b"reply", None, b"r"), (b"image", b"p.png", png_bytes())]
    body = multipart(parts)
    r = post_multipart(client, body[: int(len(body) * keep)])
    assert (r.status_code, assert_clean_response(r)["error"]["code"]) == (400, "invalid_multipart")
    assert post_multipart(client, body).status_code == 200  # the whole body is fine


@pytest.mark.parametrize("count", [33, 2_000])
def test_thousands_of_fields_are_a_clean_400(client: TestClient, count: int) -> None:
    parts: list[tuple[bytes, bytes | None, bytes]] = [(b"question", None, b"q"), (b"reply", None, b"r")]
    parts += [(f"f{i}".encode(), None, b"v") for i in range(count)]
    r = post_multipart(client, multipart(parts))
    body = assert_clean_response(r)
    assert (r.status_code, body["error"]["code"]) == (400, "invalid_multipart")


def test_many_files_are_a_clean_400(client: TestClient) -> None:
    parts: list[tuple[bytes, bytes | None, bytes]] = [(b"question", None, b"q"), (b"reply", None, b"r")]
    parts += [(b"image", b"p.png", png_bytes()) for _ in range(50)]
    r = post_multipart(client, multipart(parts))
    body = assert_clean_response(r)
    assert (r.status_code, body["error"]["code"]) == (400, "invalid_multipart")


@pytest.mark.parametrize("filename", [b"p.png", None])
def test_a_giant_part_over_the_limit_is_413(small_client: TestClient, filename: bytes | None) -> None:
    giant = b"\x89PNG\r\n\x1a\n" + b"\x00" * (80 * 1024)
    parts = [(b"question", None, b"q"), (b"reply", None, b"r"), (b"image", filename, giant)]
    r = post_multipart(small_client, multipart(parts))
    body = assert_clean_response(r)
    assert (r.status_code, body["error"]["code"]) == (413, "body_too_large")


def test_a_giant_json_string_over_the_limit_is_413(small_client: TestClient) -> None:
    r = small_client.post("/v1/guard", json={"question": "q", "reply": "r", "image": "A" * 80_000})
    assert (r.status_code, assert_clean_response(r)["error"]["code"]) == (413, "body_too_large")


MAGICS = [b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x01\x00\x00WEBP", b"GIF89a", b"BM", b"%PDF"]


@API_FUZZ
@given(prefix=st.sampled_from(MAGICS), rest=st.binary(max_size=512), as_file=st.booleans())
def test_random_bytes_as_the_image_are_an_image_error(
    client: TestClient, prefix: bytes, rest: bytes, as_file: bool
) -> None:
    data = prefix + rest
    if as_file:
        parts = [(b"question", None, b"q"), (b"reply", None, b"r"), (b"image", b"photo.jpg", data)]
        r = post_multipart(client, multipart(parts))
    else:
        r = client.post("/v1/guard", json={"question": "q", "reply": "r", "image": {"data": b64(data)}})
    body = assert_clean_response(r)
    assert r.status_code in (413, 415, 422), body
    assert body["error"]["code"] in IMAGE_CODES


# --- the policy format ----------------------------------------------------------------------------

number = st.one_of(
    st.floats(),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([0, 1, 0.0, 1.0, 0.5, -0.0, 1e-300, 1 - 1e-16, 10**400, -(10**400), True]),
)
band_doc = st.fixed_dictionaries(
    {},
    optional={
        "lo": number | json_values,
        "hi": number | json_values,
        "action": st.sampled_from([*ACTIONS, "SEND", "", "delete"]) | json_values,
    },
)
policy_doc = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "channel": st.text(max_size=6) | json_values,
            "bands": st.lists(band_doc, max_size=6) | json_values,
            "on_error": st.sampled_from(ACTIONS) | json_values,
            "instruction": st.text(max_size=10) | json_values,
            "templates": st.dictionaries(
                st.sampled_from([*TEMPLATE_KEYS, "x"]), st.text(max_size=5) | json_values, max_size=3
            )
            | json_values,
            "version": json_values,
        },
    ),
)


@st.composite
def valid_policy_doc(draw: st.DrawFn) -> dict[str, Any]:
    cuts = sorted(set(draw(st.lists(st.floats(0, 1, exclude_min=True, exclude_max=True), max_size=6))))
    edges = [0, *cuts, 1]
    bands = [
        {"lo": lo, "hi": hi, "action": draw(st.sampled_from(ACTIONS))} for lo, hi in itertools.pairwise(edges)
    ]
    return {"bands": draw(st.permutations(bands)), "on_error": draw(st.sampled_from(ACTIONS))}


def assert_covers_unit_interval(policy: Policy, scores: list[float]) -> None:
    for score in [0.0, 1.0, *scores, *(b.lo for b in policy.bands), *(b.hi for b in policy.bands)]:
        verdict = decide(policy, score)
        assert verdict.action in ACTIONS
        assert not verdict.degraded and verdict.band is not None, (policy.bands, score)


@PURE_FUZZ
@given(doc=policy_doc, scores=st.lists(st.floats(0, 1), max_size=10))
def test_parse_policy_returns_a_policy_or_raises_policy_error(doc: Any, scores: list[float]) -> None:
    try:
        policy = parse_policy(doc)
    except PolicyError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert_covers_unit_interval(policy, scores)


@PURE_FUZZ
@given(doc=valid_policy_doc(), scores=st.lists(st.floats(0, 1), max_size=10))
def test_a_policy_whose_bands_tile_the_unit_interval_is_accepted(
    doc: dict[str, Any], scores: list[float]
) -> None:
    policy = parse_policy(doc)
    assert len(policy.bands) == len(doc["bands"])
    assert_covers_unit_interval(policy, scores)
    for bad in (math.nan, math.inf, -0.1, 1.1):
        assert decide(policy, bad).degraded


# --- a body over the limit, sent slowly -----------------------------------------------------------


@contextmanager
def _chunked_post(settings_: Settings) -> Iterator[socket.socket]:
    """A guard served for real, and a raw connection to it that has sent the head of a chunked
    ``POST /v1/guard`` (the test sends the body, at its own pace)."""
    with serve(create_app(settings_, scorer=FakeScorer())) as base_url:
        host, port = urlsplit(base_url).hostname, urlsplit(base_url).port
        assert host is not None and port is not None
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(
                b"POST /v1/guard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            yield s


def test_a_slow_chunked_body_over_the_limit_is_refused_before_it_is_all_sent(sqlite_url: str) -> None:
    migrate(sqlite_url)
    limit = 16 * 1024
    settings_ = Settings(database_url=sqlite_url, max_body_bytes=limit, body_timeout_s=20.0)
    chunk = b"x" * 1024
    total_chunks = 200  # 200 kB: far over the limit
    with _chunked_post(settings_) as s:
        sent = 0
        answered = False
        for _ in range(total_chunks):
            try:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            sent += 1
            time.sleep(0.01)
            if select.select([s], [], [], 0)[0]:
                answered = True
                break
        assert answered, "the server read the whole 200 kB body without answering"
        answer = s.recv(65536).decode(errors="replace")
    assert sent * len(chunk) < limit + 8 * len(chunk), sent  # stopped soon after the limit
    assert answer.startswith("HTTP/1.1 413"), answer
    assert "body_too_large" in answer


def test_a_slow_body_under_the_limit_times_out(tmp_path: Path, sqlite_url: str) -> None:
    migrate(sqlite_url)
    settings_ = Settings(database_url=sqlite_url, body_timeout_s=0.5)
    with _chunked_post(settings_) as s:
        started = time.monotonic()
        answered = False
        while time.monotonic() - started < 8:  # generous: no hang
            try:
                s.sendall(b"1\r\n \r\n")
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            if select.select([s], [], [], 0.1)[0]:
                answered = True
                break
        assert answered, "a trickling body held the connection for 8 s"
        answer = s.recv(65536).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408") and "body_timeout" in answer, answer
