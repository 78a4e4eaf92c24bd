"""The hot path's lookups read the partial indexes they were made for (SQLite's planner
uses one only when the query implies its WHERE: a bound parameter implies nothing)."""

from __future__ import annotations

import sqlite3

from sqlalchemy import Select, TextualSelect, select
from sqlalchemy.dialects import sqlite

from storage import queries
from storage.models import Conversation, Direction, Touchpoint


def plan(url: str, stmt: Select[tuple[object, ...]] | TextualSelect) -> str:
    compiled = stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True})
    sql = str(compiled).replace("?", "'x'")
    with sqlite3.connect(url.split("///", 1)[1]) as conn:
        return "\n".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))


def test_dedupe_and_open_conversation_lookups_use_their_indexes(sqlite_url: str) -> None:
    turn = plan(sqlite_url, queries._TURN_ROWS)
    assert "uq_touchpoints_inbound_platform_id" in turn, turn
    assert "uq_conversations_open_thread" in turn, turn
    assert "SCAN" not in turn, turn
    # what the literals replaced: a bound parameter, and the whole table is read
    bound = select(Touchpoint.id).where(
        Touchpoint.channel == "x",
        Touchpoint.platform_message_id == "x",
        Touchpoint.direction == Direction.IN,
    )
    assert "SCAN touchpoints" in plan(sqlite_url, bound)
    literal = select(Conversation.id).where(
        Conversation.channel == "x",
        Conversation.thread_key == "x",
        Conversation.status != queries.CLOSED,
    )
    assert "uq_conversations_open_thread" in plan(sqlite_url, literal)


def test_claims_read_the_partial_indexes_of_unfinished_rows(sqlite_url: str) -> None:
    # the bound statuses and the plain planner read ix_inbox_partition / ix_outbox_recipient:
    # every row the channel ever had, done ones too (a claim that grew with the table)
    for table, key, index in (
        ("inbox", "partition_key", "ix_inbox_unfinished"),
        ("outbox", "recipient_id", "ix_outbox_unfinished"),
    ):
        heads = queries.heads("sqlite", table, key, ["telegram", "webchat"])
        found = plan(sqlite_url, heads)
        assert index in found, found
        assert "SCAN" not in found, found
        assert "INDEXED BY" not in str(
            queries.heads("postgresql", table, key, ["telegram"]).compile()
        )


def test_a_deferred_touchpoint_is_a_whole_row_of_the_table() -> None:
    """`add_touchpoint` under `defer_touchpoints` keeps a plain row, no ORM object: it must
    name every column but the id (one executemany INSERT takes them all alike)."""
    from sqlalchemy.orm import Session

    s = Session()
    queries.defer_touchpoints(s)  # type: ignore[arg-type]
    queries.add_touchpoint(
        s,  # type: ignore[arg-type]
        contact_id=1,
        conversation_id=None,
        channel="telegram",
        direction=Direction.IN,
        kind="message",
        actor="customer",
        text="hallo\x00",
    )
    (row,) = s.info["deferred_touchpoints"]
    assert set(row) == {c.name for c in Touchpoint.__table__.c} - {"id"}
    assert row["text"] == "hallo\ufffd" and row["payload"] == {} and row["created_at"] is not None
    assert not s.new  # nothing for the unit of work
