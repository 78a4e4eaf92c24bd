"""The inbox: persist raw updates first, process them afterwards, in order, once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.inbox import ParseError
from bot.messages import ChannelEvent, InboundMessage
from bot.runtime import Runtime
from storage.models import Identity, InboxStatus, InboxUpdate, Touchpoint
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
