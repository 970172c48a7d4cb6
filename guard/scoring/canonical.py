"""Canonical form of a reply before it is judged: what the customer would actually read, once.

Invisible and formatting characters, markup, emoji and other pictographs are removed; runs of a
repeated character or word and repeated sentences are collapsed. The result is a tuple of unique
sentences. Repeating or padding a reply therefore cannot add content: a reply and the same reply
repeated fifty times, or strewn with zero-width spaces, have the same canonical form.

For bounded latency only the first ``max_sentences`` sentences (each cut at ``max_sentence_chars``)
are embedded; the rest is counted in ``total_chars`` as mass the scorer did not see, which the
features treat as unrelated to the customer (conservatively).
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

MAX_SENTENCES = 8
MAX_SENTENCE_CHARS = 300
MAX_INPUT_CHARS = 20_000
"""Characters read at all; a longer reply counts the rest as unseen mass (never as content)."""

_TAG = re.compile(r"<[^<>]{0,200}>")
_MD = re.compile(r"(\*\*|__|~~|`+|^#{1,6}\s+|^>\s+|^\s*[-*+]\s+)", re.MULTILINE)
_LINK = re.compile(r"\[([^\]]{0,200})\]\((?:[^)]{0,500})\)")
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_REPEAT_PUNCT = re.compile(r"([^\w\s])\1+")
_REPEAT_LETTER = re.compile(r"([^\W\d_])\1{3,}")
_REPEAT_WORD = re.compile(r"\b(\w+)(?:[\s,;]+\1\b){2,}", re.IGNORECASE)
_REPEAT_CJK = re.compile(r"([\u3400-\u9fff]{1,8})\1{2,}")
_SPACE = re.compile(r"[^\S\n]+")
_SENTENCE_END = re.compile(r"(?<=[!?。！？;；…\n～~])|(?<=\.)(?!\d)")
_PERIODIC = re.compile(r"(.{4,}?)(?:\s*\1)+", re.DOTALL)
PERIODIC_MAX_CHARS = 4000
"""Longer sentences are not searched for an internally repeated unit (bounded time)."""
_KEY = re.compile(r"[\W_]+")


@dataclass(frozen=True, slots=True)
class CanonicalReply:
    sentences: tuple[str, ...]
    """Unique sentences in order of first appearance (all of them, not only the embedded ones)."""
    total_chars: int
    """Characters of all unique sentences plus any input beyond ``MAX_INPUT_CHARS``."""
    read_chars: tuple[int, ...]
    """Per unique sentence, the characters the customer reads of it: every repetition counted."""

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    def embedded(self) -> tuple[str, ...]:
        """The sentences the scorer embeds (the first few, each cut to a bounded length)."""
        return tuple(s[:MAX_SENTENCE_CHARS] for s in self.sentences[:MAX_SENTENCES])

    def unseen_chars(self) -> int:
        """Characters of the unique sentences after the embedded ones, plus input beyond the limit."""
        return self.total_chars - sum(len(s) for s in self.sentences[:MAX_SENTENCES])

    def embedded_read(self) -> tuple[int, ...]:
        """``read_chars`` of the embedded sentences (same order as :meth:`embedded`)."""
        return self.read_chars[:MAX_SENTENCES]


def _keep(ch: str) -> bool:
    cat = unicodedata.category(ch)
    if ch in "\n\t ":
        return True
    # Cf: zero-width and direction marks, soft hyphen; Cc/Cs/Co/Cn: control, surrogates, private, unassigned;
    # So/Sk/Me/Mn (combining marks on Latin): emoji, pictographs, dingbats, modifier symbols.
    if cat in ("Cf", "Cc", "Cs", "Co", "Cn", "So", "Sk", "Me"):
        return False
    return not (cat == "Mn" and not ("\u3000" <= ch <= "\u9fff"))


def clean_text(text: str) -> str:
    """Visible text of a reply: markup and invisible characters removed, repetition collapsed."""
    text = unicodedata.normalize("NFC", html.unescape(text[:MAX_INPUT_CHARS]))
    text = _LINK.sub(r"\1", text)
    text = _TAG.sub(" ", text)
    text = _MD.sub("", text)
    text = _URL.sub(" ", text)
    text = "".join(ch if _keep(ch) else "" for ch in text)
    text = _REPEAT_PUNCT.sub(r"\1", text)
    text = _REPEAT_LETTER.sub(r"\1", text)
    text = _REPEAT_WORD.sub(r"\1", text)
    text = _REPEAT_CJK.sub(r"\1", text)
    return _SPACE.sub(" ", text).strip()


def _collapse_unit(m: re.Match[str]) -> str:
    unit = m.group(1)
    return unit if any(ch.isalpha() for ch in unit) else m.group(0)


def collapse_periodic(sentence: str) -> str:
    """A sentence made of one unit repeated (without sentence punctuation between) -> the unit once."""
    if len(sentence) > PERIODIC_MAX_CHARS:
        return sentence
    return _PERIODIC.sub(_collapse_unit, sentence)


def canonicalise(text: str) -> CanonicalReply:
    """Unique visible sentences of ``text`` (see the module docstring)."""
    return sentences_of(clean_text(text), len(text))


def sentences_of(cleaned: str, original_chars: int) -> CanonicalReply:
    """Unique sentences of text already passed through :func:`clean_text` (of ``original_chars``)."""
    position: dict[str, int] = {}
    sentences: list[str] = []
    read: list[int] = []
    for raw in _SENTENCE_END.split(cleaned):
        stripped = raw.strip()
        sentence = collapse_periodic(stripped)
        key = _KEY.sub("", sentence.lower())
        if not key:
            continue
        if key in position:
            read[position[key]] += len(stripped)
            continue
        position[key] = len(sentences)
        sentences.append(sentence)
        read.append(len(stripped))
    unseen = max(0, original_chars - MAX_INPUT_CHARS)
    return CanonicalReply(tuple(sentences), sum(len(s) for s in sentences) + unseen, tuple(read))
