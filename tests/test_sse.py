"""guard/sse.py, the one reader of server-sent events: a stream read chunk by chunk gives the
events its whole body gives, wherever the chunks end."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from guard.sse import Event, EventReader, parse_events

lines = st.sampled_from(['data: {"a": 1}', "data:x", "data", ": ping", "event: e", "id: 7", "", "data: 语"])
ends = st.sampled_from(["\n", "\r\n", "\r"])
bodies = st.lists(st.tuples(lines, ends), max_size=12).map(lambda ls: "".join(a + b for a, b in ls).encode())


def read_in_chunks(body: bytes, cuts: list[int]) -> list[Event]:
    reader = EventReader()
    events: list[Event] = []
    last = 0
    for cut in sorted({c % (len(body) + 1) for c in cuts}):
        events += reader.feed(body[last:cut])
        last = cut
    return events + reader.feed(body[last:]) + reader.end()


@given(body=bodies, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_a_stream_read_in_chunks_gives_the_events_of_its_whole_body(body: bytes, cuts: list[int]) -> None:
    assert read_in_chunks(body, cuts) == parse_events(body)


def test_events_are_given_as_soon_as_a_blank_line_ends_them() -> None:
    reader = EventReader()
    assert reader.feed(b"data: one\r") == []  # the LF of this CRLF may still come
    assert reader.feed(b"\n\r\ndata: tw") == [Event([], "one")]
    assert reader.feed("o \xe8\xaf".encode("latin-1")) == []  # half of a UTF-8 character
    assert reader.feed(b"\xad\ndata: lines\n\n: note") == [Event([], "two 语\nlines")]
    assert reader.end() == [Event([("", "note")], None)]


def test_fields_and_data_are_split_as_the_standard_says() -> None:
    assert parse_events(b"event: e\ndata:a\ndata:  b\n\n\n\ndata\n\n") == [
        Event([("event", "e")], "a\n b"),
        Event([], ""),
    ]
