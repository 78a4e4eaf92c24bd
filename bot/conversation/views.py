"""What a channel asks the core to show (bot.channel.host.ChannelHost): is a thread's
conversation open, and what was said on it."""

from __future__ import annotations

from sqlalchemy import ColumnElement, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel.host import Said
from bot.channel.messages import Choice
from storage import queries
from storage.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    InboxStatus,
    InboxUpdate,
    Touchpoint,
)


async def conversation_open(
    sessions: async_sessionmaker[AsyncSession],
    channel: str,
    thread_key: str,
    *,
    pending: bool = False,
) -> bool:
    """The thread has a conversation that is not closed; with `pending`, a message of it
    waiting in the inbox (partitioned by the thread) counts too: it is about to have one.

    One statement, so one snapshot: the inbox marks a row done in the transaction that
    opens its conversation, and two statements could fall on either side of that commit
    (no conversation yet, then no waiting row), counting a visitor's second message as a
    new conversation."""
    found: ColumnElement[bool] = exists().where(
        Conversation.channel == channel,
        Conversation.thread_key == thread_key,
        Conversation.status != ConversationStatus.CLOSED,
    )
    if pending:
        found = or_(
            found,
            exists().where(
                InboxUpdate.channel == channel,
                InboxUpdate.partition_key == thread_key,
                InboxUpdate.status.in_((InboxStatus.PENDING, InboxStatus.PROCESSING)),
            ),
        )
    async with sessions() as s:
        return bool(await s.scalar(select(found)))


async def history(
    sessions: async_sessionmaker[AsyncSession], channel: str, sender_id: str, limit: int
) -> list[Said]:
    """What was said in this sender's own conversations on the channel: after a merge the
    contact holds other people's conversations too (another device, another web-chat
    visitor), and a sender proves only who they are on this one."""
    async with sessions() as s, s.begin():
        identity = await queries.get_identity(s, channel, sender_id)
        if identity is None:
            return []
        own = select(Conversation.id).where(Conversation.identity_id == identity.id)
        q = (
            select(Touchpoint)
            .where(
                Touchpoint.conversation_id.in_(own),
                Touchpoint.channel == channel,
                Touchpoint.direction.in_([Direction.IN, Direction.OUT]),
                Touchpoint.kind.in_(["message", "button"]),
            )
            .order_by(Touchpoint.id.desc())
            .limit(limit)
        )
        rows = list((await s.execute(q)).scalars())[::-1]
    return [
        Said(
            direction=t.direction,
            outbox_id=t.outbox_id,
            text=t.text or "",
            choices=tuple(
                Choice(str(c.get("payload", "")), str(c.get("label", "")))
                for c in (t.payload or {}).get("buttons", [])
                if isinstance(c, dict)
            ),
            at=t.created_at,
            sender=(t.payload or {}).get("sender_name"),
        )
        for t in rows
    ]


async def contact_locale(
    sessions: async_sessionmaker[AsyncSession], channel: str, sender_id: str
) -> str | None:
    """The language the sender's contact chose, if any."""
    async with sessions() as s:
        identity = await queries.get_identity(s, channel, sender_id)
        if identity is None:
            return None
        contact = await s.get(Contact, identity.contact_id)
        return contact.locale if contact is not None else None
