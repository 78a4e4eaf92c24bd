"""Leases on inbox and outbox rows (bot/delivery/leases.py): a live worker keeps its rows however
long it works on them; rows a dead process held are due again at once when a process
starts; a row whose holder died is retried a limited number of times, then parked."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from bot.channel.messages import InboundMessage
from bot.delivery.inbox import SUSPECT_SECONDS, Inbox
from bot.delivery.leases import Leases
from bot.runtime import Runtime
from storage.models import DeadLetter, InboxStatus, InboxUpdate, utcnow
from tests.conftest import make_settings, recorder

DEAD_BOOT = "dead" * 8  # a process that is gone


def message(payload: dict[str, Any]) -> list[InboundMessage]:
    return [
        InboundMessage(
            channel="test",
            sender_id=payload["user"],
            platform_message_id=f"m-{payload['id']}",
            thread_key=payload["user"],
            text="hello",
        )
    ]


async def held_by(
    rt: Runtime, boot: str, renewed_ago: float, attempts: int = 1, chat: str = ""
) -> int:
    """A row in processing, leased by `boot`, its lease last renewed `renewed_ago` s ago."""
    user = chat or "u1"
    await rt.inbox.accept(
        "test", f"k{boot[:4]}{attempts}{chat}", chat or f"u{attempts}", {"id": 1, "user": user}
    )
    lease = rt.leases.ttl - timedelta(seconds=renewed_ago)
    async with rt.sessions() as s, s.begin():
        row = (
            (await s.execute(select(InboxUpdate).order_by(InboxUpdate.id.desc()))).scalars().first()
        )
        assert row is not None
        row.status, row.leased_by, row.attempts = InboxStatus.PROCESSING, boot, attempts
        row.leased_until = utcnow() + lease
        return row.id


async def row(rt: Runtime, row_id: int) -> InboxUpdate:
    async with rt.sessions() as s:
        found = await s.get(InboxUpdate, row_id)
        assert found is not None
        return found


async def test_rows_of_a_process_that_is_gone_are_due_at_once(runtime: Runtime) -> None:
    runtime.inbox.register("test", message)
    stale = await held_by(runtime, DEAD_BOOT, renewed_ago=5)
    await runtime.leases.start()
    try:
        await runtime.inbox.drain()  # taken at once, not after the lease
        assert (await row(runtime, stale)).status == InboxStatus.DONE
        await runtime.dispatcher.drain()
        assert len(recorder(runtime).sent) == 1
    finally:
        await runtime.leases.stop()


async def test_a_lease_renewed_just_now_is_left_alone(runtime: Runtime) -> None:
    """Its holder beats: whatever the start-up check says, the row is not taken from it."""
    runtime.inbox.register("test", message)
    fresh = await held_by(runtime, DEAD_BOOT, renewed_ago=0.5)
    await runtime.leases.start()
    try:
        assert await runtime.inbox.process_once() == 0
        assert (await row(runtime, fresh)).leased_by == DEAD_BOOT
    finally:
        await runtime.leases.stop()


async def test_postgres_knows_a_live_holder_by_its_lock(pg_url: str) -> None:
    """Two workers on one PostgreSQL: the one starting takes nothing from the live one,
    however stale its lease looks, and takes its rows at once when it is gone."""
    from tests.conftest import _truncate

    await _truncate(pg_url)
    live = Runtime(make_settings(pg_url), channels=[])
    starting = Runtime(make_settings(pg_url), channels=[])
    try:
        await live.leases.start()
        theirs = await held_by(live, live.leases.boot_id, renewed_ago=8)
        await starting.leases.start()
        assert (await row(starting, theirs)).leased_until > utcnow()  # untouched
        await live.leases.stop()  # the process is gone: its lock goes with its connection
        assert await starting.leases.reclaim() == 1
        assert (await row(starting, theirs)).leased_until <= utcnow()
    finally:
        await starting.leases.stop()
        await live.leases.stop()
        await live.db.dispose()
        await starting.db.dispose()


async def test_the_heartbeat_keeps_a_slow_row_from_a_second_worker(db_url: str) -> None:
    settings = make_settings(db_url)
    settings.dispatcher.lease_seconds, settings.dispatcher.heartbeat_seconds = 1.5, 0.3
    rt = Runtime(settings, channels=[])
    other = Inbox(
        rt.sessions,
        rt.engine,
        Leases(rt.sessions, rt.db, lease_seconds=1.5, heartbeat_seconds=0.3),
        dialect=rt.db.dialect.name,
    )
    calls = 0

    async def slow(payload: dict[str, Any]) -> list[InboundMessage]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3.0)  # longer than the lease: only the heartbeat keeps it
        return message(payload)

    rt.inbox.register("test", slow)
    other.register("test", slow)
    await rt.leases.start()
    try:
        await rt.inbox.accept("test", "slow", "u1", {"id": 1, "user": "u1"})
        working = asyncio.create_task(rt.inbox.process_once())
        for _ in range(12):  # 2.4 s: past the lease of the claim, renewed meanwhile
            await asyncio.sleep(0.2)
            assert await other.process_once() == 0
        assert await working == 1
        assert calls == 1
    finally:
        await rt.leases.stop()
        await rt.db.dispose()


async def test_a_row_whose_holder_died_is_parked_after_max_crashes(runtime: Runtime) -> None:
    seen: list[dict[str, Any]] = []

    def parse(payload: dict[str, Any]) -> list[InboundMessage]:
        seen.append(payload)
        return message(payload)

    runtime.inbox.register("test", parse)
    retried = await held_by(runtime, DEAD_BOOT, renewed_ago=60, attempts=2)  # expired
    parked = await held_by(runtime, "beef" * 8, renewed_ago=60, attempts=3)
    await runtime.inbox.drain()
    assert (await row(runtime, retried)).status == InboxStatus.DONE  # its third attempt
    poison = await row(runtime, parked)
    assert poison.status == InboxStatus.DEAD and len(seen) == 1  # never handed on again
    assert "process stopped while handling this update" in (poison.error or "")
    async with runtime.sessions() as s:
        letter = (await s.execute(select(DeadLetter))).scalar_one()
    assert letter.reference == f"inbox:{parked}" and letter.payload["attempts"] == 3


async def test_rows_whose_holder_died_are_taken_one_at_a_time_and_handled_alone(
    runtime: Runtime,
) -> None:
    """A crash counts against the row being handled, not against the rows in flight with
    it: a process killed three times in a row (CI, tests/reliability/
    test_kill_group_commit.py) parked a dozen rows that had waited in its group commits."""
    runtime.inbox.register("test", message)
    orphans = [
        await held_by(runtime, DEAD_BOOT, renewed_ago=60, attempts=2, chat=f"c{n}")
        for n in range(3)
    ]
    taken = await runtime.inbox._claim(10)
    assert [r.id for r in taken] == orphans[:1]
    assert await runtime.inbox._claim(10) == []  # the next one waits for the first's end
    # the process dies with the first: the others' attempts are as they were
    assert [(await row(runtime, i)).attempts for i in orphans] == [3, 2, 2]
    # or the first takes long (a hang): the next is taken all the same after a while
    runtime.inbox._suspects[orphans[0]] -= SUSPECT_SECONDS
    late = await runtime.inbox._claim(10)
    assert [r.id for r in late] == orphans[1:2]
    await asyncio.gather(runtime.inbox._process(taken[0]), runtime.inbox._process(late[0]))
    await runtime.inbox.drain()
    for i in orphans:
        done = await row(runtime, i)
        assert (done.status, done.attempts) == (InboxStatus.DONE, 3)
    assert runtime.inbox.groups[1].items == 0  # each in a transaction of its own
    # rows whose holder lives go together again
    for n in range(2):
        await runtime.inbox.accept("test", f"new{n}", f"c{n}", {"id": 2, "user": f"c{n}"})
    await runtime.inbox.drain()
    assert runtime.inbox.groups[1].items == 2


async def test_the_renewal_locks_the_rows_it_holds_in_id_order(pg_url: str) -> None:
    """The heartbeat's renewal takes its rows' locks in id order, as the sent marks take
    theirs: in its scan's order (an index by due time, or the heap's, which an update
    reorders) it could hold a later row while a mark held an earlier one, each waiting for
    the other (PostgreSQL's "deadlock detected", seen once in bench/campaign.py)."""
    from sqlalchemy import text

    from tests.conftest import _truncate, until_a_lock_is_awaited

    await _truncate(pg_url)
    rt = Runtime(make_settings(pg_url), channels=[])
    boot = rt.leases.boot_id
    try:
        # any scan meets the second row first: it is due first, and the first row's new
        # version lies after it in the heap
        async with rt.sessions() as s, s.begin():
            for days in (2, 1):
                await s.execute(
                    text(
                        "INSERT INTO outbox (channel, recipient_id, thread_key, body, status,"
                        " attempts, next_attempt_at, leased_by, leased_until, created_at)"
                        " VALUES ('test', 'u1', 'u1', '{}', 'sending', 1, :due, :b, now(), now())"
                    ),
                    {"due": utcnow() + timedelta(days=days), "b": boot},
                )
            ids = (await s.execute(text("SELECT id FROM outbox"))).scalars().all()
        first, second = sorted(ids)
        async with rt.sessions() as s, s.begin():
            await s.execute(text("UPDATE outbox SET attempts = 2 WHERE id = :i"), {"i": first})
        async with rt.db.connect() as other, rt.db.connect() as probe:
            lock = text("SELECT id FROM outbox WHERE id = :i FOR UPDATE")
            await other.execute(lock, {"i": second})
            renewal = asyncio.create_task(rt.leases.renew())
            await until_a_lock_is_awaited(probe)  # the second row's
            assert not renewal.done()
            taken = await probe.execute(
                text("SELECT id FROM outbox WHERE id = :i FOR UPDATE SKIP LOCKED"), {"i": first}
            )
            # in id order the renewal holds the first row already (before, it met the
            # second one first and waited without the first)
            assert taken.first() is None
            await probe.rollback()
            await other.rollback()
            await asyncio.wait_for(renewal, 5)
        async with rt.sessions() as s:
            leases = (await s.execute(text("SELECT leased_until > now() FROM outbox"))).all()
        assert leases == [(True,), (True,)]
    finally:
        await rt.db.dispose()
