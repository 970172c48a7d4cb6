"""Server-sent events (``text/event-stream``) read from a buffered body."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Event:
    fields: list[tuple[str, str]]
    data: str | None


def parse_events(body: bytes) -> list[Event]:
    """The events of ``body``, in order: each one's non-data fields and its data lines joined."""
    text = body.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        fields: list[tuple[str, str]] = []
        data: list[str] = []
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields.append((name, value))
        events.append(Event(fields, "\n".join(data) if data else None))
    return events
