"""The agent desk's core: the queue and what agents do with a conversation.

Every operation is one transaction with the conversation row locked (PostgreSQL), is
recorded as a touchpoint with the agent as actor, and sends anything meant for the
customer through the outbox on the customer's own channel, in the customer's language.
Claiming is a conditional UPDATE, so of two agents (or two workers) exactly one wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.conversation.engine import Engine
from bot.desk.events import EventBus
from flows.model import Reply
from storage import queries
from storage.models import (
    Agent,
    AgentRole,
    Case,
    CaseStatus,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Identity,
    utcnow,
)

OPEN = (ConversationStatus.BOT, ConversationStatus.QUEUED, ConversationStatus.AGENT)


class DeskError(Exception):
    status = 400
    code = "bad_request"


class NotFound(DeskError):
    status, code = 404, "not_found"


class Conflict(DeskError):
    status, code = 409, "conflict"


class Forbidden(DeskError):
    status, code = 403, "forbidden"


@dataclass(frozen=True)
class Page:
    items: Sequence[Any]
    total: int


def actor(agent: Agent) -> str:
    return f"agent:{agent.id}"


def is_supervisor(agent: Agent) -> bool:
    return agent.role in (AgentRole.SUPERVISOR, AgentRole.ADMIN)


class Desk:
    def __init__(self, engine: Engine, events: EventBus) -> None:
        self.engine = engine
        self.sessions = engine.sessions
        self.events = events

    # --- reading -------------------------------------------------------------

    async def queue(self, limit: int = 50, offset: int = 0) -> Page:
        """Waiting conversations, most urgent first: priority (severity and customer value),
        then the longest wait."""
        where = Conversation.status == ConversationStatus.QUEUED
        async with self.sessions() as s:
            total = await s.scalar(select(func.count()).select_from(Conversation).where(where))
            q = (
                select(Conversation, Contact)
                .join(Contact, Contact.id == Conversation.contact_id)
                .where(where)
                .order_by(Conversation.priority.desc(), Conversation.queued_at, Conversation.id)
                .limit(limit)
                .offset(offset)
            )
            rows = (await s.execute(q)).all()
        return Page([(c, k) for c, k in rows], int(total or 0))

    async def mine(self, agent: Agent) -> Sequence[tuple[Conversation, Contact]]:
        async with self.sessions() as s:
            q = (
                select(Conversation, Contact)
                .join(Contact, Contact.id == Conversation.contact_id)
                .where(
                    Conversation.status == ConversationStatus.AGENT,
                    Conversation.assignee == str(agent.id),
                )
                .order_by(Conversation.updated_at.desc())
            )
            return [(c, k) for c, k in (await s.execute(q)).all()]

    async def conversation(self, conv_id: int) -> tuple[Conversation, Contact, Sequence[Case]]:
        async with self.sessions() as s:
            conv = await s.get(Conversation, conv_id)
            if conv is None:
                raise NotFound(f"conversation {conv_id} not found")
            contact = await s.get(Contact, conv.contact_id)
            assert contact is not None
            cases = await queries.cases_of_contact(s, contact.id)
        return conv, contact, cases

    # --- acting --------------------------------------------------------------

    async def _locked(self, s: AsyncSession, conv_id: int) -> Conversation:
        q = (
            select(Conversation)
            .where(Conversation.id == conv_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        conv = (await s.execute(q)).scalar_one_or_none()
        if conv is None:
            raise NotFound(f"conversation {conv_id} not found")
        return conv

    def _owns(self, agent: Agent, conv: Conversation) -> None:
        if conv.status != ConversationStatus.AGENT:
            raise Conflict(
                f"conversation {conv.id} is not assigned (status {conv.status}); claim it first"
            )
        if conv.assignee != str(agent.id) and not is_supervisor(agent):
            raise Forbidden(f"conversation {conv.id} belongs to another agent")

    def _note(
        self,
        s: AsyncSession,
        agent: Agent,
        conv: Conversation,
        kind: str,
        text: str | None = None,
        **payload: Any,
    ) -> None:
        queries.add_touchpoint(
            s,
            contact_id=conv.contact_id,
            conversation_id=conv.id,
            channel=conv.channel,
            direction=Direction.INTERNAL,
            kind=kind,
            actor=actor(agent),
            text=text,
            payload=payload,
        )

    async def _tell(
        self, s: AsyncSession, conv: Conversation, key: str, by: Agent, **params: Any
    ) -> None:
        """A system message to the customer in their language, via the outbox."""
        identity = await s.get(Identity, conv.identity_id)
        contact = await s.get(Contact, conv.contact_id)
        assert identity is not None and contact is not None
        locale = contact.locale or self.engine.default_locale
        text = self.engine.catalog.text(locale, key, **params)
        await self.engine.say(
            s, identity, conv, Reply(key, text), locale, actor=actor(by), sender_name=by.name
        )

    async def _observe(self, s: AsyncSession, conv: Conversation, kind: str, by: Agent) -> None:
        """Tell the engine's observers (an agent channel's card) inside the transaction."""
        await self.engine.notify_observers(s, conv, kind, agent_id=by.id, agent_name=by.name)

    def _changed(self, conv_id: int) -> None:
        self.events.publish({"type": "queue"})
        self.events.publish({"type": "conversation", "id": conv_id})
        if self.engine.on_commit:
            self.engine.on_commit()

    async def claim(self, agent: Agent, conv_id: int) -> None:
        """Take a waiting (or bot-handled) conversation; exactly one agent wins."""
        async with self.sessions() as s, s.begin():
            won = await s.execute(
                update(Conversation)
                .where(
                    Conversation.id == conv_id,
                    Conversation.status.in_([ConversationStatus.QUEUED, ConversationStatus.BOT]),
                )
                .values(
                    status=ConversationStatus.AGENT,
                    assignee=str(agent.id),
                    flow_state={},
                    updated_at=utcnow(),
                )
            )
            if won.rowcount != 1:  # type: ignore[attr-defined]
                conv = await s.get(Conversation, conv_id)
                if conv is None:
                    raise NotFound(f"conversation {conv_id} not found")
                raise Conflict(
                    f"conversation {conv_id} is {conv.status}"
                    + (f" (agent {conv.assignee})" if conv.assignee else "")
                )
            conv = await self._locked(s, conv_id)
            self._note(s, agent, conv, "claimed")
            await self._tell(s, conv, "agent.joined", agent, agent=agent.name)
            await self._observe(s, conv, "claimed", agent)
        self._changed(conv_id)

    async def reply(self, agent: Agent, conv_id: int, text: str) -> int:
        text = text.strip()
        if not text:
            raise DeskError("the reply is empty")
        async with self.sessions() as s, s.begin():
            conv = await self._locked(s, conv_id)
            self._owns(agent, conv)
            identity = await s.get(Identity, conv.identity_id)
            contact = await s.get(Contact, conv.contact_id)
            assert identity is not None and contact is not None
            outbox_id = await self.engine.say(
                s,
                identity,
                conv,
                Reply("agent.reply", text),
                contact.locale,
                actor=actor(agent),
                sender_name=agent.name,
            )
        self._changed(conv_id)
        return outbox_id

    async def note(self, agent: Agent, conv_id: int, text: str) -> None:
        """An internal note: in the history for colleagues, never sent to the customer."""
        if not text.strip():
            raise DeskError("the note is empty")
        async with self.sessions() as s, s.begin():
            conv = await self._locked(s, conv_id)
            if conv.status == ConversationStatus.CLOSED and not is_supervisor(agent):
                raise Forbidden(f"conversation {conv.id} is closed")
            self._owns(agent, conv)  # the rule of replies: your own, or a supervisor
            self._note(s, agent, conv, "note", text.strip())
        self._changed(conv_id)

    async def resolve(self, agent: Agent, conv_id: int) -> list[str]:
        """Close the conversation, resolve its open cases and tell the customer."""
        async with self.sessions() as s, s.begin():
            conv = await self._locked(s, conv_id)
            self._owns(agent, conv)
            now = utcnow()
            cases = (
                (
                    await s.execute(
                        select(Case).where(
                            Case.conversation_id == conv.id,
                            Case.status.not_in([CaseStatus.RESOLVED, CaseStatus.CLOSED]),
                        )
                    )
                )
                .scalars()
                .all()
            )
            for case in cases:
                case.status, case.resolved_at, case.updated_at = CaseStatus.RESOLVED, now, now
                self._note(
                    s,
                    agent,
                    conv,
                    "case_status",
                    reference=case.reference,
                    status=CaseStatus.RESOLVED,
                )
            await self._tell(s, conv, "agent.resolved", agent)
            # the assignee stays: who resolved it (analytics, and a follow-up reopens for
            # them, bot.conversation.reopen)
            conv.status, conv.closed_at = ConversationStatus.CLOSED, now
            self._note(s, agent, conv, "resolved")
            await self._observe(s, conv, "resolved", agent)
            refs = [c.reference or "" for c in cases]
        self._changed(conv_id)
        return refs

    async def hand_back(self, agent: Agent, conv_id: int) -> None:
        async with self.sessions() as s, s.begin():
            conv = await self._locked(s, conv_id)
            self._owns(agent, conv)
            conv.status, conv.assignee, conv.priority = ConversationStatus.BOT, None, 0
            conv.queued_at, conv.flow_state = None, {}
            self._note(s, agent, conv, "handed_back")
            await self._tell(s, conv, "agent.handed_back", agent)
            await self._observe(s, conv, "handed_back", agent)
        self._changed(conv_id)

    async def transfer(self, agent: Agent, conv_id: int, to: Agent) -> None:
        if not to.active:
            raise DeskError(f"agent {to.id} is not active")
        async with self.sessions() as s, s.begin():
            conv = await self._locked(s, conv_id)
            self._owns(agent, conv)
            conv.assignee = str(to.id)
            self._note(s, agent, conv, "transferred", to=to.id, to_name=to.name)
            await self._observe(s, conv, "transferred", to)
        self._changed(conv_id)

    async def set_case_status(self, agent: Agent, reference: str, status: CaseStatus) -> Case:
        """Change a case's status; the customer hears of it on their channel."""
        async with self.sessions() as s, s.begin():
            case = (
                await s.execute(select(Case).where(Case.reference == reference).with_for_update())
            ).scalar_one_or_none()
            if case is None:
                raise NotFound(f"case {reference} not found")
            if case.status == status:
                return case
            now = utcnow()
            case.status, case.updated_at = status, now
            if status == CaseStatus.RESOLVED:
                case.resolved_at = now
            if status == CaseStatus.CLOSED:
                case.closed_at = now
            conv = await self._case_conversation(s, case)
            self._note(s, agent, conv, "case_status", reference=reference, status=status)
            contact = await s.get(Contact, case.contact_id)
            assert contact is not None
            label = self.engine.catalog.text(contact.locale, f"status.{status}")
            await self._tell(
                s, conv, "case.status_changed", agent, reference=reference, status=label
            )
        self._changed(conv.id)
        return case

    async def _case_conversation(self, s: AsyncSession, case: Case) -> Conversation:
        """Where to tell the customer: the case's conversation if still open, else the
        customer's newest conversation on the same channel, reopened as a new one."""
        conv = await s.get(Conversation, case.conversation_id) if case.conversation_id else None
        if conv is not None and conv.status in OPEN:
            return conv
        if conv is None:
            conv = (
                await s.execute(
                    select(Conversation)
                    .where(Conversation.contact_id == case.contact_id)
                    .order_by(Conversation.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if conv is None:
                raise Conflict(f"case {case.reference} has no conversation to notify")
        reopened = await queries.open_conversation_locked(s, conv.channel, conv.thread_key)
        if reopened is not None:
            return reopened
        return await queries.create_conversation(
            s, conv.contact_id, conv.identity_id, conv.channel, conv.thread_key
        )
