"""The hot path's lookups read the partial indexes they were made for (SQLite's planner
uses one only when the query implies its WHERE: a bound parameter implies nothing)."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import Select, TextualSelect, event, select, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.conversation import reopen
from storage import case_ids, group_end, queries
from storage.db import run_in_transaction
from storage.models import Case, Contact, Conversation, Direction, Touchpoint, utcnow
from tests.conftest import _truncate, pg_database


def plan(url: str, stmt: Select[tuple[object, ...]] | TextualSelect) -> str:
    compiled = stmt.compile(dialect=sqlite.dialect(), compile_kwargs={"render_postcompile": True})
    sql = str(compiled).replace("?", "'x'")
    with sqlite3.connect(url.split("///", 1)[1]) as conn:
        return "\n".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))


def test_dedupe_and_open_conversation_lookups_use_their_indexes(sqlite_url: str) -> None:
    for statement in (queries._TURN_ROWS, queries._TURN_ROW):
        turn = plan(sqlite_url, statement)
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
        for partition in (None, "42"):
            heads = queries.heads(
                "sqlite",
                table,
                key,
                ["telegram", "webchat"],
                now=utcnow(),
                limit=8,
                partition=partition,
            )
            found = plan(sqlite_url, heads)
            reads = [line for line in found.splitlines() if f" {table}" in line or " p " in line]
            # the window by id, the partition's oldest, the fallback: all partial indexes
            window = f"{index}_id" if partition is None else f"{index} (channel=? AND"
            assert f"USING INDEX {window}" in found or f"COVERING INDEX {window}" in found, found
            assert f"USING COVERING INDEX {index} " in found or f"USING INDEX {index} " in found
            assert all(f"INDEX {index}" in line for line in reads), found
        assert "INDEXED BY" not in str(
            queries.heads("postgresql", table, key, ["telegram"], now=utcnow(), limit=8).compile()
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


def test_turn_row_reads_what_turn_rows_reads(db_url: str) -> None:
    """The plain turn's row (Core) and the ORM's: the same values, the same None, the
    same duplicate flag."""

    async def work(s: AsyncSession) -> None:
        args = ("telegram", "u1", "chat1", "m1")
        assert await queries.turn_row(s, *args) is None
        identity = await queries.create_contact_with_identity(
            s, "telegram", "u1", name="Ann", locale="de"
        )
        assert await queries.turn_row(s, *args) is None  # no conversation yet
        conv = await queries.create_conversation(
            s, identity.contact_id, identity.id, "telegram", "chat1"
        )
        conv.flow_state = {"flow": "complaint", "step": "category"}
        contact = await s.get(Contact, identity.contact_id)
        assert contact is not None
        contact.value_segment = "A"
        row = await queries.turn_row(s, *args)  # what the session held is flushed first
        found = await queries.turn_rows(s, *args)
        assert row is not None and found is not None
        duplicate, identity, conv = found
        assert (row.duplicate, row.identity_id, row.contact_id, row.external_id) == (
            duplicate,
            identity.id,
            identity.contact_id,
            identity.external_id,
        )
        assert (row.display_name, row.reachable, row.unreachable_reason) == (
            identity.display_name,
            identity.reachable,
            identity.unreachable_reason,
        )
        assert (row.name, row.locale, row.value_segment, row.lifecycle_phase) == (
            "Ann",
            "de",
            "A",
            contact.lifecycle_phase,
        )
        assert (row.conversation_id, row.status, row.flow_state) == (
            conv.id,
            conv.status,
            {"flow": "complaint", "step": "category"},
        )
        queries.add_touchpoint(
            s,
            contact_id=identity.contact_id,
            conversation_id=conv.id,
            channel="telegram",
            direction=Direction.IN,
            kind="message",
            actor="customer",
            platform_message_id="m1",
        )
        again = await queries.turn_row(s, *args)
        assert again is not None and again.duplicate
        await queries.set_flow_state(s, conv.id, {})
        later = await queries.turn_row(s, "telegram", "u1", "chat1", "m2")
        assert later is not None and not later.duplicate and later.flow_state == {}

    run_in_transaction(db_url, work)


@pytest.mark.postgres
def test_prefetched_turn_rows_are_what_turn_row_reads(pg_url: str) -> None:
    """PostgreSQL's group commit reads its chats' first rows in one statement: the same
    rows (values, None for no conversation, the duplicate flag) as `turn_row` one by
    one, each answered once; a second ask reads again."""

    async def work(s: AsyncSession) -> None:
        keys: list[queries.TurnKey] = []
        for n in range(4):
            identity = await queries.create_contact_with_identity(
                s, "telegram", f"p{n}", name=f"C{n}", locale="de" if n % 2 else "en"
            )
            if n < 3:  # p3 has no conversation yet
                conv = await queries.create_conversation(
                    s, identity.contact_id, identity.id, "telegram", f"pchat{n}"
                )
                await queries.set_flow_state(s, conv.id, {"flow": "complaint", "n": n})
            keys.append(("telegram", f"p{n}", f"pchat{n}", f"pm{n}"))
        queries.add_touchpoint(
            s,
            contact_id=identity.contact_id,
            conversation_id=None,
            channel="telegram",
            direction=Direction.IN,
            kind="message",
            actor="customer",
            platform_message_id="pm1",  # p1's message was taken in before: a duplicate
        )
        await s.flush()
        keys.append(("telegram", "nobody", "pchat9", "pm9"))  # no identity at all
        one_by_one = [await queries.turn_row(s, *k) for k in keys]
        await queries.prefetch_turn_rows(s, keys)
        statements: list[str] = []

        def seen(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            statements.append(sql)

        bind = s.get_bind()
        event.listen(bind, "before_cursor_execute", seen)
        try:
            prefetched = [await queries.turn_row(s, *k) for k in keys]
            assert not statements  # answered without a read
            assert await queries.turn_row(s, *keys[0]) == one_by_one[0]  # asked again: read
            assert len(statements) == 1
        finally:
            event.remove(bind, "before_cursor_execute", seen)
        assert prefetched == one_by_one
        assert [r is None for r in prefetched] == [False, False, False, True, True]
        assert prefetched[1] is not None and prefetched[1].duplicate
        assert prefetched[0] is not None and not prefetched[0].duplicate
        assert prefetched[2] is not None and prefetched[2].flow_state == {
            "flow": "complaint",
            "n": 2,
        }
        await queries.set_flow_state(s, one_by_one[0].conversation_id, {})  # type: ignore[union-attr]
        again = await queries.turn_row(s, *keys[0])
        assert again is not None and again.flow_state == {}

    asyncio.run(_truncate(pg_url))
    run_in_transaction(pg_url, work)


@pytest.mark.postgres
def test_prefetched_turn_rows_read_each_conversation_by_its_thread() -> None:
    """In a database never analysed (a new one, or autovacuum off), PostgreSQL bounded the
    conversations' index by the channel alone and filtered the thread: every open
    conversation read for each key of a group (25 keys among 205 chats: 5,100 rows read and
    thrown away). Now each key's conversation is read by its channel and thread."""
    chats = 205

    async def seed(s: AsyncSession) -> None:
        for n in range(chats):
            identity = await queries.create_contact_with_identity(
                s, "telegram", f"u{n}", name=None, locale="en"
            )
            await queries.create_conversation(
                s, identity.contact_id, identity.id, "telegram", f"chat{n}"
            )

    async def explain(s: AsyncSession) -> list[dict[str, Any]]:
        sql = str(queries._TURN_ROWS_MANY.compile(dialect=s.get_bind().dialect))
        n = range(0, chats, 8)
        params = (
            ["telegram"] * len(n),
            [f"u{i}" for i in n],
            [f"chat{i}" for i in n],
            [f"m{i}" for i in n],
            list(range(len(n))),
        )
        conn = await s.connection()
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        plan = (
            await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        ).scalar()
        return [plan[0]["Plan"]]

    def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
        return [plan, *(n for child in plan.get("Plans", []) for n in nodes(child))]

    with pg_database("cicbot_test_plan") as url:
        run_in_transaction(url, seed)
        plan = run_in_transaction(url, explain)[0]
    read = nodes(plan)
    assert plan["Actual Rows"] == 26  # every key found
    thrown = sum(
        (n.get("Rows Removed by Join Filter", 0) + n.get("Rows Removed by Filter", 0))
        * n["Actual Loops"]
        for n in read
    )
    assert thrown == 0
    conversations = [n for n in read if n.get("Relation Name") == "conversations"]
    assert conversations and all(n["Actual Rows"] <= 1 for n in conversations)


