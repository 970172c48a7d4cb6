"""The remote scorer: against a real Infinity server (its own venv, a tiny local cross-encoder), and
against in-process fakes for the retry, timeout and bad-answer paths."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import BaseModel, ValidationError

from guard.app import load_scorer
from guard.errors import ScorerError
from guard.policies import default_policy
from guard.scoring.base import DEFAULT_INSTRUCTION, ScoreInput
from guard.scoring.remote import RemoteConfig, RemoteScorer, image_data_url
from guard.scoring.score_map import load_score_map
from guard.settings import Settings
from tests import vllm_protocol as vllm
from tests.apptools import guard_client, runtime_of
from tests.serving import closed_port, stop

ROOT = Path(__file__).resolve().parents[1]
INFINITY = ROOT / ".venv-infinity" / "bin" / "infinity_emb"


def scorer(handler: Any, **cfg: Any) -> tuple[RemoteScorer, list[float]]:
    sleeps: list[float] = []
    c = RemoteConfig(**{"url": "http://rerank.test/v1", "model": "m", **cfg})
    s = RemoteScorer(
        c,
        load_score_map(None, backend="remote"),
        transport=httpx2.MockTransport(handler),
        sleep=sleeps.append,
    )
    return s, sleeps


def ranked(scores: list[float]) -> dict[str, Any]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return {"results": [{"index": i, "relevance_score": scores[i]} for i in order]}


# -- in-process fakes ------------------------------------------------------------------------


def test_request_shape_grouping_and_scores() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url == "http://rerank.test/v1/rerank"
        assert request.headers["authorization"] == "Bearer k-1"
        body = json.loads(request.content)
        seen.append(body)
        return httpx2.Response(200, json=ranked([0.9, 0.2, 0.5][: len(body["documents"])]))

    s, _ = scorer(handler, api_key="k-1")
    items = [
        ScoreInput("seam open", "we fix it"),
        ScoreInput("seam open", "thanks"),
        ScoreInput("parcel crushed", "refund", image_text="ORDER 1029"),
        ScoreInput("seam open", "return it", image=Image.new("RGB", (8, 8))),
    ]
    results = s.score_batch(items)
    assert [b["query"] for b in seen] == ["seam open", "parcel crushed\nORDER 1029"]
    assert seen[0] == {
        "query": "seam open",
        "documents": ["we fix it", "thanks", "return it"],
        "model": "m",
    }
    # identity calibration: the server's probability is the score
    assert [r.score for r in results] == pytest.approx([0.9, 0.2, 0.9, 0.5])
    assert results[2].inputs_used == ("question", "image_text", "reply")
    assert results[3].inputs_used == ("question", "reply")  # text query: the photo was not sent
    assert s.version.startswith("remote:rerank:rerank.test:m:text:cal-identity-1-")


def test_score_api_multimodal_wraps_the_photo_and_question_in_a_list() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url == "http://rerank.test/v1/score"
        seen.append(json.loads(request.content))
        return httpx2.Response(200, json={"data": [{"index": 0, "object": "score", "score": 0.7}]})

    s, _ = scorer(handler, api="score", query="multimodal")
    photo = Image.new("RGB", (2000, 2000), "red")
    [r] = s.score_batch([ScoreInput("what is this?", "a torn seam", image_text="SALE", image=photo)])
    [query] = seen[0]["queries"]
    assert query["content"] == [
        {"type": "image_url", "image_url": {"url": image_data_url(photo)}},
        {"type": "text", "text": "what is this?"},  # the photo is sent: the text read from it is not
    ]
    assert query["content"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert seen[0]["documents"] == ["a torn seam"] and seen[0]["model"] == "m"
    assert r.inputs_used == ("question", "image", "reply")
    assert r.score == pytest.approx(0.7)


def test_document_layout_puts_photo_and_question_in_the_document_slot() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url == "http://rerank.test/v1/rerank"
        body = json.loads(request.content)
        seen.append(body)
        return httpx2.Response(200, json=ranked([0.3, 0.8][: len(body["documents"])]))

    s, _ = scorer(handler, query="document")
    photo = Image.new("RGB", (30, 20), "blue")
    results = s.score_batch(
        [
            ScoreInput("seam open", "we fix it", image=photo),
            ScoreInput("parcel crushed", "we fix it", image_text="ORDER 1029"),
        ]
    )
    assert seen == [
        {
            "query": "we fix it",
            "documents": [
                {
                    "content": [
                        {"type": "image_url", "image_url": {"url": image_data_url(photo)}},
                        {"type": "text", "text": "seam open"},
                    ]
                },
                "parcel crushed\nORDER 1029",
            ],
            "model": "m",
        }
    ]
    assert [r.score for r in results] == pytest.approx([0.3, 0.8])
    assert [r.inputs_used for r in results] == [
        ("question", "image", "reply"),
        ("question", "image_text", "reply"),
    ]


# -- every layout against vLLM's request schema and pairing rules ------------------------------

PHOTOS = [Image.new("RGB", (16, 12), c) for c in ("red", "green", "blue")]
PHOTO_OF_URL = {image_data_url(p): i for i, p in enumerate(PHOTOS)}
LAYOUTS = [("rerank", "text"), ("rerank", "document"), ("score", "text"), ("score", "document"),
           ("score", "multimodal")]  # fmt: skip


def _side(one: vllm.Input) -> tuple[str, int | None]:
    """(text, photo number) of one vLLM input."""
    if isinstance(one, str):
        return one, None
    texts = [p.text for p in one if isinstance(p, vllm.TextPart)]
    photos = [PHOTO_OF_URL[p.image_url.url] for p in one if isinstance(p, vllm.ImagePart)]
    assert len(texts) <= 1 and len(photos) <= 1, one
    return (texts[0] if texts else ""), (photos[0] if photos else None)


def _relevance(question: str, photo: int | None, reply: str, instruction: object = None) -> float:
    """The fake server's deterministic score of one pair under the instruction its score template
    writes (None: the template's own default), in (0, 1)."""
    return (zlib.crc32(f"{question}|{photo}|{reply}|{instruction}".encode()) % 997 + 1) / 999


REFUND, REPAIR = "Judge whether the reply offers a refund.", "判断回复是否给出了修补办法。"
INSTRUCTIONS = [DEFAULT_INSTRUCTION, REFUND, " 判断回复是否解决了问题。 "]
MODES = ["none", "template_kwargs"]
BEFORE = {"rerank": vllm.RerankRequest, "score": vllm.ScoreRequest}
"""vLLM's requests before vllm-project/vllm#42412 (GUARD_REMOTE_INSTRUCTION=none sends nothing more)."""
SINCE = {"rerank": vllm.InstructedRerankRequest, "score": vllm.InstructedScoreRequest}


def _validates(model: type[BaseModel], body: dict[str, Any]) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


def _pairs(req: BaseModel) -> list[tuple[vllm.Input, vllm.Input]]:
    if isinstance(req, vllm.RerankRequest | vllm.InstructedRerankRequest):
        return vllm.pairs(req.query, req.documents)
    assert isinstance(req, vllm.ScoreRequest | vllm.InstructedScoreRequest)
    return vllm.pairs(req.queries, req.documents)


items_st = st.lists(
    st.builds(
        lambda q, r, ocr, photo, instruction: ScoreInput(
            q, r, instruction=instruction, image_text=ocr, image=None if photo is None else PHOTOS[photo]
        ),
        st.sampled_from(["seam open", "parcel crushed", "口袋开线了", ""]),
        st.sampled_from(["we fix it", "thanks", "退款已发起", ""]),
        st.sampled_from([None, "", "ORDER 1029"]),
        st.sampled_from([None, 0, 1, 2]),
        st.sampled_from(INSTRUCTIONS),
    ),
    min_size=1,
    max_size=7,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=items_st, layout=st.sampled_from(LAYOUTS), mode=st.sampled_from(MODES))
def test_every_layout_is_a_valid_vllm_request_pairing_each_item_with_its_own_inputs(
    items: list[ScoreInput], layout: tuple[str, str], mode: str
) -> None:
    api, query = layout
    requests = 0
    older_reads: list[bool] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal requests
        requests += 1
        body = json.loads(request.content)
        older_reads.append(_validates(BEFORE[api], body))
        req = (BEFORE if mode == "none" else SINCE)[api].model_validate(body)
        instruction = vllm.template_kwargs(req).get("instruction")  # what the score template writes
        scores = []
        for q, d in _pairs(req):
            (qt, qp), (dt, dp) = _side(q), _side(d)
            if query == "document":  # the reply is the query; the photo and question the document
                assert qp is None
                scores.append(_relevance(dt, dp, qt, instruction))
            else:
                assert dp is None
                scores.append(_relevance(qt, qp, dt, instruction))
        if api == "rerank":
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            return httpx2.Response(
                200, json={"results": [{"index": i, "relevance_score": scores[i]} for i in order]}
            )
        return httpx2.Response(200, json={"data": [{"index": i, "score": v} for i, v in enumerate(scores)]})

    s, _ = scorer(handler, api=api, query=query, instruction=mode)
    results = s.score_batch(items)
    assert len(results) == len(items)
    sent = mode == "template_kwargs"
    # Without the setting the requests are exactly the older ones; with it, an older vLLM would not
    # read them as they are meant (its OpenAIBaseModel would drop chat_template_kwargs).
    assert older_reads == [not sent] * requests
    for it, r in zip(items, results, strict=True):
        sends_photo = query != "text" and it.image is not None
        photo = PHOTOS.index(it.image) if sends_photo else None
        ocr = bool(it.image_text) and not sends_photo
        question = f"{it.question}\n{it.image_text}".strip() if ocr else it.question
        instruction = it.instruction.strip() if sent else None
        assert r.score == pytest.approx(_relevance(question, photo, it.reply, instruction))
        assert r.instruction_used is sent, "instruction_used says whether the instruction was sent"
        assert r.inputs_used == (
            "question",
            *(["image_text"] if ocr else []),
            *(["image"] if sends_photo else []),
            "reply",
        )
    assert requests <= len(items)
    if not sent:  # the instruction never splits a request it is not sent in
        assert requests == len({s.group_key(it)[:2] for it in items})


# -- the instruction, sent in chat_template_kwargs --------------------------------------------------


@pytest.mark.parametrize("api", ["rerank", "score"])
def test_the_instruction_goes_in_chat_template_kwargs_one_request_per_instruction(api: str) -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        seen.append(body)
        n = len(body["documents"])
        if api == "rerank":
            return httpx2.Response(200, json=ranked([0.5] * n))
        return httpx2.Response(200, json={"data": [{"index": i, "score": 0.5} for i in range(n)]})

    refund, fix = REFUND, REPAIR
    items = [
        ScoreInput("seam open", "we fix it", instruction=refund),
        ScoreInput("seam open", "we fix it", instruction=fix),
        ScoreInput("seam open", "thanks", instruction=refund),
    ]
    s, _ = scorer(handler, api=api, instruction="template_kwargs")
    results = s.score_batch(items)
    # Two instructions in one batch: two requests, never one request with one of them.
    assert [b["chat_template_kwargs"] for b in seen] == [{"instruction": refund}, {"instruction": fix}]
    assert [b["documents"] for b in seen] == [["we fix it", "thanks"], ["we fix it"]]
    assert {k: v for k, v in seen[0].items() if k != "documents"} != {
        k: v for k, v in seen[1].items() if k != "documents"
    }
    for body in seen:
        req = SINCE[api].model_validate(body)
        assert vllm.template_kwargs(req) == body["chat_template_kwargs"]
        assert not _validates(BEFORE[api], body), "a request older vLLM would not read as meant"
    assert all(r.instruction_used for r in results)
    assert s.version.startswith(f"remote:{api}:rerank.test:m:text+instruction:cal-identity-1-")

    # Off (the default): one request as before, nothing more in it, and instruction_used false.
    seen.clear()
    off, _ = scorer(handler, api=api)
    results = off.score_batch(items)
    assert len(seen) == 1 and "chat_template_kwargs" not in seen[0]
    assert BEFORE[api].model_validate(seen[0]) is not None
    assert not any(r.instruction_used for r in results)
    assert off.version.startswith(f"remote:{api}:rerank.test:m:text:cal-identity-1-")
    assert off.version != s.version  # a score cached without the instruction is not served with it


@pytest.mark.parametrize("mode", MODES)
def test_two_channels_with_their_own_instructions_through_the_guard(sqlite_url: str, mode: str) -> None:
    """Each channel's policy instruction reaches the server in its own requests, and each decision
    says it was used; with the setting off, the requests are as before and it says it was not."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        bodies.append(body)
        said = body.get("chat_template_kwargs", {}).get("instruction")
        score = 0.9 if said == REFUND else 0.3
        return httpx2.Response(200, json=ranked([score] * len(body["documents"])))

    remote, _ = scorer(handler, instruction=mode)
    with guard_client(sqlite_url, remote, score_timeout_s=5.0) as client:
        store = runtime_of(client).store
        for channel, instruction in (("refunds", REFUND), ("repairs", REPAIR)):
            store.publish_policy(
                dataclasses.replace(default_policy(channel), instruction=instruction), author="test"
            )
        runtime_of(client).pipeline.policies.invalidate()
        answers = {
            channel: client.post(
                "/v1/guard",
                json={"question": "The seam came open", "reply": "We will fix it", "channel": channel},
            ).json()
            for channel in ("refunds", "repairs")
        }
    sent = mode == "template_kwargs"
    assert [a["instruction_used"] for a in answers.values()] == [sent, sent]
    if sent:
        assert [b["chat_template_kwargs"]["instruction"] for b in bodies] == [REFUND, REPAIR]
        assert bodies[0] != bodies[1]
        assert (answers["refunds"]["score"], answers["repairs"]["score"]) == pytest.approx((0.9, 0.3))
    else:
        plain = {"query": "The seam came open", "documents": ["We will fix it"], "model": "m"}
        assert bodies[0] == bodies[1] == plain
        assert answers["refunds"]["score"] == answers["repairs"]["score"] == pytest.approx(0.3)


def test_a_bare_multimodal_rerank_query_is_split_by_vllm_so_the_guard_refuses_it() -> None:
    photo = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}}
    text = {"type": "text", "text": "seam open"}
    req = vllm.RerankRequest.model_validate({"query": {"content": [photo, text]}, "documents": ["a", "b"]})
    q0, q1 = (q for q, _ in vllm.pairs(req.query, req.documents))
    assert _side_types(q0) == ["image_url"] and _side_types(q1) == ["text"]  # photo and question apart
    with pytest.raises(ScorerError, match="GUARD_REMOTE_QUERY=multimodal needs GUARD_REMOTE_API=score"):
        scorer(lambda r: httpx2.Response(500), query="multimodal")
    with pytest.raises(ScorerError, match="needs GUARD_REMOTE_API=rerank or score"):
        scorer(lambda r: httpx2.Response(500), api="tei", query="document")


def _side_types(one: vllm.Input) -> list[str]:
    assert isinstance(one, list)
    return [p.type for p in one]


def test_tei_shape() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        assert body == {"query": "q", "texts": ["a", "b"], "raw_scores": False, "truncate": True}
        return httpx2.Response(200, json=[{"index": 1, "score": 0.1}, {"index": 0, "score": 0.8}])

    s, _ = scorer(handler, api="tei", url="http://tei.test")
    assert [r.score for r in s.score_batch([ScoreInput("q", "a"), ScoreInput("q", "b")])] == pytest.approx(
        [0.8, 0.1]
    )


def test_retries_on_5xx_429_and_connection_errors_then_succeeds() -> None:
    answers: list[Any] = [
        httpx2.Response(503, text="loading"),
        httpx2.ConnectError("refused"),
        httpx2.Response(429, text="slow down"),
        httpx2.Response(200, json=ranked([0.6])),
    ]
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        assert isinstance(a, httpx2.Response)
        return a

    s, sleeps = scorer(handler, retries=3, backoff_s=0.1)
    assert s.score_batch([ScoreInput("q", "r")])[0].score == pytest.approx(0.6)
    assert calls == 4
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])


def test_gives_up_after_the_retries() -> None:
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        raise httpx2.ReadTimeout("slow", request=request)

    s, _ = scorer(handler, retries=2)
    with pytest.raises(ScorerError, match=r"failed 3 time\(s\); last: timed out"):
        s.score_batch([ScoreInput("q", "r")])
    assert calls == 3


def test_a_client_error_is_not_retried() -> None:
    calls = 0

    def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        return httpx2.Response(404, json={"detail": "model 'm' not found"})

    s, _ = scorer(handler)
    with pytest.raises(ScorerError, match=r"said HTTP 404: .*model 'm' not found"):
        s.score_batch([ScoreInput("q", "r")])
    assert calls == 1


@pytest.mark.parametrize(
    "answer",
    [
        {"results": [{"index": 0, "relevance_score": 0.5}]},  # one of two
        {"results": [{"index": 0, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.4}]},
        {"results": [{"index": 0, "relevance_score": "high"}, {"index": 1, "relevance_score": 0.4}]},
        {"results": [{"index": 0, "relevance_score": math.nan}, {"index": 1, "relevance_score": 0.4}]},
        {"object": "error"},
    ],
)
def test_an_answer_that_does_not_fit_is_an_error(answer: dict[str, Any]) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=json.dumps(answer, allow_nan=True).encode())

    s, _ = scorer(handler)
    with pytest.raises(ScorerError):
        s.score_batch([ScoreInput("q", "a"), ScoreInput("q", "b")])


class _Slow(BaseHTTPRequestHandler):
    delay = 2.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        body = json.dumps(ranked([0.5])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def test_a_hung_server_costs_the_timeout_per_attempt(slow_server: str) -> None:
    s = RemoteScorer(
        RemoteConfig(url=slow_server, timeout_s=0.2, retries=1, backoff_s=0.01),
        load_score_map(None, backend="remote"),
    )
    t = time.perf_counter()
    with pytest.raises(ScorerError, match=r"failed 2 time\(s\); last: timed out after 0.2s"):
        s.score_batch([ScoreInput("q", "r")])
    assert time.perf_counter() - t < 1.5
    s.close()


def test_a_closed_port_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = RemoteScorer(
        RemoteConfig(url=f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01),
        load_score_map(None, backend="remote"),
    )
    with pytest.raises(ScorerError, match="ConnectError"):
        s.score_batch([ScoreInput("q", "r")])


def test_bad_settings_fail_at_start_up() -> None:
    with pytest.raises(ScorerError, match="GUARD_REMOTE_URL is not set"):
        load_scorer(Settings(scorer="remote"))
    with pytest.raises(ScorerError, match="must be an http"):
        load_scorer(Settings(scorer="remote", remote_url="gpu-1:8000"))
    with pytest.raises(ScorerError, match="GUARD_REMOTE_QUERY='photo'"):
        load_scorer(Settings(scorer="remote", remote_url="http://gpu-1:8000", remote_query="photo"))
    with pytest.raises(ScorerError, match="cannot read the remote calibration"):
        load_scorer(Settings(scorer="remote", remote_url="http://x:1", model_calibration="/nonexistent.json"))
    with pytest.raises(ScorerError, match="GUARD_REMOTE_INSTRUCTION=template_kwargs needs GUARD_REMOTE_API"):
        load_scorer(
            Settings(
                scorer="remote",
                remote_url="http://x:1",
                remote_api="tei",
                remote_instruction="template_kwargs",
            )
        )
    with pytest.raises(ScorerError, match="GUARD_REMOTE_INSTRUCTION='system'"):
        scorer(lambda r: httpx2.Response(500), instruction="system")


# -- a real server: Infinity serving a tiny cross-encoder built here ---------------------------


@pytest.fixture(scope="module")
def infinity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    pytest.importorskip("transformers")
    from tests.models import build_cross_encoder

    if not INFINITY.exists():
        message = f"{INFINITY} is missing: `make install` creates it (Infinity in its own venv)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    model_dir = build_cross_encoder(tmp_path_factory.mktemp("infinity") / "tiny-ce")
    port = closed_port()
    log = (model_dir.parent / "infinity.log").open("wb")
    env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(INFINITY), "v2", "--model-id", str(model_dir), "--served-model-name", "tiny-ce",
           "--device", "cpu", "--no-model-warmup", "--url-prefix", "/v1",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                tail = (model_dir.parent / "infinity.log").read_text()[-2000:]
                pytest.fail(f"infinity exited with {proc.returncode}: {tail}")
            try:
                if httpx2.get(f"{base}/models", timeout=1.0).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("infinity did not start within 240 s")
            time.sleep(0.5)
        yield base, model_dir
    finally:
        stop(proc, wait_s=15)
        log.close()


def _local_scores(model_dir: Path, query: str, docs: list[str]) -> list[float]:
    """What the cross-encoder gives for each pair, computed here with transformers (sigmoid of its logit)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = tok([query] * len(docs), docs, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        return torch.sigmoid(model(**enc).logits[:, 0]).tolist()


def test_scores_through_a_real_infinity_server(infinity: tuple[str, Path]) -> None:
    base, model_dir = infinity
    s = load_scorer(Settings(scorer="remote", remote_url=base, remote_model="tiny-ce", remote_timeout_s=30.0))
    assert isinstance(s, RemoteScorer)
    question = "The pocket seam came open, what do I do?"
    replies = ["We will send a replacement today.", "Thanks for your message.", "口袋开线，我们给您补发。"]
    results = s.score_batch([ScoreInput(question, r) for r in replies])
    expected = _local_scores(model_dir, question, replies)
    assert [r.score for r in results] == pytest.approx(expected, abs=1e-3)
    assert len({round(r.score, 4) for r in results}) == 3  # the tiny model does tell the replies apart
    assert all(r.inputs_used == ("question", "reply") for r in results)
    # Two questions in one batch: two requests, scores land on the right items.
    mixed = s.score_batch(
        [ScoreInput("My parcel arrived crushed.", replies[1]), ScoreInput(question, replies[0])]
    )
    assert mixed[1].score == pytest.approx(results[0].score, abs=1e-4)
    assert mixed[0].score == pytest.approx(
        _local_scores(model_dir, "My parcel arrived crushed.", replies[1:2])[0], abs=1e-3
    )
    s.close()


def test_a_wrong_url_on_a_real_server_is_a_clear_error(infinity: tuple[str, Path]) -> None:
    base, _ = infinity
    s = load_scorer(
        Settings(scorer="remote", remote_url=base.removesuffix("/v1") + "/v9", remote_model="tiny-ce")
    )
    assert isinstance(s, RemoteScorer)
    try:
        with pytest.raises(ScorerError, match=r"/v9/rerank said HTTP 404"):
            s.score_batch([ScoreInput("q", "r")])
    finally:
        s.close()


def test_a_server_without_the_field_ignores_the_instruction(infinity: tuple[str, Path]) -> None:
    """Why GUARD_REMOTE_INSTRUCTION is off by default: a server that does not define the field (here
    Infinity; vLLM before vllm-project/vllm#42412 likewise) answers 200 and ignores it, so the scores
    do not change although the decision would say the instruction was used."""
    base, _ = infinity
    common = {"scorer": "remote", "remote_url": base, "remote_model": "tiny-ce", "remote_timeout_s": 30.0}
    off = load_scorer(Settings(**common))
    on = load_scorer(Settings(**common, remote_instruction="template_kwargs"))
    items = [
        ScoreInput("The pocket seam came open", "We will send a replacement today.", instruction=i)
        for i in (REFUND, REPAIR)
    ]
    try:
        plain, sent = off.score_batch(items), on.score_batch(items)
        assert [r.score for r in sent] == pytest.approx([r.score for r in plain], abs=1e-4)
        assert [r.instruction_used for r in sent] == [True, True]  # what the guard can know: it sent it
    finally:
        off.close()
        on.close()
