"""What the model backends share (guard/scoring/base.py): inputs, text limit, errors, close()."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from guard.errors import ScorerError
from guard.scoring.base import MAX_TEXT_CHARS, ModelScorer, ScoreInput, cap_pixels
from tests.apptools import guard_client
from tests.fakes import FakeScorer

PHOTO = Image.new("RGB", (4, 4))


class Fake(ModelScorer):
    def __init__(self, *, sees: bool, with_image: bool, answer: object = None) -> None:
        self.sees_image = sees  # type: ignore[misc]
        self.image_text_with_image = with_image  # type: ignore[misc]
        self.answer = answer

    @property
    def name(self) -> str:
        return "fake"

    @property
    def version(self) -> str:
        return "fake:1"

    def scores(self, items: Sequence[ScoreInput]) -> list[float]:
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, list):
            return self.answer
        return [len(self.query_text(it)) / (4 * MAX_TEXT_CHARS) for it in items]


texts = st.one_of(
    st.none(), st.text(max_size=30), st.text(min_size=MAX_TEXT_CHARS - 5, max_size=MAX_TEXT_CHARS + 50)
)


@given(
    question=st.text(max_size=MAX_TEXT_CHARS + 50),
    ocr=texts,
    photo=st.booleans(),
    sees=st.booleans(),
    with_image=st.booleans(),
)
def test_inputs_used_says_exactly_what_the_query_holds(
    question: str, ocr: str | None, photo: bool, sees: bool, with_image: bool
) -> None:
    s = Fake(sees=sees, with_image=with_image)
    item = ScoreInput(question, "  reply  ", image_text=ocr, image=PHOTO if photo else None)
    used = s.inputs_used(item)
    q = s.query_text(item)
    assert used[0] == "question" and used[-1] == "reply"
    assert ("image" in used) == (sees and photo)
    ocr_text = (ocr or "").strip()[:MAX_TEXT_CHARS]
    reads_ocr = bool(ocr_text) and (with_image or not (sees and photo))
    assert ("image_text" in used) == reads_ocr
    assert q.startswith(question.strip()[:MAX_TEXT_CHARS].strip())
    assert q.endswith(ocr_text) if reads_ocr else q == question.strip()[:MAX_TEXT_CHARS]
    assert len(q) <= 2 * MAX_TEXT_CHARS + 1
    assert s.reply_text(item) == "reply"
    [r] = s.score_batch([item])
    assert r.inputs_used == used
    assert r.instruction_used is s.reads_instruction is False


def test_score_batch_keeps_the_error_contract() -> None:
    item = ScoreInput("q", "r")
    assert Fake(sees=False, with_image=True).score_batch([]) == []
    with pytest.raises(ScorerError, match="fake scorer failed: RuntimeError: out of memory"):
        Fake(sees=False, with_image=True, answer=RuntimeError("out of memory")).score_batch([item])
    with pytest.raises(ScorerError, match="no model"):
        Fake(sees=False, with_image=True, answer=ScorerError("no model")).score_batch([item])
    with pytest.raises(ScorerError, match="gave 2 scores for 1 items"):
        Fake(sees=False, with_image=True, answer=[0.1, 0.2]).score_batch([item])
    Fake(sees=False, with_image=True).close()


@given(w=st.integers(1, 1200), h=st.integers(1, 1200), cap=st.integers(1, 1_000_000))
def test_cap_pixels_shrinks_to_the_cap_and_never_enlarges(w: int, h: int, cap: int) -> None:
    img = Image.new("RGB", (w, h))
    out = cap_pixels(img, cap)
    assert out.width <= w and out.height <= h
    if w * h <= cap:
        assert out is img
    else:
        assert out.width * out.height <= cap or min(out.size) == 1


def test_the_runtime_closes_its_scorer_once_at_shutdown(sqlite_url: str) -> None:
    scorer = FakeScorer()
    with guard_client(sqlite_url, scorer=scorer) as client:
        assert client.post("/v1/guard", json={"question": "q", "reply": "r"}).status_code == 200
        assert not scorer.closed
    assert scorer.closed
