"""The JSON-path mini-language of the middleware's options: ``"choices[0].message.content"``."""

from __future__ import annotations

import re
from typing import Any

Path = tuple[str | int, ...]
_PART = re.compile(r"([^\[\]]*)((?:\[\d+\])*)")
MISSING = object()
"""What ``get_path`` returns where the document has nothing at the path."""


def parse_path(path: str) -> Path:
    """``"choices[0].message.content"`` (or with a leading ``$.``) -> ("choices", 0, "message", "content")."""
    text = path[2:] if path.startswith("$.") else path
    tokens: list[str | int] = []
    for part in text.split("."):
        match = _PART.fullmatch(part)
        if match is None or not (match.group(1) or match.group(2)):
            raise ValueError(f"{path!r} is not a JSON path like 'a.b[0].c'")
        if match.group(1):
            tokens.append(match.group(1))
        tokens.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
    return tuple(tokens)


def get_path(doc: Any, path: Path) -> Any:
    for token in path:
        if isinstance(token, int):
            if not isinstance(doc, list) or token >= len(doc):
                return MISSING
        elif not isinstance(doc, dict) or token not in doc:
            return MISSING
        doc = doc[token]
    return doc


def set_path(doc: Any, path: Path, value: Any) -> None:
    parent = get_path(doc, path[:-1])
    parent[path[-1]] = value


def make_path(path: Path, value: Any) -> Any:
    """A new document holding ``value`` at ``path``: ``("choices", 0, "text")`` gives
    ``{"choices": [{"text": value}]}``."""
    doc: Any = value
    for token in reversed(path):
        doc = [*([{}] * token), doc] if isinstance(token, int) else {token: doc}
    return doc
