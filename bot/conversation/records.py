"""The core's side of `bot.channel.records.Records`: platform message ids of threads
(table email_messages) and how far a mailbox was read (email_mailboxes), kept for a
channel that threads by message ids (channels/email/). The channel decides the threading;
these are the rows, each write its own short transaction (a record precedes the send or
the engine's handling, so a retry finds it)."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel.records import MessageRef
from storage import queries
from storage.models import Case, Conversation, Direction, EmailMailbox, EmailMessageRef, utcnow

log = logging.getLogger(__name__)


def _ref(row: EmailMessageRef) -> MessageRef:
    return MessageRef(row.message_id, row.thread_key, row.address, row.direction, row.subject)


class MessageRecords:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], dialect: str) -> None:
        self.sessions = sessions
        self.dialect = dialect

    async def record(
        self, message_id: str, thread_key: str, address: str, direction: str, subject: str | None
    ) -> None:
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(EmailMessageRef)
            .values(
                message_id=message_id[:500],
                thread_key=thread_key,
                address=address[:320],
                direction=direction,
                subject=(subject or "")[:500] or None,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["message_id"])
        )
        async with self.sessions() as s, s.begin():
            await s.execute(stmt)

    async def find(self, ids: list[str], address: str | None = None) -> MessageRef | None:
        q = select(EmailMessageRef).where(EmailMessageRef.message_id.in_([i[:500] for i in ids]))
        if address is not None:
            q = q.where(EmailMessageRef.address == address)
        async with self.sessions() as s:
            rows = list((await s.execute(q.order_by(EmailMessageRef.id.desc()))).scalars())
        if not rows:
            return None
        order = {mid: n for n, mid in enumerate(ids)}  # the first id given wins, then the newest
        return _ref(min(rows, key=lambda r: order.get(r.message_id, len(ids))))

    async def sent(self, message_id: str) -> MessageRef | None:
        async with self.sessions() as s:
            q = select(EmailMessageRef).where(
                EmailMessageRef.message_id == message_id[:500],
                EmailMessageRef.direction == Direction.OUT,
            )
            row = (await s.execute(q)).scalar_one_or_none()
        return None if row is None else _ref(row)

    async def of_thread(self, thread_key: str) -> list[MessageRef]:
        async with self.sessions() as s:
            q = (
                select(EmailMessageRef)
                .where(EmailMessageRef.thread_key == thread_key)
                .order_by(EmailMessageRef.id)
            )
            return [_ref(r) for r in (await s.execute(q)).scalars()]

    async def case_thread(self, channel: str, reference: str, sender: str) -> str | None:
        async with self.sessions() as s:
            q = select(Case).where(Case.reference == reference)
            case = (await s.execute(q)).scalar_one_or_none()
            identity = await queries.get_identity(s, channel, sender)
            if case is None or identity is None or case.contact_id != identity.contact_id:
                return None  # a stranger quoting a reference gets a conversation of their own
            if case.conversation_id is None:
                return None
            conv = await s.get(Conversation, case.conversation_id)
        if conv is None or conv.channel != channel:
            return None
        return conv.thread_key

    async def case_reference(self, conversation_id: int) -> str | None:
        async with self.sessions() as s:
            return (
                await s.execute(
                    select(Case.reference)
                    .where(Case.conversation_id == conversation_id, Case.reference.is_not(None))
                    .order_by(Case.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()

    async def position(self, source: str) -> tuple[int, int] | None:
        async with self.sessions() as s:
            row = await s.get(EmailMailbox, source)
        return None if row is None else (row.uidvalidity, row.last_uid)

    async def save_position(self, source: str, epoch: int, position: int) -> None:
        async with self.sessions() as s, s.begin():
            row = (
                await s.execute(select(EmailMailbox).where(EmailMailbox.mailbox == source))
            ).scalar_one_or_none()
            if row is None:
                s.add(
                    EmailMailbox(
                        mailbox=source, uidvalidity=epoch, last_uid=position, updated_at=utcnow()
                    )
                )
            else:
                row.uidvalidity, row.last_uid = epoch, position
