"""Which issue a reply is about, against which issue the customer has: the scorer's kind features.

A specific reply to a different problem (a stain remedy for a broken zipper) reads like a good reply;
sentence embeddings of the pair barely tell them apart when both are about clothes. So the scorer
reads the *kind* of each side (guard.issues.lexicon.KINDS): the question's with a model of the issue
reader's form (guard.issues.model: a multinomial logistic regression over cues and character / word
n-grams) fitted on the questions, the reply's as the mean of two models fitted on the grade-2
replies and the questions, one of that form and one over the reply's sentence embedding (each
alone names the kind of 84% / 63% of unseen grade-2 replies, together 88%, cross-validated). All three are
fitted by ``fit_bundled`` and ship in the scorer's calibration, so a scorer version always means the
same kind models.

The features (``KIND_FEATURES``) say how much the two distributions agree, how likely the reply is
about the question's most likely kind, and whether the reply names a cue of that kind or only cues
of other kinds (guard.issues.lexicon). They are features of the learned model, not rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guard.issues.lexicon import KINDS, POINTERS, cue_matches
from guard.issues.model import Example, IssueModel, features, fit, parse_model
from guard.issues.text import plain_text

KIND_FEATURES: tuple[str, ...] = (
    "kind_match",
    "r_kind_at_q",
    "kind_match_x_conf",
    "r_cue_q_kind",
    "r_cue_other_only",
)
MAX_KIND_CHARS = 1500
"""What each side contributes to its kind (the issue reader's own bound on the photo's text)."""
EMBEDDING_L2 = 0.001
EMBEDDING_STEPS = 1500
EMBEDDING_RATE = 8.0
"""The embedding model's fit (plain gradient descent from zero: the same data give the same weights)."""


@dataclass(frozen=True, slots=True)
class KindModels:
    question: IssueModel
    """The customer's problem, from the question and the text read from the photo."""
    reply: IssueModel
    """The problem a reply deals with, from the words of the sentences read as content."""
    reply_w: NDArray[np.float64]
    """The same from the reply's embedding: softmax(e_r @ reply_w + reply_b), one column per kind."""
    reply_b: NDArray[np.float64]

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.question.to_json(),
            "reply": self.reply.to_json(),
            "reply_embedding": {
                "w": np.round(self.reply_w, 5).tolist(),
                "b": np.round(self.reply_b, 5).tolist(),
            },
        }


def parse_kind_models(doc: Mapping[str, Any], dim: int) -> KindModels:
    """KindModels from the calibration's ``kinds`` section (ValueError when it is not one)."""
    emb = doc["reply_embedding"]
    models = KindModels(
        question=parse_model(doc["question"]),
        reply=parse_model(doc["reply"]),
        reply_w=np.asarray(emb["w"], dtype=np.float64).reshape(dim, len(KINDS)),
        reply_b=np.asarray(emb["b"], dtype=np.float64).reshape(len(KINDS)),
    )
    if models.question.classes != KINDS or models.reply.classes != KINDS:
        raise ValueError(f"kind models must have the classes {', '.join(KINDS)}")
    return models


def empty_kind_models(dim: int) -> KindModels:
    """Kind models that know nothing (every kind equally likely): the unfitted calibration's."""
    blank = IssueModel(classes=KINDS, bias=tuple(0.0 for _ in KINDS), weights={})
    return KindModels(blank, blank, np.zeros((dim, len(KINDS))), np.zeros(len(KINDS)))


def question_example(question: str, image_text: str | None, lang: str) -> tuple[str, ...]:
    q = plain_text(question, MAX_KIND_CHARS)
    return tuple(features(q, plain_text(image_text, MAX_KIND_CHARS) if image_text else "", lang))


def reply_example(reply: str, lang: str) -> tuple[str, ...]:
    return _read_reply(reply, lang)[0]


def _read_reply(reply: str, lang: str) -> tuple[tuple[str, ...], dict[str, re.Match[str]]]:
    """The reply model's features of a reply and its issue cues (found once: they are features too)."""
    text = plain_text(reply, MAX_KIND_CHARS)
    cues = cue_matches(text, lang)
    return tuple(features(text, "", lang, (cues, {}, cue_matches(text, lang, POINTERS)))), cues


def _softmax_rows(z: NDArray[np.float64]) -> NDArray[np.float64]:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)


def fit_embedding_kinds(
    x: NDArray[np.float64], kinds: Sequence[str]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Multinomial logistic regression of the kind on unit embeddings (rows of ``x``)."""
    y = np.eye(len(KINDS))[[KINDS.index(k) for k in kinds]]
    w = np.zeros((x.shape[1], len(KINDS)))
    b = np.zeros(len(KINDS))
    for _ in range(EMBEDDING_STEPS):
        err = (_softmax_rows(x @ w + b) - y) / max(len(x), 1)
        w -= EMBEDDING_RATE * (x.T @ err + EMBEDDING_L2 * w)
        b -= EMBEDDING_RATE * err.sum(axis=0)
    return w, b


def fit_kind_models(
    questions: Sequence[tuple[str, str, str]],
    replies: Sequence[tuple[str, str, str]],
    embed: Callable[[Sequence[str]], NDArray[np.float32]],
) -> KindModels:
    """The models from (text, language, issue kind) triples of the questions and of the grade-2
    replies (a reply's kind is its question's); the reply models learn from the questions too."""
    texts = [t for t, _, _ in (*replies, *questions)]
    w, b = fit_embedding_kinds(
        np.asarray(embed(texts), dtype=np.float64), [k for _, _, k in (*replies, *questions)]
    )
    return KindModels(
        question=fit([Example(question_example(t, None, lang), kind) for t, lang, kind in questions]),
        reply=fit([Example(reply_example(t, lang), kind) for t, lang, kind in replies]),
        reply_w=w,
        reply_b=b,
    )


def _distribution(model: IssueModel, feats: Sequence[str]) -> NDArray[np.float64]:
    p = model.probabilities(feats)
    return np.array([p[k] for k in KINDS], dtype=np.float64)


def question_kinds(
    models: KindModels, question: str, image_text: str | None, lang: str
) -> NDArray[np.float64]:
    """P(kind) of the customer's problem, from the question and the text read from the photo (once
    per question: every draft and candidate of a check shares it)."""
    return _distribution(models.question, question_example(question, image_text, lang))


KIND_MATCH = KIND_FEATURES.index("kind_match")


def kind_features(
    models: KindModels, p_q: NDArray[np.float64], reply: str, r_lang: str, e_r: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The KIND_FEATURES of a reply (``reply``: the text read as content, ``e_r``: its unit
    embedding) to a question of kinds ``p_q`` (``question_kinds``), in that order."""
    if not reply.strip():
        return np.zeros(len(KIND_FEATURES))
    words, cues = _read_reply(reply, r_lang)
    p_r = 0.5 * (_distribution(models.reply, words) + _softmax_rows(e_r @ models.reply_w + models.reply_b))
    top = int(np.argmax(p_q))
    match = float(p_q @ p_r)
    on_kind = KINDS[top] in cues
    return np.array(
        [match, float(p_r[top]), match * float(p_q[top]), float(on_kind), float(bool(cues) and not on_kind)],
        dtype=np.float64,
    )
