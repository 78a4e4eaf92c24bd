"""The outbox dispatcher: retries, permanent failures, order, crash recovery."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select, update

from bot.channel import PermanentSendError, SendResult, TransientSendError
from bot.channel.messages import OutboundMessage
from bot.runtime import Runtime
from storage.models import Identity, OutboxMessage, OutboxStatus, Touchpoint, utcnow
from tests.conftest import RecordingChannel, inbound, make_settings, recorder


async def outbox(rt: Runtime) -> list[OutboxMessage]:
    async with rt.sessions() as s:
        return list((await s.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars())


async def test_pending_rows_survive_a_crash_and_are_sent_once(db_url: str) -> None:
    first = Runtime(make_settings(db_url), channels=[])
    first.channels["test"] = RecordingChannel()
    await first.start(dispatch=False)
    for text in ["hello", "complaint", "1"]:
        await first.engine.handle(inbound(text, user="crash"))
    await first.stop()  # "crash": replies committed, never dispatched
    assert {r.status for r in await outbox(first)} == {OutboxStatus.PENDING}
    assert recorder(first).sent == []

    second = Runtime(make_settings(db_url), channels=[])
    second.channels["test"] = RecordingChannel()
    await second.start()  # the dispatcher resumes the outbox at start
    try:
        await recorder(second).wait_for(len(await outbox(second)))
        await second.dispatcher.stop()  # lets the last delivery finish its bookkeeping
        rows = await outbox(second)
        assert [m.outbox_id for m in recorder(second).sent] == [r.id for r in rows]
        assert {r.status for r in rows} == {OutboxStatus.SENT}
    finally:
        await second.stop()


async def test_row_leased_by_a_dead_worker_is_sent_after_the_lease(runtime: Runtime) -> None:
    await runtime.engine.handle(inbound("hello"))
    claimed = await runtime.dispatcher._claim()  # a worker claims it and dies mid-send
    assert len(claimed) == 1
    assert await runtime.dispatcher.drain_once() == 0  # leased: not sent twice meanwhile
    async with runtime.sessions() as s, s.begin():
        await s.execute(update(OutboxMessage).values(leased_until=utcnow() - timedelta(seconds=1)))
    await runtime.dispatcher.drain()
    assert len(recorder(runtime).sent) == 1


async def test_transient_errors_retry_with_backoff_then_deliver_once(runtime: Runtime) -> None:
    ch = recorder(runtime)
    ch.failures = [TransientSendError("429", retry_after=0.2), TransientSendError("502")]
    await runtime.engine.handle(inbound("hello"))
    await runtime.dispatcher.start()
    await ch.wait_for(1)
    await runtime.dispatcher.stop()
    rows = await outbox(runtime)
    assert rows[0].status == OutboxStatus.SENT and rows[0].attempts == 3
    assert rows[0].platform_message_id == f"t-{rows[0].id}"
    assert len(ch.sent) == 1


async def test_retry_after_is_respected(runtime: Runtime) -> None:
    ch = recorder(runtime)
    ch.failures = [TransientSendError("429", retry_after=30)]
    await runtime.engine.handle(inbound("hello"))
    await runtime.dispatcher.drain()
    row = (await outbox(runtime))[0]
    assert row.status == OutboxStatus.PENDING and ch.sent == []
    assert row.next_attempt_at - utcnow() > timedelta(seconds=25)


async def test_permanent_error_marks_unreachable_without_retry(runtime: Runtime) -> None:
    ch = recorder(runtime)
    ch.failures = [PermanentSendError("Forbidden: bot was blocked by the user")]
    await runtime.engine.handle(inbound("complaint"))  # two replies queued
    await runtime.dispatcher.drain()
    rows = await outbox(runtime)
    assert [r.status for r in rows] == [OutboxStatus.FAILED, OutboxStatus.FAILED]
    assert [r.attempts for r in rows] == [1, 0]
    assert ch.sent == []
    async with runtime.sessions() as s:
        identity = (await s.execute(select(Identity))).scalar_one()
        kinds = (await s.execute(select(Touchpoint.kind))).scalars().all()
    assert not identity.reachable and "blocked" in (identity.unreachable_reason or "")
    assert "delivery_failed" in kinds
    # the customer writing again makes them reachable again
    await runtime.engine.handle(inbound("hello"))
    async with runtime.sessions() as s:
        assert (await s.execute(select(Identity.reachable))).scalar_one()


async def test_gives_up_after_max_attempts(db_url: str) -> None:
    settings = make_settings(db_url)
    settings.dispatcher.max_attempts = 2
    rt = Runtime(settings, channels=[])
    rt.channels["test"] = ch = RecordingChannel()
    await rt.start(dispatch=False)
    try:
        ch.failures = [TransientSendError("500")] * 2
        await rt.engine.handle(inbound("hello"))
        await rt.dispatcher.drain()
        async with rt.sessions() as s, s.begin():
            await s.execute(update(OutboxMessage).values(next_attempt_at=utcnow()))
        await rt.dispatcher.drain()
        row = (await outbox(rt))[0]
        assert row.status == OutboxStatus.FAILED and row.attempts == 2
        assert "gave up" in (row.last_error or "")
    finally:
        await rt.stop()


async def test_order_per_recipient_holds_behind_a_retry(runtime: Runtime) -> None:
    ch = recorder(runtime)
    await runtime.engine.handle(inbound("complaint", user="a"))  # intro + question
    await runtime.engine.handle(inbound("hello", user="b"))
    ch.failures = [TransientSendError("timeout", retry_after=0.1)]  # a's first reply
    await runtime.dispatcher.start()
    await ch.wait_for(3)
    a = [m.outbox_id for m in ch.sent if m.recipient_id == "a"]
    assert a == sorted(a) and len(a) == 2
    assert ch.sent[0].recipient_id == "b"  # b was not held up by a's retry


async def test_unknown_channel_rows_wait(runtime: Runtime) -> None:
    await runtime.engine.handle(inbound("hello"))
    del runtime.channels["test"]
    assert await runtime.dispatcher.drain_once() == 0
    assert (await outbox(runtime))[0].status == OutboxStatus.PENDING


class SlowFor(RecordingChannel):
    """Holds the sends to one recipient until released."""

    def __init__(self, slow: str) -> None:
        super().__init__()
        self.slow = slow
        self.release = asyncio.Event()

    async def send(self, message: OutboundMessage) -> SendResult:
        if message.recipient_id == self.slow:
            await self.release.wait()
        return await super().send(message)


async def test_a_reply_committed_during_a_slow_send_goes_out_at_once(db_url: str) -> None:
    # the batch's claim waited for its slowest send before the next claim: a reply committed
    # meanwhile waited with it (the dispatcher's notify is now a claim of its own)
    rt = Runtime(make_settings(db_url), channels=[])
    ch = rt.channels["test"] = SlowFor(slow="slow")
    await rt.start()
    try:
        await rt.engine.handle(inbound("hello", user="slow"))
        await asyncio.sleep(0.2)  # its send is in flight, held
        assert ch.sent == []
        await rt.engine.handle(inbound("hello", user="quick"))
        await ch.wait_for(1, timeout=2.0)
        assert ch.sent[0].recipient_id == "quick"
        ch.release.set()
        await ch.wait_for(2)
        assert [m.recipient_id for m in ch.sent] == ["quick", "slow"]
    finally:
        ch.release.set()
        await rt.stop()


async def test_a_failed_claim_lets_the_sends_in_flight_finish(db_url: str) -> None:
    # regression: a notify's claim failing (the database away) cancelled the batch's sends
    # in flight; one already delivered lost its sent mark and went out again after its lease
    rt = Runtime(make_settings(db_url), channels=[])
    ch = rt.channels["test"] = SlowFor(slow="slow")
    await rt.start()
    real = rt.dispatcher._claim
    try:
        await rt.engine.handle(inbound("hello", user="slow"))
        await asyncio.sleep(0.2)  # its send is in flight, held

        async def away(recipient: str | None = None) -> list[OutboxMessage]:
            raise OSError("the database is away")

        rt.dispatcher._claim = away  # type: ignore[method-assign]
        rt.dispatcher.notify()
        await asyncio.sleep(0.1)  # the claim failed; the send is still held
        rt.dispatcher._claim = real  # type: ignore[method-assign]
        ch.release.set()
        await ch.wait_for(1)
        async with asyncio.timeout(5):
            while {r.status for r in await outbox(rt)} != {OutboxStatus.SENT}:
                await asyncio.sleep(0.05)
        assert len(ch.sent) == 1
    finally:
        ch.release.set()
        await rt.stop()
