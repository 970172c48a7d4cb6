"""Customer text made safe to quote: markup, control and invisible characters removed, length bounded.

Whatever part of a customer's message reaches a follow-up or a holding message goes through
:func:`plain_text` first, so a question like ``裤子<script>…</script>口袋开线了`` is read as
``裤子口袋开线了`` and never leaves a fragment of a tag behind.
"""

from __future__ import annotations

import html
import re
import unicodedata

MAX_INPUT_CHARS = 4000
"""Longer text is cut before it is read (a question plus its photo's text fits well within this)."""

_BLOCKS = re.compile(
    r"<\s*(script|style|template|iframe|object|svg|math)\b[^>]*>.*?<\s*/\s*\1\s*>", re.I | re.S
)
_OPEN_BLOCK = re.compile(r"<\s*(script|style|template|iframe|object|svg|math)\b.*", re.I | re.S)
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_TAG = re.compile(r"</?[A-Za-z!/?][^<>]*(?:>|$)")
_TEMPLATE_MARKUP = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|\$\{[^}]*\}", re.S)
_MARKDOWN_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"\b(?:https?|ftp|javascript|data):\S+", re.I)
_LEFTOVER = re.compile(r"[<>{}`\\|^~]+")
_SPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\ud800-\udfff\ue000-\uf8ff"
    "\U000e0000-\U000e0fff\U000f0000-\U0010ffff"
    "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
)
"""Zero-width and bidi controls, variation selectors, tags, surrogates, private use, combining marks."""
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def detect_locale(text: str, requested: str | None = None) -> str:
    """ "zh" or "en": the requested locale when it is one of those, else by the script of ``text``."""
    if requested:
        tag = requested.strip().lower().replace("_", "-")
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    cjk = len(_CJK.findall(text))
    return "zh" if cjk and cjk >= len(_LATIN_WORD.findall(text)) else "en"


def plain_text(text: str, limit: int = MAX_INPUT_CHARS) -> str:
    """``text`` as plain words: no HTML/template/markdown markup, no control or invisible characters.

    Entities are decoded before tags are removed (so ``&lt;b&gt;`` goes too); whitespace runs become
    one space; the result is at most ``limit`` characters.
    """
    text = text[: limit * 4]
    text = _visible(unicodedata.normalize("NFKC", text))
    for _ in range(2):  # entities can hide a tag: decode, strip, once more for double encoding
        text = html.unescape(text)
        text = _BLOCKS.sub("", text)
        text = _OPEN_BLOCK.sub("", text)
        text = _COMMENT.sub("", text)
        text = _TAG.sub("", text)
    text = _TEMPLATE_MARKUP.sub(" ", text)
    text = _MARKDOWN_LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _LEFTOVER.sub(" ", text)
    text = _visible(text)
    return _SPACE.sub(" ", text).strip()[:limit]


def _visible(text: str) -> str:
    """``text`` with control characters as spaces and invisible ones (see _INVISIBLE) removed."""
    return _INVISIBLE.sub("", _CONTROL.sub(" ", text))
