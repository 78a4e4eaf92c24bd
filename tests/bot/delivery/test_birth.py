"""Claimed at birth: a new inbox row that is its chat's head is written leased to the running
worker and processed without a claim; the replies of its group commit are written leased to
the dispatcher and sent without a claim. Everything else goes the claim's way, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from bot.channel import TransientSendError
from bot.runtime import Runtime
from storage import queries
from storage.models import (
    Direction,
    InboxStatus,
    InboxUpdate,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
    utcnow,
)
from tests.bot.delivery.test_inbox import parse
from tests.conftest import RecordingChannel, make_settings, recorder, settled


@pytest.fixture
async def running(db_url: str) -> AsyncIterator[Runtime]:
    """A runtime whose inbox worker and dispatcher run (not polling: a long interval, so
    what is done is done by birth or by a wake-up), counting the rows their claims take."""
    settings = make_settings(db_url)
    dispatcher = settings.dispatcher.model_copy(update={"poll_interval_seconds": 30.0})
    rt = Runtime(settings.model_copy(update={"dispatcher": dispatcher}), channels=[])
    rt.channels["test"] = RecordingChannel()
    rt.inbox.register("test", parse)
    claimed = {"inbox": 0, "outbox": 0}
    inbox_claim, outbox_claim = rt.inbox._claim, rt.dispatcher._claim

    async def count_inbox(limit: int) -> list[InboxUpdate]:
        rows = await inbox_claim(limit)
        claimed["inbox"] += len(rows)
        return rows

    async def count_outbox(recipient: str | None = None) -> list[OutboxMessage]:
        rows = await outbox_claim(recipient)
        claimed["outbox"] += len(rows)
        return rows

    rt.inbox._claim = count_inbox  # type: ignore[method-assign]
    rt.dispatcher._claim = count_outbox  # type: ignore[method-assign]
    rt.claimed = claimed  # type: ignore[attr-defined]
    await rt.start()
    yield rt
    await rt.stop()


async def accept(rt: Runtime, n: int, user: str, text: str) -> bool:
    return await rt.inbox.accept(
        "test", f"{user}-{n}", user, {"id": f"{user}-{n}", "user": user, "text": text}
    )


async def inbound_texts(rt: Runtime) -> dict[str, list[str]]:
    """Each chat's messages in the order the engine handled them."""
    async with rt.sessions() as s:
        q = (
            select(Touchpoint.platform_message_id, Touchpoint.text)
            .where(Touchpoint.direction == Direction.IN, Touchpoint.kind == "message")
            .order_by(Touchpoint.id)
        )
        got: dict[str, list[str]] = {}
        for message_id, text in await s.execute(q):
            user = str(message_id).removeprefix("msg-").rsplit("-", 1)[0]
            got.setdefault(user, []).append(text or "")
    return got


async def test_a_row_born_claimed_is_processed_once(running: Runtime) -> None:
    assert await accept(running, 1, "u1", "hello")
    assert not await accept(running, 1, "u1", "hello")  # a redelivery: deduped as before
    await settled(running)
    async with running.sessions() as s:
        (row,) = (await s.execute(select(InboxUpdate))).scalars()
        outbox = list((await s.execute(select(OutboxMessage))).scalars())
    assert row.status == InboxStatus.DONE and row.attempts == 1 and row.leased_by is None
    assert outbox and all(o.status == OutboxStatus.SENT and o.attempts == 1 for o in outbox)
    assert len(recorder(running).sent) == len(outbox)  # each reply once
    # neither the inbox row nor its replies went through a claim
    assert running.claimed == {"inbox": 0, "outbox": 0}  # type: ignore[attr-defined]


async def test_order_per_chat_with_a_backlog(running: Runtime) -> None:
    # several messages of one chat at once: one is born claimed, the rest wait behind it
    texts = [f"message {n}" for n in range(8)]
    await asyncio.gather(
        *(accept(running, n, "busy", t) for n, t in enumerate(texts)),
        *(accept(running, 0, f"quiet{n}", "hi") for n in range(4)),
    )
    await settled(running, timeout=30)
    assert (await inbound_texts(running))["busy"] == texts
    assert running.claimed["inbox"] >= 1  # type: ignore[attr-defined]  # the backlog's way
    async with running.sessions() as s:
        statuses = set((await s.execute(select(InboxUpdate.status))).scalars())
    assert statuses == {InboxStatus.DONE}


async def test_two_hundred_chats_at_once_are_all_born_claimed(running: Runtime) -> None:
    """The default slots cover 200 chats writing at once (bench/telegram.py's load): each
    row waits for its turn in memory, none in the table for a claim (four round trips, and
    newer rows born into the slots before it)."""
    await asyncio.gather(*(accept(running, 0, f"c{n}", "hi") for n in range(200)))
    await settled(running, timeout=60)
    assert running.claimed["inbox"] == 0  # type: ignore[attr-defined]
    assert set(await inbound_texts(running)) == {f"c{n}" for n in range(200)}


