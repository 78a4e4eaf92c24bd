"""The inbox: persist raw updates first, process them afterwards, in order, once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event, select

from bot.channel.messages import ChannelEvent, InboundMessage
from bot.delivery import accept
from bot.delivery.inbox import ParseError
from bot.runtime import Runtime
from storage.models import Identity, InboxStatus, InboxUpdate, Touchpoint, utcnow
from tests.conftest import recorder


def parse(payload: dict[str, Any]) -> list[InboundMessage | ChannelEvent]:
    if payload.get("kind") == "group":
        return []
    if payload.get("kind") == "broken":
        raise ParseError("the library's models reject this update")
    if payload.get("kind") == "blocked":
        return [
            ChannelEvent(
                "test",
                payload["user"],
                "blocked",
                f"ev-{payload['id']}",
                reachable=False,
                reason="blocked the bot",
            )
        ]
    return [
        InboundMessage(
            channel="test",
            sender_id=payload["user"],
            platform_message_id=f"msg-{payload['id']}",
            thread_key=payload["user"],
            text=payload["text"],
        )
    ]


async def rows(rt: Runtime) -> list[InboxUpdate]:
    async with rt.sessions() as s:
        return list((await s.execute(select(InboxUpdate).order_by(InboxUpdate.id))).scalars())


async def test_accept_dedupes_and_processes_in_order(runtime: Runtime) -> None:
    runtime.inbox.register("test", parse)
    texts = ["complaint", "1", "The parcel arrived soaking wet.", "skip", "1", "1", "yes"]
    for i, text in enumerate(texts):
        assert await runtime.inbox.accept(
            "test", str(i), "u1", {"id": i, "user": "u1", "text": text}
        )
        # the platform retries: a second accept of the same update is refused
        assert not await runtime.inbox.accept(
            "test", str(i), "u1", {"id": i, "user": "u1", "text": text}
        )
    await runtime.inbox.drain()
    await runtime.dispatcher.drain()
    assert "C-" in recorder(runtime).texts()[-1]
    assert [r.status for r in await rows(runtime)] == [InboxStatus.DONE] * len(texts)


async def test_ignored_dead_and_events_are_kept(runtime: Runtime) -> None:
    runtime.inbox.register("test", parse)
    await runtime.inbox.accept("test", "g", "grp", {"kind": "group"})
    await runtime.inbox.accept("test", "b", "u2", {"kind": "broken", "x": "\x00"})
    await runtime.inbox.accept("test", "m", "u3", {"id": 1, "user": "u3", "text": "hi"})
    await runtime.inbox.accept("test", "k", "u3", {"kind": "blocked", "user": "u3", "id": 2})
    await runtime.inbox.drain()
    statuses = {r.dedupe_key: (r.status, r.error) for r in await rows(runtime)}
    assert statuses["g"] == (InboxStatus.IGNORED, None)
    assert statuses["b"][0] == InboxStatus.DEAD and "reject" in (statuses["b"][1] or "")
    assert statuses["m"][0] == statuses["k"][0] == InboxStatus.DONE
    async with runtime.sessions() as s:
        identity = (await s.execute(select(Identity))).scalar_one()
        kinds = (await s.execute(select(Touchpoint.kind).order_by(Touchpoint.id))).scalars().all()
    assert identity.reachable is False and identity.unreachable_reason == "blocked the bot"
    assert "blocked" in kinds


async def test_crashed_processing_is_retried_after_lease(runtime: Runtime) -> None:
    runtime.inbox.register("test", parse)
    await runtime.inbox.accept("test", "1", "u4", {"id": 1, "user": "u4", "text": "hello"})
    claimed = await runtime.inbox._claim(32)  # a worker claims it and dies
    assert len(claimed) == 1
    assert await runtime.inbox.process_once() == 0  # leased: nobody else takes it
    async with runtime.sessions() as s, s.begin():
        row = await s.get(InboxUpdate, claimed[0].id)
        assert row is not None
        row.leased_until = row.created_at  # the lease runs out
    await runtime.inbox.drain()
    await runtime.dispatcher.drain()
    assert len(recorder(runtime).sent) == 1


async def test_accept_batches_of_any_size_are_one_statement(runtime: Runtime) -> None:
    """Concurrent webhooks share an INSERT: each gets its own answer (a redelivery within
    the batch too), a chat's rows keep their order, and the statement's text does not
    change with the batch's size (prepared once, not per size: PostgreSQL plans it once,
    SQLite compiles it once; through insertmanyvalues SQLite's text had a row each)."""
    runtime.inbox.register("test", parse)
    texts: list[str] = []

    def seen(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if "INSERT INTO inbox (" in sql:
            texts.append(sql)

    def update(i: int, user: str) -> tuple[str, str, str, dict[str, Any]]:
        return "test", str(i), user, {"id": i, "user": user, "text": f"where is order {i}?"}

    event.listen(runtime.db.sync_engine, "before_cursor_execute", seen)
    try:
        first = [update(0, "u1"), update(1, "u2"), update(2, "u1"), update(0, "u1")]
        assert await asyncio.gather(*(runtime.inbox.accept(*u) for u in first)) == [
            True,
            True,
            True,
            False,  # the same update twice in one batch: the first one is the new one
        ]
        second = [update(i, f"u{i % 3}") for i in range(3, 10)] + [update(1, "u2")]
        assert await asyncio.gather(*(runtime.inbox.accept(*u) for u in second)) == [True] * 7 + [
            False
        ]
    finally:
        event.remove(runtime.db.sync_engine, "before_cursor_execute", seen)
    assert len(texts) == 2  # a batch each
    assert texts[0] == texts[1]
    stored = await rows(runtime)
    assert [r.dedupe_key for r in stored] == [str(i) for i in range(10)]
    assert [r.payload["id"] for r in stored] == list(range(10))
    assert {r.status for r in stored} == {InboxStatus.PENDING}  # no worker runs: none born
    await runtime.inbox.drain()
    assert [r.status for r in await rows(runtime)] == [InboxStatus.DONE] * 10


async def test_postgres_accept_stays_bounded_when_a_backlog_builds(runtime: Runtime) -> None:
    """The accept's plan is kept per connection (see the test below): a plan made while the
    table was small must not read every unfinished row once a backlog has built up. Written
    NOT EXISTS, the born check hashed them all at each call (20,000 rows read for one
    webhook; 26-37 ms each with 100,000 pending, outside bench/)."""
    if runtime.db.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's plan cache")
    now = utcnow()

    def params(name: str) -> dict[str, Any] | list[dict[str, Any]]:
        row = {"channel": "test", "dedupe_key": name, "partition_key": name, "payload": {}}
        return runtime.inbox._accept_params([row], [True], now, now, "test")

    async with runtime.db.connect() as conn:  # one connection: its prepared statement
        for i in range(8):  # the table small: the plan is made and kept
            await conn.execute(accept.POSTGRESQL, params(f"small{i}"))
            await conn.commit()
        await conn.execute(
            sqlalchemy.text(
                "INSERT INTO inbox (channel, dedupe_key, partition_key, payload, status,"
                " attempts, created_at) SELECT 'test', 'b' || g, 'p' || (g % 2000), '{}',"
                " 'pending', 0, now() FROM generate_series(1, 20000) AS g"
            )
        )
        await conn.commit()
        await conn.execute(accept.POSTGRESQL, params("new"))
        read = (
            await conn.execute(
                sqlalchemy.text(
                    "SELECT (SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid))"
                    " FROM pg_index WHERE indrelid = 'inbox'::regclass)"
                    " + (SELECT seq_tup_read FROM pg_stat_xact_user_tables"
                    " WHERE relname = 'inbox')"
                )
            )
        ).scalar_one()
        await conn.rollback()
    assert read < 100, f"one accept read {read} inbox rows"


async def test_sqlite_accept_decides_birth_from_the_index_with_a_backlog(
    runtime: Runtime,
) -> None:
    """SQLite's accept (one JSON array): with 20,000 rows pending, a chat with an unfinished
    row gets a pending row, a new chat a row born claimed, a redelivery nothing, and the
    born check searches the partial index of unfinished rows by chat, not the table."""
    if runtime.db.dialect.name != "sqlite":
        pytest.skip("SQLite's statement")
    now = utcnow()
    rows = [
        {"channel": "test", "dedupe_key": k, "partition_key": p, "payload": {"k": k}}
        for k, p in (("new", "p7"), ("fresh", "fresh-chat"), ("b1", "p1"))
    ]
    async with runtime.db.connect() as conn:
        await conn.execute(
            sqlalchemy.text(
                "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 20000)"
                " INSERT INTO inbox (channel, dedupe_key, partition_key, payload, status,"
                " attempts, created_at) SELECT 'test', 'b' || x, 'p' || (x % 2000), '{}',"
                " 'pending', 0, '2026-01-01 00:00:00.000000' FROM g"
            )
        )
        params = runtime.inbox._accept_params(rows, [True, True, True], now, now, "test")
        plan = await conn.execute(  # the plan: the values do not matter, typed or not
            sqlalchemy.text("EXPLAIN QUERY PLAN " + str(accept.SQLITE)),
            {**params, "until": None, "now": None},
        )
        details = [str(r[-1]) for r in plan]
        got = (await conn.execute(accept.SQLITE, params)).all()
        await conn.rollback()
    assert any(
        "USING INDEX ix_inbox_unfinished (channel=? AND partition_key=?)" in d for d in details
    )
    assert not any(d.startswith("SCAN u") for d in details), details
    assert {(k, status) for _, _, k, status in got} == {
        ("new", InboxStatus.PENDING),  # p7 has pending rows
        ("fresh", InboxStatus.PROCESSING),
    }  # b1 is there already: not inserted again


async def test_postgres_plans_the_accept_once(runtime: Runtime) -> None:
    """The accept is prepared once per connection, and its plan must be kept: with the
    arrays' lengths visible, PostgreSQL planned it anew at every webhook (a custom plan,
    0.5 ms of the server's CPU each: 551 of 731 ms of the accept's server time at 100
    msg/s, pg_stat_statements, outside bench/)."""
    if runtime.db.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's plan cache")
    now = utcnow()
    async with runtime.db.connect() as conn:  # one connection: its prepared statement
        for i in range(10):
            row = {"channel": "test", "dedupe_key": f"p{i}", "partition_key": f"c{i}"}
            params = runtime.inbox._accept_params(
                [{**row, "payload": {"id": i}}], [False], now, now, "test"
            )
            await conn.execute(accept.POSTGRESQL, params)
        await conn.commit()
        plans = (
            await conn.execute(
                sqlalchemy.text(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                    " WHERE statement LIKE '%INSERT INTO inbox (%'"
                    " AND statement NOT LIKE '%pg_prepared_statements%'"
                )
            )
        ).one()
    # PostgreSQL tries five custom plans before it compares them with the generic one
    assert plans.custom_plans <= 5 and plans.generic_plans >= 5, plans
