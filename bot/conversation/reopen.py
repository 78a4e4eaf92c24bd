"""Reopen after resolve: a customer who writes again soon after an agent resolved their
conversation reaches that agent again, as in Chatwoot, instead of starting over with the
bot ("Der Ersatz ist noch nicht da." is a follow-up, not a new question).

The desk keeps the assignee on a resolved conversation, so the resolver is known. If that
agent is no longer active, the conversation goes back to the queue for a colleague.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import queries
from storage.models import Agent, Conversation, ConversationStatus, Direction


def may_reopen(conv: Conversation, now: datetime, window: timedelta | None) -> bool:
    """The rule: closed by an agent (it has an assignee), within the window."""
    return (
        window is not None
        and window > timedelta(0)
        and conv.status == ConversationStatus.CLOSED
        and conv.assignee is not None
        and conv.closed_at is not None
        and now - conv.closed_at <= window
    )


def last_of_thread(channel: str, thread_key: str) -> Select[Conversation]:
    """A thread's newest conversation, row-locked (ix_conversations_thread)."""
    return (
        select(Conversation)
        .where(Conversation.channel == channel, Conversation.thread_key == thread_key)
        .order_by(Conversation.id.desc())
        .limit(1)
        .with_for_update()
    )


async def reopen_resolved(
    s: AsyncSession, channel: str, thread_key: str, now: datetime, window: timedelta | None
) -> Conversation | None:
    """The thread's newest conversation reopened for its resolver (or the queue), or None
    when there is none to reopen. The caller holds the thread's lock and found no open one."""
    if window is None or window <= timedelta(0):
        return None
    last = (await s.execute(last_of_thread(channel, thread_key))).scalar_one_or_none()
    if last is None or not may_reopen(last, now, window):
        return None
    assert last.assignee is not None
    agent = await s.get(Agent, int(last.assignee)) if last.assignee.isdigit() else None
    last.closed_at, last.flow_state, last.updated_at = None, {}, now
    if agent is not None and agent.active:
        last.status = ConversationStatus.AGENT
    else:  # the resolver left: a colleague takes it from the queue
        last.status, last.assignee, last.queued_at = ConversationStatus.QUEUED, None, now
    queries.add_touchpoint(
        s,
        contact_id=last.contact_id,
        conversation_id=last.id,
        channel=channel,
        direction=Direction.INTERNAL,
        kind="reopened",
        actor="customer",
        payload={"assignee": last.assignee},
    )
    await s.flush()
    return last


async def assignee_name(s: AsyncSession, conv: Conversation) -> str:
    ref = conv.assignee or ""
    agent = await s.get(Agent, int(ref)) if ref.isdigit() else None
    return agent.name if agent is not None else ""