async def test_no_free_slot_falls_back_to_the_claim(running: Runtime) -> None:
    running.inbox.concurrency = 1
    await asyncio.gather(*(accept(running, 0, f"c{n}", "hi") for n in range(5)))
    await settled(running, timeout=30)
    assert running.claimed["inbox"] >= 1  # type: ignore[attr-defined]
    assert set(await inbound_texts(running)) == {f"c{n}" for n in range(5)}


async def test_a_chat_behind_a_deferred_row_waits(running: Runtime) -> None:
    """A row the flood control put back is unfinished: the chat's next row is not born."""
    assert await accept(running, 0, "f", "first")
    await settled(running)
    async with running.sessions() as s, s.begin():  # as `defer` leaves a row
        s.add(
            InboxUpdate(
                channel="test",
                dedupe_key="f-deferred",
                partition_key="f",
                payload={"id": "f-deferred", "user": "f", "text": "second"},
                status=InboxStatus.PROCESSING,
                attempts=0,
                leased_until=utcnow(),
                created_at=utcnow(),
            )
        )
    assert await accept(running, 2, "f", "third")
    async with running.sessions() as s:
        third = (
            await s.execute(select(InboxUpdate).where(InboxUpdate.dedupe_key == "f-2"))
        ).scalar_one()
    assert third.status == InboxStatus.PENDING and third.leased_by is None
    running.inbox.notify()
    await settled(running, timeout=30)
    assert (await inbound_texts(running))["f"] == ["first", "second", "third"]


async def test_a_row_born_claimed_by_a_dead_process_is_taken_after_its_lease(
    running: Runtime,
) -> None:
    started: list[InboxUpdate] = []
    # killed after commit
    running.inbox._start = lambda row, **_: started.append(row)  # type: ignore[method-assign]
    assert await accept(running, 1, "k", "hello")
    assert len(started) == 1
    async with running.sessions() as s:
        row = (await s.execute(select(InboxUpdate))).scalar_one()
    assert row.status == InboxStatus.PROCESSING and row.leased_by == running.leases.boot_id
    assert row.attempts == 1
    # another process, after the lease: the claim takes it, once
    other = Runtime(running.settings, channels=[])
    other.channels["test"] = RecordingChannel()
    other.inbox.register("test", parse)
    try:
        assert await other.inbox.process_once() == 0  # leased: not taken
        async with running.sessions() as s, s.begin():
            await s.execute(update(InboxUpdate).values(leased_until=utcnow()))
        await other.inbox.drain()
        await other.dispatcher.drain()
        async with other.sessions() as s:
            row = (await s.execute(select(InboxUpdate))).scalar_one()
        assert row.status == InboxStatus.DONE and row.attempts == 2
        assert len(recorder(other).sent) >= 1
        assert not recorder(running).sent
    finally:
        await other.db.dispose()


async def born_replies(rt: Runtime, recipients: list[str]) -> queries.OutboxBirth:
    """Replies written in one transaction inside `lease_at_birth`, then handed over."""
    birth = rt.dispatcher.birth()
    assert birth is not None
    async with rt.sessions() as s, s.begin():
        queries.lease_at_birth(s, birth)
        for n, recipient in enumerate(recipients):
            await queries.enqueue(
                s,
                channel="test",
                recipient_id=recipient,
                thread_key=recipient,
                body={"text": f"{recipient} {n}"},
                conversation_id=None,
                identity_id=None,
            )
    rt.dispatcher.hand_over(birth.born)
    return birth


async def test_outbox_handover_sends_once_in_order(running: Runtime) -> None:
    # a recipient with an older unsent row: its new rows are pending, behind it
    async with running.sessions() as s, s.begin():
        await queries.enqueue(
            s,
            channel="test",
            recipient_id="late",
            thread_key="late",
            body={"text": "late older"},
            conversation_id=None,
            identity_id=None,
        )
        await s.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))
    birth = await born_replies(running, ["a", "b", "a", "late", "a"])
    assert len(birth.born) == 4 and birth.pending == 1
    await recorder(running).wait_for(4)
    running.dispatcher.notify()
    await settled(running)
    sent = recorder(running)
    assert sent.texts("a") == ["a 0", "a 2", "a 4"]
    assert sent.texts("b") == ["b 1"]
    assert sent.texts("late") == ["late older", "late 3"]
    assert len(sent.sent) == 6
    async with running.sessions() as s:
        rows = list((await s.execute(select(OutboxMessage))).scalars())
    assert all(r.status == OutboxStatus.SENT and r.attempts == 1 for r in rows)


async def test_a_born_row_retried_takes_the_rows_behind_it_back(running: Runtime) -> None:
    recorder(running).failures.append(TransientSendError("try later", retry_after=0.1))
    await born_replies(running, ["r", "r", "r"])
    await settled(running, timeout=30)
    assert recorder(running).texts("r") == ["r 0", "r 1", "r 2"]
    assert running.claimed["outbox"] >= 1  # type: ignore[attr-defined]


