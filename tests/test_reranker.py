"""The Qwen-VL yes/no reranker, loaded from tiny random-weight checkpoints built here from configs."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("transformers")

from guard.app import create_app, load_scorer
from guard.errors import ScorerError
from guard.scoring.base import ScoreInput
from guard.scoring.reranker import SYSTEM_PROMPT, RerankerConfig, RerankerScorer
from guard.settings import Settings
from tests import vllm_protocol as vllm
from tests.models import build_qwen_vl

ROOT = Path(__file__).resolve().parents[1]
SMALL_PIXELS = 28 * 28 * 16  # at most 16 merged image tokens: keeps the tiny forward passes fast


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rerankers")
    return {fam: build_qwen_vl(root / fam, family=fam) for fam in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")}


@pytest.fixture(scope="module")
def scorer(checkpoints: dict[str, Path]) -> RerankerScorer:
    """Qwen2.5-VL (lychee-rerank-mm's family), loaded the way a deployment loads it: from settings."""
    settings = Settings(
        scorer="reranker",
        reranker_model=str(checkpoints["qwen2_5_vl"]),
        reranker_max_pixels=SMALL_PIXELS,
        reranker_batch_size=3,
    )
    s = load_scorer(settings)
    assert isinstance(s, RerankerScorer)
    return s


def photo(color: str = "red", size: tuple[int, int] = (120, 90)) -> Image.Image:
    return Image.new("RGB", size, color)


def noise(size: tuple[int, int] = (100, 140)) -> Image.Image:
    return Image.effect_noise(size, 80).convert("RGB")


ITEMS = [
    ScoreInput(
        "The pocket seam came open, what do I do?", "We will send a replacement today.", image=photo()
    ),
    ScoreInput("口袋开线怎么办？", "感谢您的反馈，本品支持7天无理由退换。"),
    ScoreInput("", "Please share a photo.", image=noise()),
    ScoreInput("My parcel arrived crushed.", "We will refund you.", image_text="order page"),
    ScoreInput("My parcel arrived crushed.", "Thanks for your message.", image=photo("blue", (60, 200))),
]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_each_family_loads_from_a_directory_and_scores_in_0_1(
    checkpoints: dict[str, Path], family: str
) -> None:
    s = RerankerScorer.load(RerankerConfig(model=str(checkpoints[family]), max_pixels=SMALL_PIXELS))
    results = s.score_batch(ITEMS[:3])
    assert len(results) == 3
    assert all(0.0 <= r.score <= 1.0 and math.isfinite(r.score) for r in results)
    assert s.template.name == ("qwen3-vl" if family == "qwen3_vl" else "lychee")
    assert s.version.startswith(f"reranker:{family}@")


def test_yes_and_no_token_ids_come_from_the_tokenizer(
    scorer: RerankerScorer, checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoints["qwen2_5_vl"])
    assert scorer.yes_id == tok.convert_tokens_to_ids("yes")
    assert scorer.no_id == tok.convert_tokens_to_ids("no")
    assert scorer.yes_id != scorer.no_id
    assert tok.decode([scorer.yes_id]) == "yes" and tok.decode([scorer.no_id]) == "no"


def test_score_is_the_softmax_over_the_no_yes_logits(scorer: RerankerScorer) -> None:
    """With the packaged identity calibration the score is P(yes) = sigmoid(logit_yes - logit_no)."""
    raw = scorer.raw_logits(ITEMS)
    scores = [r.score for r in scorer.score_batch(ITEMS)]
    for r, s in zip(raw, scores, strict=True):
        assert s == pytest.approx(1 / (1 + math.exp(-r)), abs=1e-9)


def test_batching_matches_one_by_one(scorer: RerankerScorer) -> None:
    """Left padding, mixed image / no-image pairs and chunking (batch size 3 for 5 items) change nothing."""
    batched = scorer.raw_logits(ITEMS)
    single = [scorer.raw_logits([it])[0] for it in ITEMS]
    assert batched == pytest.approx(single, abs=1e-4)
    # And the pairs really differ from one another (the comparison above is not vacuous).
    assert len({round(v, 5) for v in single}) == len(single)


def test_the_photo_reaches_the_model(scorer: RerankerScorer) -> None:
    q, r = "What is wrong with this?", "We will send a replacement."
    with_red = ScoreInput(q, r, image=photo("red"))
    inputs = scorer.build_inputs([with_red])
    grid = inputs["image_grid_thw"][0].tolist()
    n_image_tokens = int((inputs["input_ids"] == scorer.image_token_id).sum())
    assert n_image_tokens == grid[0] * grid[1] * grid[2] // 4 > 0
    assert int(inputs["mm_token_type_ids"].sum()) == n_image_tokens
    assert inputs["pixel_values"].shape[0] == grid[0] * grid[1] * grid[2]

    no_photo, red, other = scorer.raw_logits([ScoreInput(q, r), with_red, ScoreInput(q, r, image=noise())])
    assert abs(red - no_photo) > 1e-6 and abs(red - other) > 1e-6

    used = scorer.score_batch([with_red, ScoreInput(q, r), ScoreInput(q, r, image_text="ORDER 1029")])
    assert [u.inputs_used for u in used] == [
        ("question", "image", "reply"),
        ("question", "reply"),
        ("question", "image_text", "reply"),
    ]
    assert all(u.instruction_used for u in used), "the instruction is in the reranker's prompt"


def test_the_prompt_follows_the_lychee_template(scorer: RerankerScorer) -> None:
    item = ScoreInput("seam open", "we will fix it", instruction="Judge it.", image=photo())
    text = scorer._tok.decode(scorer.build_inputs([item])["input_ids"][0])
    assert text.startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert "<Instruct>: Judge it.<Query>:<|vision_start|><|image_pad|>" in text
    assert "<|vision_end|>seam open\n<Document>:we will fix it<|im_end|>\n<|im_start|>assistant\n" in text


def test_big_photos_are_capped(scorer: RerankerScorer) -> None:
    inputs = scorer.build_inputs([ScoreInput("q", "r", image=photo("green", (2400, 1600)))])
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert t * h * w * 14 * 14 <= SMALL_PIXELS


def test_qwen3_template_writes_null_for_an_empty_side(checkpoints: dict[str, Path]) -> None:
    s = RerankerScorer.load(RerankerConfig(model=str(checkpoints["qwen3_vl"]), max_pixels=SMALL_PIXELS))
    text = s._tok.decode(s.build_inputs([ScoreInput("", "")])["input_ids"][0])
    assert "<Query>:NULL\n<Document>:NULL<|im_end|>" in text


def test_calibration_is_part_of_the_version(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    cal = tmp_path / "cal.json"
    doc = {
        "format": "guard-score-map-1",
        "backend": "reranker",
        "version": "fit-7",
        "maps": {"default": {"features": ["yes_no_logit"], "w": [2.0], "b": -1.0}},
    }
    cal.write_text(json.dumps(doc))
    cfg = RerankerConfig(model=str(checkpoints["qwen2_vl"]), max_pixels=SMALL_PIXELS)
    plain = RerankerScorer.load(cfg)
    fitted = RerankerScorer.load(RerankerConfig(**{**_fields(cfg), "calibration": str(cal)}))
    assert "cal-fit-7-" in fitted.version and plain.version != fitted.version
    raw = fitted.raw_logits(ITEMS[:1])[0]
    assert fitted.score_batch(ITEMS[:1])[0].score == pytest.approx(1 / (1 + math.exp(-(2 * raw - 1))))


def _fields(cfg: RerankerConfig) -> dict[str, object]:
    return {k: getattr(cfg, k) for k in cfg.__slots__}


# -- bad configuration fails at start-up with a clear message ---------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="does not exist"):
        load_scorer(Settings(scorer="reranker", reranker_model=str(tmp_path / "nope")))
    with pytest.raises(ScorerError, match="GUARD_RERANKER_MODEL is not set"):
        load_scorer(Settings(scorer="reranker"))
    with pytest.raises(ScorerError, match=r"no config\.json"):
        load_scorer(Settings(scorer="reranker", reranker_model=str(tmp_path)))


def test_wrong_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(ScorerError, match=r"'bert' model \(BertModel\); supported Qwen-VL families"):
        load_scorer(Settings(scorer="reranker", reranker_model=str(tmp_path)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "bad reranker calibration: JSONDecodeError"),
        (b'{"format": "guard-score-map-1", "backend": "clip", "version": "1", "maps": {}}', "backend 'clip'"),
        (
            b'{"format": "guard-score-map-1", "backend": "reranker", "version": "1",'
            b' "maps": {"default": {"features": ["cosine"], "w": [1], "b": 0}}}',
            r"uses \['cosine'\]",
        ),
    ],
)
def test_unreadable_calibration(
    checkpoints: dict[str, Path], tmp_path: Path, content: bytes, message: str
) -> None:
    cal = tmp_path / "cal.json"
    cal.write_bytes(content)
    settings = Settings(
        scorer="reranker", reranker_model=str(checkpoints["qwen2_vl"]), model_calibration=str(cal)
    )
    with pytest.raises(ScorerError, match=message):
        load_scorer(settings)
    with pytest.raises(ScorerError, match="cannot read the reranker calibration"):
        load_scorer(
            Settings(
                scorer="reranker",
                reranker_model=str(checkpoints["qwen2_vl"]),
                model_calibration=str(tmp_path / "missing.json"),
            )
        )


def test_app_start_up_surfaces_the_error(sqlite_url: str, tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    app = create_app(
        Settings(database_url=sqlite_url, scorer="reranker", reranker_model=str(tmp_path / "missing"))
    )
    with pytest.raises(ScorerError, match="does not exist"), TestClient(app):
        pass


# -- scripts/compare_remote.py: a served reranker against the in-process one --------------------


class _FakeVllm(BaseHTTPRequestHandler):
    """vLLM's /score for a reranker served with the guard's chat template: the request is checked
    against vLLM's schema and pairing rules, and each pair is scored by an in-process reranker."""

    model: RerankerScorer
    invert = False

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = vllm.ScoreRequest.model_validate(body)
        items = []
        for q, d in vllm.pairs(req.queries, req.documents):
            assert isinstance(d, str)
            parts = [q] if isinstance(q, str) else q
            text = next(
                (p if isinstance(p, str) else p.text for p in parts if not isinstance(p, vllm.ImagePart)), ""
            )
            urls = [p.image_url.url for p in parts if isinstance(p, vllm.ImagePart)]
            image = (
                Image.open(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1]))).convert("RGB")
                if urls
                else None
            )
            items.append(ScoreInput(text, d, image=image))
        probs = [1 / (1 + math.exp(-x)) for x in self.model.raw_logits(items)]
        data = [
            {"index": i, "object": "score", "score": 1 - p if self.invert else p} for i, p in enumerate(probs)
        ]
        out = json.dumps(
            {"id": "score-1", "object": "list", "model": "m", "data": data, "usage": {}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("invert", [False, True])
def test_compare_remote_passes_a_faithful_server_and_fails_a_wrong_one(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, invert: bool
) -> None:
    spec = importlib.util.spec_from_file_location("compare_remote", ROOT / "scripts" / "compare_remote.py")
    assert spec and spec.loader
    compare_remote = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_remote)

    model = str(checkpoints["qwen3_vl"])
    handler = type("Handler", (_FakeVllm,), {"invert": invert})
    handler.model = RerankerScorer.load(RerankerConfig(model=model, max_pixels=SMALL_PIXELS))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    photo("red", (64, 48)).save(tmp_path / "red.png")
    photo("blue", (48, 64)).save(tmp_path / "blue.png")
    cases = [
        {"question": "The pocket seam came open.", "reply": "We will send a replacement today.", "grade": 2,
         "image": "red.png"},
        {"question": "口袋开线怎么办？", "reply": "感谢您的反馈。", "grade": 0, "image": "blue.png"},
        {"question": "My parcel arrived crushed.", "reply": "We will refund you.", "grade": 2},
        {"question": "My parcel arrived crushed.", "reply": "Sign up for our newsletter!", "grade": 0},
    ]  # fmt: skip
    (tmp_path / "cases.jsonl").write_text("\n".join(json.dumps(c) for c in cases))
    env = {
        "GUARD_RERANKER_MODEL": model,
        "GUARD_RERANKER_MAX_PIXELS": str(SMALL_PIXELS),
        "GUARD_REMOTE_URL": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "GUARD_REMOTE_MODEL": "m",
        "GUARD_REMOTE_API": "score",
        "GUARD_REMOTE_QUERY": "multimodal",
        "GUARD_REMOTE_TIMEOUT_S": "60",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        code = compare_remote.main([str(tmp_path / "cases.jsonl"), "--tolerance", "0.02"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert code == (1 if invert else 0)
