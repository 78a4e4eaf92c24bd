"""Engine.start_flows_in: many flow starts in the caller's transaction, in a few multi-row
statements, writing what start_flow writes start by start."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from bot.conversation.engine import FlowStart, HandleResult
from bot.runtime import Runtime
from storage import queries
from storage.models import Conversation, ConversationStatus, OutboxMessage, Touchpoint, utcnow
from tests.conftest import inbound


async def known(rt: Runtime, user: str) -> None:
    """A customer who wrote once: an open conversation of the bot's, no flow running."""
    await rt.engine.handle(inbound("hello", user=user))


async def stranger(rt: Runtime, user: str) -> None:
    """A customer with an identity and no conversation yet (imported, say)."""
    async with rt.sessions() as s, s.begin():
        await queries.create_contact_with_identity(s, "test", user, name=user, locale="de")


async def written(rt: Runtime, user: str) -> dict[str, Any]:
    """What a start wrote for `user`, without what differs between customers by nature."""
    async with rt.sessions() as s:
        conv = (
            (
                await s.execute(
                    select(Conversation)
                    .where(Conversation.thread_key == user)
                    .order_by(Conversation.id.desc())
                )
            )
            .scalars()
            .first()
        )
        assert conv is not None
        touchpoints = (
            await s.execute(
                select(Touchpoint)
                .where(Touchpoint.conversation_id == conv.id, Touchpoint.direction != "in")
                .order_by(Touchpoint.id)
            )
        ).scalars()
        outbox = (
            await s.execute(
                select(OutboxMessage)
                .where(OutboxMessage.conversation_id == conv.id)
                .order_by(OutboxMessage.id)
            )
        ).scalars()
        rows = [(t.kind, t.direction, t.actor, t.text, t.payload, t.outbox_id) for t in touchpoints]
        sent = [o for o in outbox]
    by_outbox = {o.id: n for n, o in enumerate(sent)}
    return {
        "status": conv.status,
        "flow_state": conv.flow_state,
        # the outbox row a touchpoint names, by its place among the conversation's rows
        "touchpoints": [(*r[:5], by_outbox.get(r[5]) if r[5] else None) for r in rows],
        "outbox": [
            (
                o.channel,
                o.recipient_id == user,
                o.thread_key == user,
                o.status,
                o.identity_id == conv.identity_id,
            )
            for o in sent
        ],
        "bodies": [{k: v for k, v in o.body.items() if k != "contact_id"} for o in sent],
    }


async def test_each_start_writes_what_start_flow_writes(rt: Runtime) -> None:
    """Three situations (an open conversation, none yet, a marketing start with its stop
    notice and mark), each started once by start_flow and once in one start_flows_in."""
    await known(rt, "a1")
    await known(rt, "b1")
    await stranger(rt, "a2")
    await stranger(rt, "b2")
    await known(rt, "a3")
    await known(rt, "b3")
    extra = {"campaign": "c", "run_id": 7}
    marketing = {"footer_key": "campaign.stop_notice", "campaign": "m"}
    one = [
        await rt.engine.start_flow("test", "a1", "winback", extra=extra),
        await rt.engine.start_flow("test", "a2", "csat", extra={"case_reference": "C-1"}),
        await rt.engine.start_flow("test", "a3", "winback", **marketing),  # type: ignore[arg-type]
    ]
    starts = [
        FlowStart("test", "b1", "winback", extra=extra),
        FlowStart("test", "b2", "csat", extra={"case_reference": "C-1"}),
        FlowStart("test", "b3", "winback", **marketing),  # type: ignore[arg-type]
    ]
    async with rt.sessions() as s, s.begin():
        many = await rt.engine.start_flows_in(s, starts)
    for user_a, user_b, a, b in zip(["a1", "a2", "a3"], ["b1", "b2", "b3"], one, many, strict=True):
        assert a is not None and b is not None
        assert b.conversation_id is not None and b.outbox_ids and b.replies == a.replies
        assert len(b.outbox_ids) == len(a.outbox_ids)
        assert await written(rt, user_b) == await written(rt, user_a)
    # the rows' times are the real time, as the ORM's defaults make them on start_flow's
    # path (the runtime's clock is a fortnight off here)
    async with rt.sessions() as s:
        times = (
            await s.execute(
                select(Conversation.created_at, Conversation.updated_at).where(
                    Conversation.thread_key.in_(["a1", "a2", "b1", "b2"])
                )
            )
        ).all()
    assert len(times) == 4
    assert all(abs(t - utcnow()) < timedelta(minutes=1) for row in times for t in row)
    # the stop notice under the last opening message, the campaign's mark on every one
    three = await written(rt, "b3")
    opening = three["bodies"][-len(many[2].outbox_ids) :]  # type: ignore[union-attr]
    notice = rt.engine.catalog.text("en", "campaign.stop_notice")
    assert opening[-1]["text"].endswith(notice)
    assert notice not in " ".join(b["text"] for b in opening[:-1])
    assert {b.get("campaign") for b in opening} == {"m"}
    assert three["flow_state"]["campaign"] == ["m", "campaign.stop_notice"]


