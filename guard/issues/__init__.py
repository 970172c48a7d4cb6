"""Understanding the customer's issue: its kind, and a short phrase naming it the way a person would.

:func:`read_issue` reads the question and the text read from the photo (both cleaned of markup
first). The kind comes from the fitted model (guard.issues.model); the phrase is built from the
customer's own words around the cue of that kind ("右边口袋开线", "bleach spot on your navy
hoodie"). A phrase that names the wrong issue is worse than none, so there is no phrase when
the model is unsure or the words of the predicted kind are not there. ``stated`` is False when
neither text names any problem ("这啥", "Look at this"): the photo then carries the issue, and
the guard cannot judge it from text alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from guard.issues.lexicon import KINDS, POINTERS, cue_matches
from guard.issues.model import IssueModel, bundled_model, features
from guard.issues.phrases import en_phrase, zh_phrase
from guard.issues.text import detect_locale, plain_text

OTHER = "other"
MIN_KIND_CONFIDENCE = 0.2
"""Below this the kind is ``other``."""
MIN_PHRASE_CONFIDENCE = 0.45
"""Below this no phrase is given: the follow-up reads naturally without one."""
MAX_PHRASE_CHARS = {"zh": 16, "en": 80}
MAX_QUESTION_CHARS = 1000
MAX_IMAGE_TEXT_CHARS = 1500
"""What is read of each text (a customer states the problem early; this bounds the time of a read)."""


@dataclass(frozen=True, slots=True)
class IssueReading:
    kind: str
    """One of guard.issues.lexicon.KINDS, or "other"."""
    phrase: str | None
    """A short phrase naming the problem in the customer's language, or None when unsure."""
    stated: bool
    """False when neither the question nor the photo's text names a problem."""
    confidence: float
    """The model's probability of its best kind (0..1); for ``other``, of the kind it declined."""
    locale: str


def read_issue(
    question: str,
    image_text: str | None,
    locale: str | None,
    *,
    has_photo: bool | None = None,
    model: IssueModel | None = None,
) -> IssueReading:
    """What the customer's problem is, from their question and the text read from their photo.

    ``has_photo=False`` says there is no photo: a question that states nothing is then ``other``
    (with a photo, or when it is not known, the kind is the model's best guess from the words).
    """
    q = plain_text(question, MAX_QUESTION_CHARS)
    img = plain_text(image_text, MAX_IMAGE_TEXT_CHARS) if image_text else ""
    lang = detect_locale(q or img, locale)
    q_cues = cue_matches(q, lang)
    i_cues = cue_matches(img, lang) if img else {}
    pointers = cue_matches(q, lang, POINTERS)
    probs = (model or bundled_model()).probabilities(features(q, img, lang, (q_cues, i_cues, pointers)))
    kind, confidence = max(probs.items(), key=lambda kv: (kv[1], -KINDS.index(kv[0])))
    if img:  # "Check the tag." states the problem together with the tag's text
        q_cues = {**pointers, **q_cues}
    stated = bool(q_cues or i_cues)
    if confidence < MIN_KIND_CONFIDENCE or (not stated and has_photo is False):
        return IssueReading(OTHER, None, stated, confidence, lang)
    phrase = None
    if stated and confidence >= MIN_PHRASE_CONFIDENCE and (kind in q_cues or kind in i_cues):
        match = q_cues.get(kind) or i_cues[kind]
        in_question = kind in q_cues
        build: Callable[[str, re.Match[str], bool, str, str], str | None] = (
            zh_phrase if lang == "zh" else en_phrase
        )
        phrase = _bounded(build(kind, match, in_question, q, img), lang)
    return IssueReading(kind, phrase, stated, confidence, lang)


_EDGE = re.compile(r"^[\s,.;:!?，。；：！？、…~\-]+|[\s,.;:!?，。；：！？、…~\-]+$")


def _bounded(phrase: str | None, lang: str) -> str | None:
    """The phrase as plain text of a bounded length, or None when nothing readable is left."""
    if phrase is None:
        return None
    phrase = _EDGE.sub("", plain_text(phrase)).strip()
    if lang == "zh" and phrase.endswith("问题"):  # the templates add it: "已为您登记…问题"
        phrase = phrase[:-2]
    limit = MAX_PHRASE_CHARS[lang]
    if len(phrase) > limit:
        phrase = phrase[:limit].rsplit(" ", 1)[0] if lang == "en" else phrase[:limit]
    return phrase or None
