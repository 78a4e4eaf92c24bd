"""Per-identity flood control: a flooding customer is slowed, nobody else is, and nothing is
lost, reordered or doubled."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select, text
from websockets.asyncio.client import ClientConnection

from bot.channel.messages import ChannelEvent, InboundMessage
from bot.config import LimitsSettings
from bot.delivery.flood import Admission, FloodControl, SharedFloodControl, row_key
from bot.runtime import Runtime
from storage.db import create_engine, session_factory
from storage.models import (
    Direction,
    InboxStatus,
    InboxUpdate,
    OutboxMessage,
    Touchpoint,
)
from tests.channels.telegram.helpers import channel, post, serving, settled, tg_settings
from tests.channels.webchat.helpers import open_socket
from tests.conftest import make_settings, recorder
from tests.conftest import settled as idle
from tests.server import serve
from tests.standins.telegram_api import TelegramStandIn
from tests.timed import TIMED

RATE, BURST = 5.0, 5  # well below what the worker does unpaced (~15/s)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate() -> None:
    clock = Clock()
    flood = FloodControl(rate=2.0, burst=3, clock=clock)
    assert [flood.delay("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert flood.delay("a") == pytest.approx(0.5)
    assert flood.delay("a") == pytest.approx(0.5)  # asking again takes nothing
    assert flood.delay("b") == 0.0  # another sender is not affected
    clock.now += 0.5
    assert flood.delay("a") == 0.0
    assert flood.delay("a") == pytest.approx(0.5)
    clock.now += 60  # idle: the bucket refills up to the burst, not beyond
    assert [flood.delay("a") for _ in range(4)][-1] == pytest.approx(0.5)


def test_keys_are_bounded() -> None:
    clock = Clock()
    flood = FloodControl(rate=1.0, burst=1, max_keys=3, clock=clock)
    for key in "abcde":
        flood.delay(key)
    assert len(flood) == 3
    assert flood.delay("a") == 0.0  # forgotten: starts full again
    assert flood.delay("e") == pytest.approx(1.0)  # remembered: still empty


def test_settings_and_row_keys() -> None:
    limits = LimitsSettings()
    assert limits.messages_per_second > 0 and limits.burst >= 1
    with pytest.raises(ValueError):
        FloodControl(rate=0, burst=1)
    assert row_key("telegram", "-") is None  # no sender: never one identity
    assert row_key("telegram", "42") == ("telegram", "42")


@TIMED
async def test_wait_sleeps_only_the_flooder() -> None:
    flood = FloodControl(rate=50.0, burst=2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(12):
        await flood.wait("flooder")
    flooder = loop.time() - start
    start = loop.time()
    await flood.wait("other")
    assert loop.time() - start < 0.05  # the flooder waited 0.18 s or more
    assert flooder >= 10 / 50 * 0.9


# ---- through the real inbox ---------------------------------------------------------------


def parse(payload: dict[str, Any]) -> list[InboundMessage | ChannelEvent]:
    return [
        InboundMessage(
            channel="test",
            sender_id=payload["user"],
            platform_message_id=payload["id"],
            thread_key=payload["user"],
            text=payload["text"],
            locale_hint="en",
        )
    ]


async def accept(rt: Runtime, user: str, n: int) -> bool:
    payload = {"id": f"{user}-{n}", "user": user, "text": f"{user}: where is my parcel {n}?"}
    return await rt.inbox.accept("test", payload["id"], user, payload)


async def outbox_ids(rt: Runtime, user: str) -> list[int]:
    async with rt.sessions() as s:
        q = select(OutboxMessage.id).where(OutboxMessage.recipient_id == user)
        return sorted((await s.execute(q)).scalars())


async def inbound_texts(rt: Runtime, channel: str = "test") -> list[str]:
    async with rt.sessions() as s:
        q = (
            select(Touchpoint.text)
            .where(Touchpoint.direction == Direction.IN, Touchpoint.channel == channel)
            .order_by(Touchpoint.id)
        )
        return [t or "" for t in (await s.execute(q)).scalars()]


def limiter(runtime: Runtime, rate: float, burst: int) -> Admission:
    """What the runtime gives the inbox: shared on PostgreSQL, in memory on SQLite."""
    if runtime.db.dialect.name == "postgresql":
        return SharedFloodControl(runtime.sessions, rate, burst)
    return FloodControl(rate, burst)


@pytest.fixture
async def worker(runtime: Runtime) -> AsyncIterator[Runtime]:
    runtime.inbox.register("test", parse)
    runtime.inbox.flood = limiter(runtime, RATE, BURST)
    await runtime.dispatcher.start()
    yield runtime  # the test starts the inbox worker
    await runtime.inbox.stop()
    await runtime.dispatcher.stop()


async def handled(rt: Runtime, user: str) -> list[InboxUpdate]:
    async with rt.sessions() as s:
        q = select(InboxUpdate).where(
            InboxUpdate.partition_key == user, InboxUpdate.status == InboxStatus.DONE
        )
        return sorted((await s.execute(q)).scalars(), key=at)


def at(row: InboxUpdate) -> datetime:
    assert row.processed_at is not None
    return row.processed_at


async def test_flooder_is_slowed_others_are_not(worker: Runtime) -> None:
    rt = worker
    for n in range(50):  # 50 messages at once
        assert await accept(rt, "flooder", n)
    assert await accept(rt, "other", 0)  # sent just after them
    await rt.inbox.start()
    async with asyncio.timeout(10):  # the flooder's burst is through; now it waits
        while len(await handled(rt, "flooder")) <= BURST:
            await asyncio.sleep(0.01)
    # mid-flood, a third customer writes: the waiting flooder must not hold up the worker
    sent = time.monotonic()
    assert await accept(rt, "late", 0)
    async with asyncio.timeout(5):
        while not await handled(rt, "late"):
            await asyncio.sleep(0.005)
    waited = time.monotonic() - sent
    # the flooder's remaining 40-odd messages need 8 s; the late one must not wait for them
    assert waited < 1.5, f"a customer waited {waited:.2f}s behind the flooder"
    assert await outbox_ids(rt, "other") and await outbox_ids(rt, "late")  # replies queued
    await idle(rt, timeout=30)
    (other,) = await handled(rt, "other")
    (late,) = await handled(rt, "late")
    flooder = await handled(rt, "flooder")
    assert at(other) < at(flooder[9])
    assert at(late) < at(flooder[-1])
    # all 50 handled, in order, once; the deferrals were not counted as attempts
    texts = [t for t in await inbound_texts(rt) if t.startswith("flooder")]
    assert texts == [f"flooder: where is my parcel {n}?" for n in range(50)]
    async with rt.sessions() as s:
        rows = list((await s.execute(select(InboxUpdate).order_by(InboxUpdate.id))).scalars())
    assert [r.status for r in rows] == [InboxStatus.DONE] * 52
    assert {r.attempts for r in rows} == {1}
    done = [at(r) for r in rows if r.partition_key == "flooder"]
    assert done == sorted(done)  # in order
    span = (done[-1] - done[0]).total_seconds()
    assert span >= (50 - BURST) / RATE * 0.9, f"50 handled in {span:.2f}s: not slowed"
    # a redelivery of any of them is refused, and nothing was replied twice
    assert not await accept(rt, "flooder", 7)
    await rt.dispatcher.drain()
    assert len(recorder(rt).sent) == len({m.outbox_id for m in recorder(rt).sent})


async def test_drain_waits_for_deferred_rows(runtime: Runtime) -> None:
    runtime.inbox.register("test", parse)
    runtime.inbox.flood = limiter(runtime, RATE, 2)
    for n in range(8):
        await accept(runtime, "u", n)
    await runtime.inbox.drain()
    texts = await inbound_texts(runtime)
    assert texts == [f"u: where is my parcel {n}?" for n in range(8)]


# ---- several workers on PostgreSQL: one limit ------------------------------------------


async def test_a_row_born_claimed_is_admitted_in_its_accept(worker: Runtime) -> None:
    """PostgreSQL: a row born claimed is admitted by the shared flood control in the
    accept's statement, not in a statement of its own before it is handled, and counted
    once; a row over the rate is born pending, and its claim defers it as before."""
    rt = worker
    if rt.db.dialect.name != "postgresql":
        pytest.skip("the shared flood control is PostgreSQL's")
    rt.inbox.flood = SharedFloodControl(rt.sessions, rate=0.25, burst=2)  # a token per 4 s
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(rt.db.sync_engine, "before_cursor_execute", seen)
    await rt.inbox.start()
    try:
        for n in range(2):  # one at a time, each its chat's head: born claimed
            assert await accept(rt, "u", n)
            async with asyncio.timeout(1):  # counted twice, the second would wait 4 s
                while len(await handled(rt, "u")) <= n:
                    await asyncio.sleep(0.01)
        # the admissions (the purge of idle senders runs once, apart)
        marks = [s for s in statements if "INSERT INTO flood_marks" in s]
        assert len(marks) == 2 and all("INSERT INTO inbox (" in s for s in marks)
        async with rt.sessions() as s:
            ahead = (
                await s.execute(text("SELECT tat - extract(epoch FROM now()) FROM flood_marks"))
            ).scalar_one()
        assert 4.0 < ahead <= 8.1  # two intervals of 4 s from the first (one would be <= 4)
        sent = time.monotonic()
        assert await accept(rt, "u", 2)  # over the rate: born pending, deferred by its claim
        async with asyncio.timeout(8):  # due 4 s less the time the first two took
            while len(await handled(rt, "u")) <= 2:
                await asyncio.sleep(0.01)
        assert time.monotonic() - sent >= 1.0
    finally:
        event.remove(rt.db.sync_engine, "before_cursor_execute", seen)


async def test_a_failed_purge_of_flood_marks_does_not_fail_the_accept(runtime: Runtime) -> None:
    """The accept purges idle senders' marks after its rows are committed: a failure there
    is logged, and the webhook still gets its answer (it was an error, and a redelivery)."""
    if runtime.db.dialect.name != "postgresql":
        pytest.skip("the shared flood control is PostgreSQL's")
    runtime.inbox.register("test", parse)
    flood = SharedFloodControl(runtime.sessions, RATE, BURST)

    async def broken() -> None:
        raise RuntimeError("the purge failed")

    flood.tidy = broken  # type: ignore[method-assign]
    runtime.inbox.flood = flood
    assert await accept(runtime, "u", 0)
    async with runtime.sessions() as s:
        rows = list((await s.execute(select(InboxUpdate))).scalars())
    assert [r.dedupe_key for r in rows] == ["u-0"]


@pytest.mark.postgres
async def test_the_shared_limit_counts_every_worker(pg_url: str) -> None:
    """Two workers (two engines, as two processes have) share one sender's limit; a
    refused ask takes nothing; other senders are not affected."""
    engines = [create_engine(pg_url), create_engine(pg_url)]
    a, b = (SharedFloodControl(session_factory(e), rate=1.0, burst=3) for e in engines)
    sender = ("telegram", f"chat-{uuid.uuid4().hex}")
    try:
        for worker in (a, b):  # connected first: a slow connect let a too-early one through
            assert await worker.admit(("telegram", f"chat-{uuid.uuid4().hex}")) == 0
        assert [await a.admit(sender), await b.admit(sender), await a.admit(sender)] == [0, 0, 0]
        first = await b.admit(sender)  # the fourth message, on either worker: too early
        assert 0 < first <= 1.0
        again = await a.admit(sender)
        assert 0 < again <= first  # asking again took nothing
        assert await b.admit(("telegram", f"chat-{uuid.uuid4().hex}")) == 0
        await asyncio.sleep(again)
        assert await a.admit(sender) == 0  # its turn has come
        assert 0 < await b.admit(sender) <= 1.0  # and the next is a turn later
    finally:
        for e in engines:
            await e.dispose()


@pytest.mark.postgres
async def test_the_admissions_asked_together_are_one_statement(pg_url: str) -> None:
    """Many senders asked for at once share one statement; a sender
    asked for twice in it is counted twice, in order, as asked one after the other."""
    db = create_engine(pg_url)
    statements: list[str] = []
    event.listen(db.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    limiter = SharedFloodControl(session_factory(db), rate=4.0, burst=2)
    try:
        await limiter.admit(("telegram", "warm-up"))  # the first admission also purges
        statements.clear()
        one, two = (("telegram", f"chat-{uuid.uuid4().hex}") for _ in range(2))
        others = [("telegram", f"chat-{uuid.uuid4().hex}") for _ in range(10)]
        asked = [one, *others, one, two, one]
        waits = await asyncio.gather(*(limiter.admit(k) for k in asked))
        assert waits[1:11] == [0.0] * 10 and waits[12] == 0.0
        assert waits[0] == 0.0 and waits[11] == 0.0  # `one`: its burst of two
        assert 0 < waits[13] <= 0.25  # and the third is too early
        # the first round holds every sender once, the second `one` again, the third once more
        assert len(statements) == 3, statements
        assert all("flood_marks" in s for s in statements)
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_shared_marks_hold_no_chat_ids(pg_url: str) -> None:
    limiter = SharedFloodControl(session_factory(db := create_engine(pg_url)), 2.0, 2)
    chat = f"chat-{uuid.uuid4().hex}"
    try:
        await limiter.admit(("telegram", chat))
        async with db.connect() as conn:
            keys = (await conn.execute(text("SELECT key FROM flood_marks"))).scalars().all()
        assert keys and not any(chat in k for k in keys)
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_senders_idle_an_hour_are_forgotten(pg_url: str) -> None:
    db = create_engine(pg_url)
    try:
        async with db.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO flood_marks (key, tat) VALUES ('idle', "
                    "extract(epoch FROM now()) - 3700), ('recent', extract(epoch FROM now()))"
                )
            )
        await SharedFloodControl(session_factory(db), 2.0, 2).admit(("slack", "U1"))
        async with db.connect() as conn:
            keys = set((await conn.execute(text("SELECT key FROM flood_marks"))).scalars())
        assert "idle" not in keys and "recent" in keys
    finally:
        await db.dispose()


async def test_a_channel_taking_input_gets_the_inbox_paced_shared_on_postgresql_only(
    db_url: str,
) -> None:
    """The runtime (not the channel) sets the inbox's flood control up when the first
    channel registers a parser: shared on PostgreSQL (`limits.shared`), in memory else."""
    for shared in (True, False):
        settings = make_settings(db_url, limits=LimitsSettings(shared=shared))
        rt = Runtime(settings, channels=[])
        try:
            assert rt.inbox.flood is None and rt.flood is None  # no channel takes input
            rt.register_parser("test", parse)
            own = rt.flood
            assert isinstance(own, FloodControl)
            rt.register_parser("other", parse)
            assert rt.flood is own  # made once
            on_pg = rt.db.dialect.name == "postgresql"
            expected = SharedFloodControl if shared and on_pg else FloodControl
            assert type(rt.inbox.flood) is expected
        finally:
            await rt.db.dispose()


# ---- a Telegram customer flooding the webhook ---------------------------------------------


async def test_telegram_flood_through_the_webhook(db_url: str, tg: TelegramStandIn) -> None:
    flooder, other = 700000001, 700000002
    settings = tg_settings(db_url, tg, mode="webhook", chat_rate_per_second=200, chat_burst=30)
    limits = LimitsSettings(messages_per_second=25, burst=BURST)
    settings = settings.model_copy(update={"limits": limits})
    async with serving(settings) as (base, rt), httpx.AsyncClient() as client:
        assert channel(rt) is not None
        updates = [tg.push_text(flooder, f"flood {n}", language_code="en") for n in range(50)]
        for u in updates:  # as Telegram does: one chat's updates one after the other
            assert (await post(client, base, u)).status_code == 200
        update = tg.push_text(other, "hello", language_code="en")
        sent = time.monotonic()
        assert (await post(client, base, update)).status_code == 200
        await tg.wait_for(lambda: tg.sent_messages(other), timeout=5)
        assert time.monotonic() - sent < 1.5
        assert len(await handled(rt, str(flooder))) < 50  # answered before the flood was
        await settled(rt, tg, timeout=30)
        texts = [t for t in await inbound_texts(rt, "telegram") if t.startswith("flood")]
        assert texts == [f"flood {n}" for n in range(50)]


# ---- the web chat: the limiter sleeps in the flooding visitor's own socket task ----------


async def test_webchat_flooder_waits_alone(db_url: str) -> None:
    settings = make_settings(db_url, limits=LimitsSettings(messages_per_second=5, burst=2))
    async with serve(settings) as (base, _):
        # two customers behind the (trusted, loopback) proxy: one address each
        async with (
            await open_socket(base, forwarded_for="203.0.113.1", lang="en") as a,
            await open_socket(base, forwarded_for="203.0.113.2", lang="en") as b,
        ):
            await a.recv(), await b.recv()  # the history frames
            loop = asyncio.get_running_loop()
            start = loop.time()
            for n in range(12):
                await a.send(json.dumps({"type": "message", "id": f"flood{n:04d}", "text": "hi"}))
            await b.send(json.dumps({"type": "message", "id": "other0001", "text": "hello"}))
            assert (await acks(b, 1))[0][0] == "other0001"
            other = loop.time() - start
            flooder = await acks(a, 12)
        assert [mid for mid, _ in flooder] == [f"flood{n:04d}" for n in range(12)]
        early = sum(at - start < 0.6 for _, at in flooder)
        assert early <= 2 + 3 + 1, f"{early} acks in 0.6 s: the flooder was not slowed"
        assert other < flooder[-1][1] - start  # the other visitor did not wait for the flood


async def acks(ws: ClientConnection, n: int) -> list[tuple[str, float]]:
    """The next `n` acks (id, loop time received); reply frames are skipped."""
    got: list[tuple[str, float]] = []
    async with asyncio.timeout(15):
        while len(got) < n:
            frame = json.loads(await ws.recv())
            if frame["type"] == "ack":
                got.append((frame["id"], asyncio.get_running_loop().time()))
    return got