def test_a_threads_newest_conversation_is_read_from_an_index(sqlite_url: str) -> None:
    # reopen after resolve asks it for every new conversation: it scanned the whole table
    newest = plan(sqlite_url, reopen.last_of_thread("x", "x"))
    assert "ix_conversations_thread" in newest, newest
    assert "SCAN" not in newest and "TEMP B-TREE" not in newest, newest


def test_scrub_replaces_what_postgresql_refuses_and_keeps_the_rest() -> None:
    clean = {"update_id": 1, "message": {"text": "Grüße \\u0000 NaN", "n": [1.5, True, None]}}
    assert queries.scrub(clean) == clean  # a false alarm ("NaN", an escaped backslash) walks
    plain = {"message": {"text": "Grüße", "from": {"id": 7}}, "list": [1, "a"]}
    assert queries.scrub(plain) is plain  # nothing to change: given back, not copied
    dirty = {
        "text": "a\x00b",
        "nested": [{"\ud800key": "lone \udfff"}, float("nan"), float("-inf")],
        "tuple": ("x\x00",),
    }
    assert queries.scrub(dirty) == {
        "text": "a\ufffdb",
        "nested": [{"\ufffdkey": "lone \ufffd"}, None, None],
        "tuple": ["x\ufffd"],
    }
    assert queries.scrub("a\x00") == "a\ufffd" and queries.scrub(float("inf")) is None
    when = {"at": date(2026, 12, 6), "text": "\x00"}  # not JSON data
    assert queries.scrub(when) == {"at": when["at"], "text": "\ufffd"}


