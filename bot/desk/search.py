"""What the console's lists and search read (issue 20, finding 6): every open conversation
(the All tab, for colleagues' work too), and a search across contacts and messages."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Identity,
    Touchpoint,
)

MAX_QUERY = 200


@dataclass(frozen=True)
class MessageHit:
    touchpoint: Touchpoint
    contact: Contact


@dataclass(frozen=True)
class ContactHit:
    contact: Contact
    conversation_id: int | None  # the contact's newest conversation, to open


async def open_conversations(
    s: AsyncSession, limit: int, offset: int
) -> tuple[Sequence[tuple[Conversation, Contact]], int]:
    """Waiting and assigned conversations, whoever has them, the latest activity first."""
    where = Conversation.status.in_([ConversationStatus.QUEUED, ConversationStatus.AGENT])
    total = await s.scalar(select(func.count()).select_from(Conversation).where(where))
    q = (
        select(Conversation, Contact)
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(where)
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [(c, k) for c, k in (await s.execute(q)).all()], int(total or 0)


def _like(text: str) -> str:
    """A LIKE pattern matching `text` literally (its % and _ escaped)."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search(
    s: AsyncSession, query: str, limit: int = 20
) -> tuple[list[ContactHit], list[MessageHit]]:
    """Contacts by name, email, phone, channel id or number; messages (in and out, not
    internal notes) by their text; the newest first."""
    text = query.strip()[:MAX_QUERY]
    if not text:
        return [], []
    like = _like(text)
    by_identity = select(Identity.contact_id).where(
        func.lower(Identity.external_id).like(like, escape="\\")
    )
    newest = (
        select(func.max(Conversation.id))
        .where(Conversation.contact_id == Contact.id)
        .scalar_subquery()
    )
    q_contacts = (
        select(Contact, newest)
        .where(
            or_(
                func.lower(Contact.name).like(like, escape="\\"),
                func.lower(Contact.email).like(like, escape="\\"),
                Contact.phone.like(like, escape="\\"),
                cast(Contact.id, String) == text,
                Contact.id.in_(by_identity),
            )
        )
        .order_by(Contact.last_contact_at.desc().nulls_last(), Contact.id.desc())
        .limit(limit)
    )
    contacts = [ContactHit(c, conv) for c, conv in (await s.execute(q_contacts)).all()]
    q_messages = (
        select(Touchpoint, Contact)
        .join(Contact, Contact.id == Touchpoint.contact_id)
        .where(
            Touchpoint.direction.in_([Direction.IN, Direction.OUT]),
            Touchpoint.conversation_id.is_not(None),
            func.lower(Touchpoint.text).like(like, escape="\\"),
        )
        .order_by(Touchpoint.id.desc())
        .limit(limit)
    )
    messages = [MessageHit(t, c) for t, c in (await s.execute(q_messages)).all()]
    return contacts, messages
