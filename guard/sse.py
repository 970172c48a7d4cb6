"""Server-sent events (``text/event-stream``): the one reader of them, for a whole body (the
middleware, :func:`parse_events`) and for a stream read as it arrives (the proxy, :class:`EventReader`).

An event is a block of lines ended by a blank line; ``CRLF``, ``CR`` and ``LF`` all end a line.
A line ``data: x`` adds ``x`` to the event's data (several are joined with ``\\n``); any other
line is kept as a ``(name, value)`` field, so that an event can be written back as it came.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass
class Event:
    fields: list[tuple[str, str]]
    data: str | None


def _event(block: str) -> Event | None:
    if not block.strip():
        return None
    fields: list[tuple[str, str]] = []
    data: list[str] = []
    for line in block.split("\n"):
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        else:
            fields.append((name, value))
    return Event(fields, "\n".join(data) if data else None)


class EventReader:
    """Events as a stream's bytes arrive: :meth:`feed` returns the events a chunk completes,
    :meth:`end` the last one when the stream stopped without a blank line after it. A chunk may
    end anywhere, inside a UTF-8 character or between the CR and LF of a line end."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._rest = ""
        """Text after the last complete event (line ends already folded to LF, but for a final CR)."""

    def feed(self, chunk: bytes) -> list[Event]:
        return self._take(self._decoder.decode(chunk), final=False)

    def end(self) -> list[Event]:
        return self._take(self._decoder.decode(b"", final=True), final=True)

    def _take(self, text: str, *, final: bool) -> list[Event]:
        text = self._rest + text
        held = ""
        if not final and text.endswith("\r"):  # an LF may follow in the next chunk
            text, held = text[:-1], "\r"
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        *blocks, rest = text.split("\n\n")
        if final:
            blocks.append(rest)
            rest = ""
        self._rest = rest + held
        return [event for block in blocks if (event := _event(block)) is not None]


def parse_events(body: bytes) -> list[Event]:
    """The events of a whole ``body``, in order: each one's non-data fields and its data lines joined."""
    reader = EventReader()
    return reader.feed(body) + reader.end()
