"""The typed decision record: its columns are the decisions table's, it survives the spool's
line format unchanged, and a spool line written before the record was typed still replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from guard.records import Candidate, DecisionRecord
from guard.spool import decode_record, encode_record
from guard.store import Store, migrate
from guard.tables import Decision
from tests.fakes import decision_row

# A line exactly as the spool wrote it while the record was a dict keyed by column names.
OLD_LINE = (
    b'{"d":{"id":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f","created_at":{"$dt":"2026-12-01T21:00:00.123000+00:00"},'
    b'"conversation_id":"c-7","channel":"shop-zh","locale":"zh","question":"\\u53e3\\u888b\\u5f00\\u7ebf'
    b'\\u600e\\u4e48\\u529e\\uff1f","image_sha256":"ababababababababababababababababababababababababab'
    b'ababababababab","reply":"\\u611f\\u8c22\\u60a8\\u7684\\u53cd\\u9988","candidates":[{"reply":"a",'
    b'"score":0.5},{"reply":"b","score":null}],"score":0.2,"band":"[0.0,0.4)","action":"escalate",'
    b'"final_reply":null,"follow_up":null,"holding_message":"\\u8bf7\\u7a0d\\u5019","issue_phrase":'
    b'"\\u53e3\\u888b\\u5f00\\u7ebf","image_text":"ORDER 123","policy_channel":"shop-zh","policy_version":3,'
    b'"scorer_name":"fake","scorer_version":"1","inputs_used":["question","image_text","reply"],'
    b'"cached":false,"degraded":false,"reason":null,"latency_ms":4.5,"timings_ms":{"total":4.5,"score":2.0}},'
    b'"q":"1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e","i":["ababababababababababababababababababababababababab'
    b'ababababababab","image/png",3,2,{"$b64":"iVBORw=="}]}\n'
)


def test_the_rows_columns_are_the_decisions_tables() -> None:
    assert set(decision_row().columns()) == {c.name for c in Decision.__table__.columns}


def test_a_spool_line_in_the_old_format_replays_into_the_store(sqlite_url: str) -> None:
    record = decode_record(OLD_LINE)
    assert record.row.draft == "感谢您的反馈" and record.row.final_reply is None
    assert record.row.candidates == (Candidate("a", 0.5), Candidate("b", None))
    assert record.row.inputs_used == ("question", "image_text", "reply")
    assert record.queue_item_id == "1e" * 16 and record.image is not None
    new_columns = b'"issue_kind":null,"uncertain":null,"uncertain_reason":null,'
    line = OLD_LINE.replace(b'"image_text"', new_columns + b'"image_text"', 1)
    line = line.replace(b'"cached"', b'"instruction_used":null,"cached"', 1)
    line = line.replace(b'"score":2.0}}', b'"score":2.0},"durable":null}', 1)
    assert encode_record(record) == line, (
        "the typed record writes the same line, with the columns added since (as null)"
    )
    migrate(sqlite_url)
    store = Store.open(sqlite_url)
    try:
        store.record([record])
        stored = store.get_decision("0f" * 16)
        assert stored is not None
        assert stored.row.draft == "感谢您的反馈" and stored.row.channel == "shop-zh"
        assert stored.row.created_at.replace(tzinfo=UTC) == datetime(
            2026, 12, 1, 21, 0, 0, 123000, tzinfo=UTC
        )
        assert stored.queue_item is not None and stored.queue_item.id == "1e" * 16
        assert store.get_image("ab" * 32) is not None
    finally:
        store.close()


def test_a_line_missing_a_column_reads_it_as_none() -> None:
    line = OLD_LINE.replace(b'"image_text":"ORDER 123",', b"")
    assert decode_record(line).row.image_text is None
    old = decode_record(OLD_LINE).row
    added = (old.issue_kind, old.uncertain, old.uncertain_reason, old.instruction_used)
    assert added == (None, None, None, None), "columns added since"


text = st.text(max_size=40)
maybe_text = st.none() | text
number = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(
    draft=text,
    question=text,
    final=maybe_text,
    score=st.none() | number,
    candidates=st.none() | st.lists(st.builds(Candidate, text, st.none() | number), max_size=3).map(tuple),
    inputs=st.lists(st.sampled_from(["question", "image_text", "image", "reply"]), max_size=4).map(tuple),
    micros=st.integers(0, 10**12),
    held=st.booleans(),
)
def test_any_row_survives_the_spool_line_unchanged(
    draft: str,
    question: str,
    final: str | None,
    score: float | None,
    candidates: tuple[Candidate, ...] | None,
    inputs: tuple[str, ...],
    micros: int,
    held: bool,
) -> None:
    row = decision_row(
        draft=draft,
        question=question,
        final_reply=final,
        score=score,
        candidates=candidates,
        inputs_used=inputs,
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros),
    )
    record = DecisionRecord(row, queue_item_id="q" * 32 if held else None)
    assert decode_record(encode_record(record)) == record
