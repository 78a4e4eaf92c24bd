"""The core's side of `bot.channel.desk.AgentDesk`: an agent-facing channel's cards.

`watch` adds an engine observer that writes the desk rows to the outbox inside the very
transaction that escalates a conversation, takes in a customer's message or changes its
owner (so a card is never lost nor doubled); `card` reads what a card shows; the card and
thread message ids are kept in agent_cards / agent_card_messages; agents act through the
desk service (bot/desk/service.py) and its refusals come back with the conversation's state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.channel.desk import (
    MIRROR,
    ROW_KINDS,
    AgentRef,
    CardCase,
    CardData,
    CardLine,
    CardRef,
    DeskRefused,
    MirrorText,
)
from bot.channel.messages import desk_key
from bot.desk.auth import create_agent
from bot.desk.service import Conflict, Desk, DeskError, Forbidden
from storage import queries
from storage.models import (
    Agent,
    AgentCard,
    AgentCardMessage,
    AgentRole,
    Case,
    Contact,
    Conversation,
    ConversationStatus,
    Identity,
    Touchpoint,
)

log = logging.getLogger(__name__)
STATE_KINDS = ("claimed", "resolved", "handed_back", "transferred", "left_queue")
MAX_MIRROR = 12_000
# the platform user id column of an agent, per agent-facing channel
USER_COLUMNS = {"slack": Agent.slack_user_id}


class DeskCards:
    def __init__(self, desk: Desk) -> None:
        self.desk = desk
        self.sessions = desk.sessions

    # ---- inside the engine's / desk's transaction --------------------------------------

    def watch(self, channel: str, container: str, mirror: MirrorText) -> None:
        async def observe(
            s: AsyncSession, conv: Conversation, kind: str, detail: Mapping[str, Any]
        ) -> None:
            row = ROW_KINDS.get(kind)
            if row is None:
                return
            text = ""
            if row == MIRROR:
                said = str(detail.get("text") or "")
                if len(said) > MAX_MIRROR:
                    said = said[:MAX_MIRROR] + " … (cut; the whole text is in the history)"
                files = int(detail.get("attachments") or 0)
                text = mirror(await customer_name(s, conv), conv.channel, said, files)
            await queries.enqueue(
                s,
                channel=channel,
                recipient_id=container,
                thread_key=desk_key(conv.id, row),
                body={"text": text, "choices": [], "locale": "en", "reply_to": None},
                conversation_id=conv.id,
                identity_id=None,  # a failure here never marks the customer unreachable
            )

        self.desk.engine.observers.append(observe)

    # ---- what a card shows -------------------------------------------------------------

    async def card(self, conversation_id: int, n_messages: int) -> CardData | None:
        async with self.sessions() as s:
            conv = await s.get(Conversation, conversation_id)
            if conv is None:
                return None
            contact = await s.get(Contact, conv.contact_id)
            assert contact is not None
            name = await customer_name(s, conv)
            q = select(Case).where(Case.conversation_id == conv.id).order_by(Case.id)
            cases = (await s.execute(q)).scalars().all()
            recent = await _touchpoints(s, conv.id, ("message", "button"), n_messages)
            escalation = await _touchpoints(s, conv.id, ("escalated",), 1)
            state = await _touchpoints(s, conv.id, STATE_KINDS, 1)
            last = state[0] if state else None
            owner = await _agent_name(s, conv.assignee) if conv.assignee else None
            last_by = await _agent_name(s, last.actor) if last else None
        reason = str(escalation[0].payload.get("reason", "")) if escalation else ""
        catalog = self.desk.engine.catalog
        return CardData(
            conversation_id=conv.id,
            customer=name,
            email=contact.email,
            channel=conv.channel,
            value_segment=contact.value_segment,
            priority=conv.priority,
            cases=tuple(CardCase(c.reference, c.category, c.severity, c.status) for c in cases),
            reason=reason,
            reason_label=catalog.label(catalog.default_locale, "reasons", reason) if reason else "",
            recent=tuple(CardLine(_actor(t), t.text or "") for t in reversed(recent)),
            status=conv.status,
            queued_at=conv.queued_at,
            owner=owner,
            last_change=last.kind if last else None,
            last_by=last_by,
        )

    # ---- the platform's message ids of the cards ---------------------------------------

    async def save_card(
        self, channel: str, container: str, conversation_id: int, message_ref: str
    ) -> CardRef:
        card = AgentCard(
            conversation_id=conversation_id,
            channel=channel,
            container=container,
            message_ref=message_ref,
        )
        async with self.sessions() as s, s.begin():
            s.add(card)
        return CardRef(card.id, card.message_ref)

    async def cards(
        self, channel: str, container: str, conversation_id: int, card_id: int | None = None
    ) -> list[CardRef]:
        q = select(AgentCard).where(
            AgentCard.conversation_id == conversation_id,
            AgentCard.channel == channel,
            AgentCard.container == container,
        )
        if card_id is not None:
            q = q.where(AgentCard.id == card_id)
        async with self.sessions() as s:
            rows = (await s.execute(q.order_by(AgentCard.id))).scalars()
            return [CardRef(c.id, c.message_ref) for c in rows]

    async def newest_card(
        self, channel: str, container: str, conversation_id: int
    ) -> CardRef | None:
        found = await self.cards(channel, container, conversation_id)
        return found[-1] if found else None

    async def card_conversation(self, channel: str, container: str, ref: str) -> int | None:
        async with self.sessions() as s:
            q = select(AgentCard.conversation_id).where(
                AgentCard.channel == channel,
                AgentCard.container == container,
                AgentCard.message_ref == ref,
            )
            return (await s.execute(q)).scalar_one_or_none()

    async def add_card_message(self, card_id: int, message_ref: str) -> bool:
        try:
            async with self.sessions() as s, s.begin():
                s.add(AgentCardMessage(card_id=card_id, message_ref=message_ref))
        except IntegrityError:  # the card was erased while this was being posted
            return False
        return True

    async def card_messages(self, card_id: int) -> list[CardRef]:
        async with self.sessions() as s:
            q = select(AgentCardMessage).where(AgentCardMessage.card_id == card_id)
            rows = (await s.execute(q.order_by(AgentCardMessage.id))).scalars()
            return [CardRef(m.id, m.message_ref) for m in rows]

    async def forget_card_message(self, message_id: int) -> None:
        async with self.sessions() as s, s.begin():
            await s.execute(delete(AgentCardMessage).where(AgentCardMessage.id == message_id))

    async def forget_card(self, card_id: int) -> None:
        async with self.sessions() as s, s.begin():
            await s.execute(delete(AgentCard).where(AgentCard.id == card_id))

    async def erased(self, conversation_id: int) -> bool:
        async with self.sessions() as s:
            q = (
                select(Contact.attributes)
                .join(Conversation, Conversation.contact_id == Contact.id)
                .where(Conversation.id == conversation_id)
            )
            attributes = await s.scalar(q)
        return bool(attributes and attributes.get("erased"))

    # ---- agents ------------------------------------------------------------------------

    async def agent(self, channel: str, user: str) -> AgentRef | None:
        column = USER_COLUMNS.get(channel)
        if column is None:
            return None
        async with self.sessions() as s:
            found = (await s.execute(select(Agent).where(column == user))).scalar_one_or_none()
        return None if found is None else AgentRef(found.id, found.name, found.active)

    async def add_agent(self, channel: str, user: str, name: str, email: str | None) -> AgentRef:
        found = await self.agent(channel, user)
        if found is not None:
            return found
        if channel not in USER_COLUMNS:
            raise ValueError(f"no agent user ids for channel {channel!r}")
        try:
            async with self.sessions() as s, s.begin():
                agent, _ = await create_agent(
                    s, name, AgentRole.AGENT, email=email, slack_user_id=user
                )
            log.info("%s user %s is now agent %s", channel, user, agent.id)  # no name: personal
            return AgentRef(agent.id, agent.name, agent.active)
        except IntegrityError:  # created at the same moment by another press
            again = await self.agent(channel, user)
            assert again is not None
            return again

    async def act(self, agent_id: int, conversation_id: int, action: str, text: str = "") -> None:
        async with self.sessions() as s:
            agent = await s.get(Agent, agent_id)
        if agent is None:
            raise DeskRefused("no such agent", conflict=False, status=None, owner=None)
        try:
            if action == "claim":
                await self.desk.claim(agent, conversation_id)
            elif action == "resolve":
                await self.desk.resolve(agent, conversation_id)
            elif action == "hand_back":
                await self.desk.hand_back(agent, conversation_id)
            elif action == "reply":
                await self.desk.reply(agent, conversation_id, text)
            elif action == "note":
                await self.desk.note(agent, conversation_id, text)
            else:
                raise ValueError(f"unknown desk action {action!r}")
        except DeskError as exc:
            status, owner = await self._state(conversation_id)
            raise DeskRefused(
                str(exc),
                conflict=isinstance(exc, Conflict | Forbidden),
                status=status,
                owner=owner,
            ) from None

    async def assigned_to(self, conversation_id: int, agent_id: int) -> bool:
        async with self.sessions() as s:
            conv = await s.get(Conversation, conversation_id)
        return (  # a closed conversation keeps its resolver as assignee
            conv is not None
            and conv.status == ConversationStatus.AGENT
            and conv.assignee == str(agent_id)
        )

    async def _state(self, conversation_id: int) -> tuple[str | None, str | None]:
        async with self.sessions() as s:
            conv = await s.get(Conversation, conversation_id)
            if conv is None:
                return None, None
            owner = None
            if conv.assignee and conv.assignee.isdigit():
                agent = await s.get(Agent, int(conv.assignee))
                owner = agent.name if agent is not None else None
        return conv.status, owner


async def customer_name(s: AsyncSession, conv: Conversation) -> str:
    contact = await s.get(Contact, conv.contact_id)
    if contact is not None and contact.name:
        return contact.name
    identity = await s.get(Identity, conv.identity_id)
    if identity is None:
        return "Customer"
    return identity.display_name or identity.external_id


async def _touchpoints(
    s: AsyncSession, conv_id: int, kinds: tuple[str, ...], limit: int
) -> list[Touchpoint]:
    if limit <= 0:
        return []
    q = (
        select(Touchpoint)
        .where(Touchpoint.conversation_id == conv_id, Touchpoint.kind.in_(kinds))
        .order_by(Touchpoint.id.desc())
        .limit(limit)
    )
    return list((await s.execute(q)).scalars())


def _actor(t: Touchpoint) -> str:
    if t.direction == "in":
        return "customer"
    return "agent" if t.actor.startswith("agent:") else "bot"


async def _agent_name(s: AsyncSession, ref: str | None) -> str:
    if not ref:
        return "?"
    agent_id = ref.removeprefix("agent:")
    agent = await s.get(Agent, int(agent_id)) if agent_id.isdigit() else None
    return agent.name if agent is not None else ref
