"""The phrase naming the customer's issue, for callers that have only the text.

``issue_phrase`` is :func:`guard.issues.read_issue` without the photo's text, kept for the
callers that use it; ``detect_locale`` lives in guard.issue_text.
"""

from __future__ import annotations

from guard.issue_text import detect_locale
from guard.issues import read_issue

__all__ = ["detect_locale", "issue_phrase"]


def issue_phrase(text: str, locale: str) -> str | None:
    """The phrase naming the customer's issue in ``text``, or None when it is not clearly stated."""
    return read_issue(text, None, locale).phrase