async def test_no_birth_when_the_dispatcher_is_full_or_stopped(running: Runtime) -> None:
    running.dispatcher._born_rows = running.dispatcher.born_size
    assert running.dispatcher.birth() is None
    running.dispatcher._born_rows = 0
    birth = running.dispatcher.birth()
    assert birth is not None
    birth.slots = 1
    async with running.sessions() as s, s.begin():
        queries.lease_at_birth(s, birth)
        for recipient in ("x", "y"):
            await queries.enqueue(
                s,
                channel="test",
                recipient_id=recipient,
                thread_key=recipient,
                body={"text": recipient},
                conversation_id=None,
                identity_id=None,
            )
    assert [r["recipient_id"] for r in birth.born] == ["x"] and birth.pending == 1
    running.dispatcher.hand_over(birth.born)
    running.dispatcher.notify()
    await settled(running)
    assert sorted(recorder(running).texts()) == ["x", "y"]
    await running.dispatcher.stop()
    assert running.dispatcher.birth() is None


async def test_a_born_row_whose_lease_ran_out_is_not_claimed_by_its_own_process(
    running: Runtime,
) -> None:
    """Under load the heartbeat may renew a born row's lease only after it ran out: our
    own claim must not take the row being sent (it would go out twice)."""
    channel = recorder(running)
    gate = asyncio.Event()
    send = channel.send

    async def slow(message: Any) -> Any:
        await gate.wait()
        return await send(message)

    channel.send = slow  # type: ignore[method-assign]
    await born_replies(running, ["slow"])
    await asyncio.sleep(0.05)  # its task waits at the platform
    async with running.sessions() as s, s.begin():
        await s.execute(update(OutboxMessage).values(leased_until=utcnow()))
    assert await running.dispatcher._claim() == []
    gate.set()
    await settled(running)
    assert channel.texts("slow") == ["slow 0"]


async def test_a_born_inbox_row_whose_lease_ran_out_is_not_claimed_by_its_own_process(
    running: Runtime,
) -> None:
    gate = asyncio.Event()
    process = running.inbox._process

    async def slow(row: InboxUpdate, *, admitted: bool = False) -> None:
        await gate.wait()
        await process(row, admitted=admitted)

    running.inbox._process = slow  # type: ignore[method-assign]
    assert await accept(running, 1, "s", "hello")
    async with running.sessions() as s, s.begin():
        await s.execute(update(InboxUpdate).values(leased_until=utcnow()))
    assert await running.inbox._claim(10) == []
    gate.set()
    await settled(running)
    assert (await inbound_texts(running))["s"] == ["hello"]


# ---- a commit so slow that the leases of its born rows nearly ran out -----------------------
# Not handled from memory (another worker's claim may take them once the lease is out), but
# released to the claim: left leased to us, the heartbeat renewed them as long as anything
# else was being worked on, and no claim took them till the load ended (replies a minute
# late under bench/telegram.py's load, with nothing in the log).


async def test_a_reply_born_too_late_to_send_goes_to_the_claim(running: Runtime) -> None:
    rt = running
    now = utcnow()
    values: dict[str, Any] = {
        "channel": "test",
        "recipient_id": "late",
        "thread_key": "late",
        "body": {"text": "hello"},
        "conversation_id": None,
        "identity_id": None,
        "status": OutboxStatus.SENDING,
        "attempts": 1,
        "leased_by": rt.leases.boot_id,
        "leased_until": now + timedelta(seconds=1),  # less than half the lease left
        "next_attempt_at": now,
        "created_at": now,
    }
    async with rt.sessions() as s, s.begin():
        row = OutboxMessage(**values)
        s.add(row)
        await s.flush()
        values["id"] = row.id
    with rt.leases.held():  # other work in flight: the heartbeat renews our leases
        rt.dispatcher.hand_over([values])
        async with asyncio.timeout(5):
            while not recorder(rt).sent:
                await asyncio.sleep(0.05)
    assert [m.outbox_id for m in recorder(rt).sent] == [values["id"]]
    await settled(rt)
    async with rt.sessions() as s:
        sent = await s.get(OutboxMessage, values["id"])
    assert sent is not None and sent.status == OutboxStatus.SENT and sent.attempts == 1


async def test_an_update_born_too_late_to_start_goes_to_the_claim(
    running: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = running
    # the accept's commit took so long that the lease it wrote has less than half left
    monkeypatch.setattr(rt.leases, "until", lambda: utcnow() + timedelta(seconds=1))
    with rt.leases.held():  # other work in flight: the heartbeat renews our leases
        assert await accept(rt, 0, "late", "hello")
        monkeypatch.undo()
        async with asyncio.timeout(5):
            while "late" not in await inbound_texts(rt):
                await asyncio.sleep(0.05)
    await settled(rt)
    async with rt.sessions() as s:
        (row,) = (await s.execute(select(InboxUpdate))).scalars()
    assert row.status == InboxStatus.DONE and row.attempts == 1
    assert rt.claimed["inbox"] == 1  # type: ignore[attr-defined]