async def test_busy_conversations_get_nothing_and_the_rest_go_ahead(rt: Runtime) -> None:
    for user in ("f", "q", "ok"):
        await known(rt, user)
    await rt.engine.start_flow("test", "f", "winback")  # a flow runs there already
    async with rt.sessions() as s, s.begin():
        conv = await queries.open_conversation_locked(s, "test", "q")
        assert conv is not None
        conv.status = ConversationStatus.QUEUED  # waits for an agent
    async with rt.sessions() as s:
        before = (await s.execute(select(func.count()).select_from(OutboxMessage))).scalar()
    async with rt.sessions() as s, s.begin():
        results = await rt.engine.start_flows_in(
            s,
            [
                FlowStart("test", "f", "csat"),
                FlowStart("test", "q", "csat"),
                FlowStart("test", "ok", "csat"),
                FlowStart("test", "ok", "winback"),  # the same thread twice: busy now
            ],
        )
    assert [r is not None for r in results] == [False, False, True, False]
    async with rt.sessions() as s:
        after = (await s.execute(select(func.count()).select_from(OutboxMessage))).scalar()
    ok = results[2]
    assert ok is not None
    assert after == before + len(ok.outbox_ids)
    assert (await written(rt, "f"))["flow_state"]["flow"] == "winback"


async def test_an_unknown_customer_raises_before_anything_is_written(rt: Runtime) -> None:
    await known(rt, "k")
    async with rt.sessions() as s:
        before = (await s.execute(select(func.count()).select_from(Touchpoint))).scalar()
    with pytest.raises(LookupError):
        async with rt.sessions() as s, s.begin():
            await rt.engine.start_flows_in(
                s, [FlowStart("test", "k", "winback"), FlowStart("test", "nobody", "winback")]
            )
    async with rt.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(Touchpoint))).scalar() == before


async def test_a_failure_after_the_starts_undoes_all_of_them(rt: Runtime) -> None:
    """Atomic with the caller's transaction: what the caller writes after (a delivery row
    meeting a unique constraint) rolls every start of the call back."""
    for user in ("x1", "x2"):
        await known(rt, user)
    async with rt.sessions() as s:
        before = (await s.execute(select(func.count()).select_from(OutboxMessage))).scalar()
    with pytest.raises(IntegrityError):
        async with rt.sessions() as s, s.begin():
            done = await rt.engine.start_flows_in(
                s, [FlowStart("test", "x1", "winback"), FlowStart("test", "x2", "winback")]
            )
            assert all(isinstance(r, HandleResult) for r in done)
            await queries.create_contact_with_identity(s, "test", "x1", name=None, locale="en")
    async with rt.sessions() as s:
        assert (await s.execute(select(func.count()).select_from(OutboxMessage))).scalar() == before
        flows = (await s.execute(select(Conversation.flow_state))).scalars().all()
    assert not any(f.get("flow") for f in flows)


async def test_the_statements_do_not_grow_with_the_starts(rt: Runtime) -> None:
    users = [f"n{i}" for i in range(30)]
    for user in users[:15]:
        await known(rt, user)
    for user in users[15:]:
        await stranger(rt, user)
    count = [0]

    def counted(*_: object) -> None:
        count[0] += 1

    event.listen(rt.db.sync_engine, "before_cursor_execute", counted)
    try:
        async with rt.sessions() as s, s.begin():
            results = await rt.engine.start_flows_in(
                s, [FlowStart("test", u, "winback") for u in users]
            )
    finally:
        event.remove(rt.db.sync_engine, "before_cursor_execute", counted)
    assert all(r is not None for r in results)
    # two reads, the new conversations, the flow states, the outbox, the touchpoints; the
    # transaction's own begin/commit on top (SQLite: BEGIN is a statement too)
    assert count[0] <= 8
