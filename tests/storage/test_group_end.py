"""The end of an inbox group commit (storage/group_end.py): what the turns kept for it is
written as the statements one at a time wrote it, and on PostgreSQL in one statement."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from sqlalchemy import event, select

from bot.channel.messages import InboundMessage
from bot.runtime import Runtime
from storage.models import (
    Conversation,
    Direction,
    InboxStatus,
    InboxUpdate,
    OutboxMessage,
    Touchpoint,
)

TURNS = ("hi", "I want to file a complaint", "The parcel arrived soaking wet.")


def parse(payload: dict[str, Any]) -> list[InboundMessage]:
    """One row may carry several messages of one chat (as an email with quoted parts does)."""
    return [
        InboundMessage(
            channel="test",
            sender_id=payload["user"],
            platform_message_id=f"{payload['user']}-{payload['id']}-{k}",
            thread_key=payload["user"],
            text=text,
            locale_hint="en",
        )
        for k, text in enumerate(payload["texts"])
    ]


def said(reply: OutboxMessage) -> tuple[str, list[Any]]:
    """A reply's text (digits aside: a case's reference) and buttons."""
    return re.sub(r"\d", "#", reply.body["text"]), reply.body["choices"]


async def history(runtime: Runtime, user: str) -> tuple[list[Any], list[Any], Any]:
    async with runtime.sessions() as s:
        conv = (
            await s.execute(select(Conversation).where(Conversation.thread_key == user))
        ).scalar_one()
        points = (
            (
                await s.execute(
                    select(Touchpoint)
                    .where(Touchpoint.conversation_id == conv.id)
                    .order_by(Touchpoint.id)
                )
            )
            .scalars()
            .all()
        )
        replies = (
            (
                await s.execute(
                    select(OutboxMessage)
                    .where(OutboxMessage.recipient_id == user)
                    .order_by(OutboxMessage.id)
                )
            )
            .scalars()
            .all()
        )
        return list(points), list(replies), conv.flow_state


async def test_a_rows_turns_see_each_others_state_and_write_what_one_at_a_time_wrote(
    runtime: Runtime,
) -> None:
    runtime.inbox.register("test", parse)
    # the reference: each message its own row, each row its own group
    for i, text in enumerate(TURNS):
        await runtime.inbox.accept(
            "test", f"a{i}", "alone", {"id": i, "user": "alone", "texts": [text]}
        )
        await runtime.inbox.drain()
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        statements.append(sql.lstrip())

    event.listen(runtime.db.sync_engine, "before_cursor_execute", seen)
    try:
        # all three in one row: the later turns read the flow state and the touchpoints
        # the earlier ones kept for the end (flushed before a chat's second message)
        await runtime.inbox.accept(
            "test", "b", "together", {"id": 0, "user": "together", "texts": list(TURNS)}
        )
        await runtime.inbox.drain()
    finally:
        event.remove(runtime.db.sync_engine, "before_cursor_execute", seen)

    alone, alone_out, alone_state = await history(runtime, "alone")
    together, together_out, together_state = await history(runtime, "together")
    assert [said(r) for r in together_out] == [said(r) for r in alone_out]
    assert len(together_out) >= len(TURNS)
    assert [(t.direction, t.kind, t.actor, t.text) for t in together] == [
        (t.direction, t.kind, t.actor, t.text) for t in alone
    ]
    inbound = [t for t in together if t.direction == Direction.IN]
    assert [t.text for t in inbound] == list(TURNS)
    for t in together:
        assert isinstance(t.payload, dict), t.payload  # a JSON object, not a JSON string
        if t.direction == Direction.OUT and t.kind == "message":
            assert t.outbox_id in {r.id for r in together_out}, t.outbox_id
    # the complaint flow, started by the second turn, took the third as its description
    assert isinstance(together_state, dict) and together_state
    assert {k: v for k, v in together_state.items() if k != "started_at"} == {
        k: v for k, v in alone_state.items() if k != "started_at"
    }
    async with runtime.sessions() as s:
        statuses = (await s.execute(select(InboxUpdate.status))).scalars().all()
    assert set(statuses) == {InboxStatus.DONE}
    if runtime.db.dialect.name == "postgresql":
        ends = [q for q in statements if q.startswith("WITH cases_made AS")]
        assert len(ends) == 1, statements
        # the first two turns' rows flushed before the chat's next message, the last
        # turn's in the end's statement: two touchpoint INSERTs, not three
        apart = [q for q in statements if q.startswith("INSERT INTO touchpoints")]
        assert len(apart) == len(TURNS) - 1, statements


async def test_a_lone_message_writes_its_touchpoints_and_state_with_the_end(
    runtime: Runtime,
) -> None:
    runtime.inbox.register("test", parse)
    await runtime.inbox.accept("test", "a", "u1", {"id": 0, "user": "u1", "texts": ["hi"]})
    await runtime.inbox.drain()  # the customer's first turn (made with the new customer)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        statements.append(sql.lstrip())

    event.listen(runtime.db.sync_engine, "before_cursor_execute", seen)
    try:
        await runtime.inbox.accept("test", "b", "u1", {"id": 1, "user": "u1", "texts": [TURNS[1]]})
        await runtime.inbox.drain()
    finally:
        event.remove(runtime.db.sync_engine, "before_cursor_execute", seen)
    points, replies, state = await history(runtime, "u1")
    assert [t.text for t in points if t.direction == Direction.IN] == ["hi", TURNS[1]]
    assert replies and all(isinstance(r.body, dict) for r in replies)
    assert isinstance(state, dict) and state
    if runtime.db.dialect.name == "postgresql":
        assert not [q for q in statements if q.startswith("INSERT INTO touchpoints")], statements
        assert not [q for q in statements if q.startswith("UPDATE conversations SET flow_state")], (
            statements
        )
        assert len([q for q in statements if q.startswith("WITH cases_made AS")]) == 1, statements


async def test_the_done_marks_lock_the_rows_in_id_order(pg_url: str) -> None:
    """The group's done marks take their rows' locks in id order, as the heartbeat's
    renewal does (bot/delivery/leases.py): in the group's order (the order its rows were
    parsed) they could hold a later row while the renewal held an earlier one, each
    waiting for the other until PostgreSQL broke the deadlock after a second."""
    from datetime import timedelta

    from sqlalchemy import text

    from storage import group_end
    from storage.models import utcnow
    from tests.conftest import _truncate, make_settings, until_a_lock_is_awaited

    await _truncate(pg_url)
    rt = Runtime(make_settings(pg_url), channels=[])
    try:
        for n in range(2):
            await rt.inbox.accept("test", f"k{n}", f"u{n}", {"id": n, "user": f"u{n}"})
        async with rt.sessions() as s, s.begin():
            first, second = sorted((await s.execute(select(InboxUpdate.id))).scalars())
            # a table of some size, as in use: the plan then walks the group's rows by the
            # index, in the order given (on a table of two rows, a scan of it in id order)
            await s.execute(
                text(
                    "INSERT INTO inbox (channel, dedupe_key, partition_key, payload, status,"
                    " attempts, created_at) SELECT 'test', 'old' || n, 'old', '{}', 'done', 1,"
                    " now() FROM generate_series(1, 20000) AS n"
                )
            )
        async with rt.db.connect() as conn:
            await conn.execute(text("ANALYZE inbox"))
            await conn.commit()
        now = utcnow() + timedelta(seconds=1)
        finished = [
            {"row_id": i, "status": InboxStatus.DONE, "error": None, "processed_at": now}
            for i in (second, first)  # the group's order: parsed the other way round
        ]

        async def end() -> None:
            async with rt.sessions() as s, s.begin():
                await group_end.end_group(s, finished, [])

        async with rt.db.connect() as other, rt.db.connect() as probe:
            await other.execute(text("SELECT id FROM inbox WHERE id = :i FOR UPDATE"), {"i": first})
            ending = asyncio.create_task(end())
            await until_a_lock_is_awaited(probe)  # the first row's
            assert not ending.done()
            free = await probe.execute(
                text("SELECT id FROM inbox WHERE id = :i FOR UPDATE SKIP LOCKED"), {"i": second}
            )
            # in id order the second row is not taken before the first (in the group's
            # order it was held already while the first was waited for)
            assert free.scalar() == second
            await probe.rollback()
            await other.rollback()
            await asyncio.wait_for(ending, 5)
        async with rt.sessions() as s:
            statuses = (
                (await s.execute(select(InboxUpdate.status).where(InboxUpdate.id <= second)))
                .scalars()
                .all()
            )
        assert statuses == [InboxStatus.DONE, InboxStatus.DONE]
    finally:
        await rt.db.dispose()