def _record_statement(into: list[str], *args: Any) -> None:
    into.append(str(args[2]))  # before_cursor_execute(conn, cursor, statement, ...)


def _new_case(s: AsyncSession, contact_id: int, when: datetime) -> Any:
    return queries.insert_case(
        s,
        contact_id=contact_id,
        conversation_id=None,
        category="delivery",
        description="wet parcel",
        order_reference=None,
        severity="medium",
        desired_resolution="refund",
        priority=2,
        sla_due_at=None,
        created_at=when,
    )


def test_a_case_gets_its_reference_from_its_id(db_url: str) -> None:
    """`insert_case` (the plain turn's) makes the reference `create_case` makes, C-YYYY-
    and the id in at least six digits, beyond six too."""
    when = datetime(2031, 5, 4, 12, 0, tzinfo=UTC)

    async def work(s: AsyncSession) -> list[tuple[int, str | None, str]]:
        identity = await queries.create_contact_with_identity(
            s, "telegram", "u1", name="Ann", locale="en"
        )
        made: list[tuple[int, str | None, str]] = []
        for start in (None, 1_234_566):
            if start is not None:  # the next id has seven digits
                if s.get_bind().dialect.name == "postgresql":
                    await s.execute(text(f"SELECT setval('cases_id_seq', {start})"))
                    case_ids.forget(s)  # the ids drawn before it
                else:  # SQLite numbers a row after the largest id
                    s.add(
                        Case(
                            id=start,
                            contact_id=identity.contact_id,
                            category="other",
                            description="-",
                            severity="low",
                        )
                    )
                    await s.flush()
            reference = await _new_case(s, identity.contact_id, when)
            case = (await s.execute(select(Case).where(Case.reference == reference))).scalar_one()
            assert (case.status, case.priority, case.created_at) == ("new", 2, when)
            made.append((case.id, case.reference, reference))
        return made

    made = run_in_transaction(db_url, work)
    assert [r for _, r, _ in made] == [f"C-2031-{i:06d}" for i, _, _ in made]
    assert [r for _, r, _ in made] == [r for _, _, r in made]
    assert made[0][1] == "C-2031-000001" and made[1][1] == "C-2031-1234567"


def test_case_ids_are_drawn_ahead_and_a_groups_cases_written_at_its_end_on_postgresql(
    pg_url: str,
) -> None:
    """On PostgreSQL a group's turns open cases without a round trip each (the confirming
    turn was bench/telegram.py's slowest): the ids are drawn a block at a time, the rows
    kept for the group's end. A case status asked in the group still finds them."""
    asyncio.run(_truncate(pg_url))
    when = datetime(2031, 5, 4, 12, 0, tzinfo=UTC)

    async def work(s: AsyncSession) -> tuple[list[str], list[str], list[str], list[str]]:
        identity = await queries.create_contact_with_identity(
            s, "telegram", "u1", name="Ann", locale="en"
        )
        queries.defer_writes(s)  # as a group commit's turns run
        statements: list[str] = []
        seen = functools.partial(_record_statement, statements)
        sync = s.sync_session.get_bind()
        event.listen(sync, "before_cursor_execute", seen)
        try:
            opened = [await _new_case(s, identity.contact_id, when) for _ in range(3)]
        finally:
            event.remove(sync, "before_cursor_execute", seen)
        # a status asked later in the group: the kept rows are written first
        status = [c.reference or "" for c in await queries.cases_of_contact(s, identity.contact_id)]
        later = [await _new_case(s, identity.contact_id, when)]
        await group_end.end_group(s, [], [])
        rows = (await s.execute(select(Case.reference).order_by(Case.id))).scalars().all()
        return statements, opened + later, status, [r or "" for r in rows]

    statements, opened, status, rows = run_in_transaction(pg_url, work)
    assert len(statements) == 1 and "nextval" in statements[0], statements  # the draw only
    assert opened == [f"C-2031-{i:06d}" for i in range(1, 5)]
    assert status == opened[:3]
    assert rows == opened  # the fourth written by the group's end
