"""Privacy rights (GDPR art. 15, 17): export everything about a contact, erase a
contact's personal data while keeping the aggregates (also used by the retention period,
bot/retention.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, Text, cast, delete, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from bot.history import CRM_CHANNEL
from bot.messages import desk_key, erase_kind
from storage import queries
from storage.models import (
    AgentCard,
    AgentCardMessage,
    Base,
    Case,
    Consent,
    Contact,
    Conversation,
    ConversationStatus,
    DeadLetter,
    Direction,
    EmailMessageRef,
    Identity,
    IdentityLinkAddress,
    IdentityLinkCode,
    InboxStatus,
    InboxUpdate,
    Order,
    OutboxMessage,
    OutboxStatus,
    SurveyAnswer,
    Touchpoint,
    utcnow,
)

ERASED = "[erased]"


class GdprError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _row(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for col in obj.__table__.columns:
        value = getattr(obj, col.key)
        data[col.key] = value.isoformat() if isinstance(value, datetime) else value
    return data


async def _all(s: AsyncSession, model: Any, contact_id: int) -> list[dict[str, Any]]:
    q = select(model).where(model.contact_id == contact_id).order_by(model.id)
    return [_row(r) for r in (await s.execute(q)).scalars().all()]


async def export(s: AsyncSession, contact_id: int) -> dict[str, Any]:
    """Everything stored about one contact, as one JSON-serialisable document."""
    contact = await s.get(Contact, contact_id)
    if contact is None:
        raise GdprError(404, "not_found", f"contact {contact_id} not found")
    return {
        "format": "cicbot-gdpr-export/1",
        "exported_at": utcnow().isoformat(),
        "profile": _row(contact),
        "identities": await _all(s, Identity, contact_id),
        "consents": await _all(s, Consent, contact_id),
        "conversations": [
            {k: v for k, v in c.items() if k != "flow_state"}
            for c in await _all(s, Conversation, contact_id)
        ],
        "touchpoints": await _all(s, Touchpoint, contact_id),
        "cases": await _all(s, Case, contact_id),
        "survey_answers": await _all(s, SurveyAnswer, contact_id),
        "orders": await _all(s, Order, contact_id),
        "dead_letters": await _all(s, DeadLetter, contact_id),
        "agent_channel_messages": await _agent_messages(s, contact_id),
        "link_addresses": await _link_addresses(s, contact_id),
    }


async def _agent_messages(s: AsyncSession, contact_id: int) -> list[dict[str, Any]]:
    """The messages agent-facing channels hold about the contact (the Slack desk's cards
    and the customer's messages mirrored into their threads): where, and since when."""
    cards = (
        await s.execute(
            select(AgentCard)
            .join(Conversation, Conversation.id == AgentCard.conversation_id)
            .where(Conversation.contact_id == contact_id)
            .order_by(AgentCard.id)
        )
    ).scalars()
    found: list[dict[str, Any]] = []
    for card in cards:
        where = {"channel": card.channel, "container": card.container}
        found.append(
            {
                **where,
                "kind": "card",
                "message_ref": card.message_ref,
                "conversation_id": card.conversation_id,
                "created_at": card.created_at.isoformat(),
            }
        )
        replies = await s.execute(
            select(AgentCardMessage)
            .where(AgentCardMessage.card_id == card.id)
            .order_by(AgentCardMessage.id)
        )
        found.extend(
            {
                **where,
                "kind": "thread",
                "message_ref": m.message_ref,
                "conversation_id": card.conversation_id,
                "created_at": m.created_at.isoformat(),
            }
            for m in replies.scalars()
        )
    return found


async def _addresses(s: AsyncSession, contact_id: int) -> set[str]:
    """The contact's email addresses, lower case: its profile's and its email identities'."""
    contact = await s.get(Contact, contact_id)
    q = select(Identity.external_id).where(
        Identity.contact_id == contact_id, Identity.channel == "email"
    )
    found = {a.lower() for a in (await s.execute(q)).scalars()}
    if contact is not None and contact.email:
        found.add(contact.email.lower())
    return found


async def _link_addresses(s: AsyncSession, contact_id: int) -> list[dict[str, Any]]:
    addresses = await _addresses(s, contact_id)
    if not addresses:
        return []
    q = select(IdentityLinkAddress).where(IdentityLinkAddress.email.in_(addresses))
    return [_row(r) for r in (await s.execute(q.order_by(IdentityLinkAddress.id))).scalars()]


async def erase_agent_messages(
    s: AsyncSession, conv_ids: list[int], *, card_ids: list[int] | None = None
) -> int:
    """Ask the agent-facing channels (the Slack desk) to take these conversations out of
    their cards (or only these cards), through the outbox like every side effect
    (channels/slack_desk.py). Not queued again while one that covers it waits. Returns
    how many rows were queued."""
    if card_ids is not None:
        cond = AgentCard.id.in_(card_ids)
    elif conv_ids:
        cond = AgentCard.conversation_id.in_(conv_ids)
    else:
        return 0
    cards = (await s.execute(select(AgentCard).where(cond).order_by(AgentCard.id))).scalars()
    asked: set[tuple[str, str, str]] = set()
    for card in cards:
        key = desk_key(card.conversation_id, erase_kind(card.id if card_ids else None))
        whole = desk_key(card.conversation_id, erase_kind(None))  # covers each card
        place = (card.channel, card.container, key)
        if place in asked:
            continue
        waiting = await s.scalar(
            select(OutboxMessage.id).where(
                OutboxMessage.channel == card.channel,
                OutboxMessage.recipient_id == card.container,
                OutboxMessage.thread_key.in_([key, whole]),
                OutboxMessage.status == OutboxStatus.PENDING,
            )
        )
        if waiting is None:
            asked.add(place)
            await queries.enqueue(
                s,
                channel=card.channel,
                recipient_id=card.container,
                thread_key=key,
                body={"text": "", "choices": [], "locale": "en", "reply_to": None},
                conversation_id=card.conversation_id,
                identity_id=None,  # a failure marks no customer unreachable
            )
    return len(asked)


def is_rating(answer: str | None) -> bool:
    return answer is not None and answer.strip().isdigit() and len(answer.strip()) <= 2


async def erase(s: AsyncSession, contact_id: int, *, actor: str) -> dict[str, Any]:
    """Delete or anonymize every personal value of a contact; keep the rows aggregates
    are computed from (touchpoints' channel/kind/time, cases' category/severity/times,
    ratings, orders' amounts), and record the erasure itself as a touchpoint that holds
    no personal data. Idempotent. The caller owns the transaction."""
    contact = await s.get(Contact, contact_id, with_for_update=True)
    if contact is None:
        raise GdprError(404, "not_found", f"contact {contact_id} not found")
    identities = (
        (await s.execute(select(Identity).where(Identity.contact_id == contact_id))).scalars().all()
    )
    convs = (
        (await s.execute(select(Conversation).where(Conversation.contact_id == contact_id)))
        .scalars()
        .all()
    )
    # the values other tables may hold without a contact_id: addresses and thread keys
    addresses = {i.external_id for i in identities} | {c.thread_key for c in convs}
    if contact.email:
        addresses.add(contact.email)
    if contact.phone:
        addresses.add(contact.phone)
    addresses = {a for a in addresses if a and not a.startswith("erased:")}
    identity_ids = [i.id for i in identities]
    conv_ids = [c.id for c in convs]
    counts: dict[str, int] = {}

    async def run(name: str, stmt: Any) -> None:
        result = await s.execute(stmt)
        counts[name] = counts.get(name, 0) + int(getattr(result, "rowcount", 0) or 0)

    # messages about the contact that are not its history: the outbox (sent or not: nothing
    # more goes out), finished raw platform updates, email threading records
    out_cond: list[ColumnElement[bool]] = []
    if identity_ids:
        out_cond.append(OutboxMessage.identity_id.in_(identity_ids))
    if conv_ids:
        out_cond.append(OutboxMessage.conversation_id.in_(conv_ids))
    if addresses:
        out_cond.append(OutboxMessage.recipient_id.in_(addresses))
    # a verification code mailed to an address the contact claimed (bot/identity_link.py)
    codes = (
        await s.execute(
            select(IdentityLinkCode.id, IdentityLinkCode.email).where(
                IdentityLinkCode.contact_id == contact_id
            )
        )
    ).all()
    out_cond.extend(OutboxMessage.thread_key == f"identity-link:{i}" for i, _ in codes)
    claimed = {a.lower() for a in addresses} | {e.lower() for _, e in codes}
    if out_cond:
        await run("outbox", delete(OutboxMessage).where(or_(*out_cond)))
    if addresses:
        payload_text = cast(InboxUpdate.payload, Text)
        await run(
            "inbox",
            delete(InboxUpdate).where(
                InboxUpdate.status.not_in([InboxStatus.PENDING, InboxStatus.PROCESSING]),
                or_(
                    InboxUpdate.partition_key.in_(addresses),
                    *(payload_text.contains(a, autoescape=True) for a in addresses),
                ),
            ),
        )
        await run(
            "email_messages",
            delete(EmailMessageRef).where(
                or_(
                    EmailMessageRef.address.in_(addresses),
                    EmailMessageRef.thread_key.in_(addresses),
                )
            ),
        )
    # messages that failed (kept for a person to look at) and pending email verifications
    await run("dead_letters", delete(DeadLetter).where(DeadLetter.contact_id == contact_id))
    link_cond = [IdentityLinkCode.contact_id == contact_id]
    if identity_ids:
        link_cond.append(IdentityLinkCode.identity_id.in_(identity_ids))
    if addresses:
        link_cond.append(IdentityLinkCode.email.in_(addresses))
    await run("identity_link_codes", delete(IdentityLinkCode).where(or_(*link_cond)))
    if claimed:  # the count of wrong codes (and a lock) for its own and claimed addresses
        await run(
            "identity_link_addresses",
            delete(IdentityLinkAddress).where(IdentityLinkAddress.email.in_(claimed)),
        )
    # the history: kept for the figures, emptied of content
    await run(
        "touchpoints",
        update(Touchpoint)
        .where(Touchpoint.contact_id == contact_id)
        .values(text=None, payload={}, platform_message_id=None),
    )
    await run(
        "cases",
        update(Case)
        .where(Case.contact_id == contact_id)
        .values(description=ERASED, order_reference=None),
    )
    # the shop's order number finds the person in the shop again; amount and time stay
    await run(
        "orders",
        update(Order)
        .where(Order.contact_id == contact_id)
        .values(external_id=literal("erased:") + cast(Order.id, String)),
    )
    answers = (
        (await s.execute(select(SurveyAnswer).where(SurveyAnswer.contact_id == contact_id)))
        .scalars()
        .all()
    )
    for a in answers:
        if not is_rating(a.answer):
            a.answer = None
    counts["survey_answers"] = len(answers)
    await run(
        "consents",
        update(Consent)
        .where(Consent.contact_id == contact_id)
        .values(source=ERASED, text_shown=None),
    )
    for c in convs:
        c.thread_key = f"erased:{c.id}"
        c.flow_state = {}
        c.assignee = None
        if c.status != ConversationStatus.CLOSED:
            c.status = ConversationStatus.CLOSED
            c.closed_at = utcnow()
    for i in identities:
        i.external_id = f"erased:{i.id}"
        i.display_name = None
        i.reachable = False
        i.unreachable_reason = "erased"
    counts["conversations"], counts["identities"] = len(convs), len(identities)
    # the cards in the agent channel and the messages mirrored there (after the outbox
    # rows above are gone: these are new)
    counts["agent_cards"] = await erase_agent_messages(s, conv_ids)
    erased_at = utcnow()
    contact.name = contact.email = contact.phone = contact.timezone = contact.source = None
    contact.attributes = {"erased": True, "erased_at": erased_at.isoformat()}
    await s.flush()
    queries.add_touchpoint(
        s,
        contact_id=contact_id,
        conversation_id=None,
        channel=CRM_CHANNEL,
        direction=Direction.INTERNAL,
        kind="gdpr_erased",
        actor=actor,
        payload={"counts": counts},
    )
    await s.flush()
    return {"contact_id": contact_id, "erased_at": erased_at.isoformat(), "counts": counts}


def text_columns() -> list[tuple[str, str]]:
    """(table, column) of every text or JSON column: what an erasure check scans."""
    from sqlalchemy import JSON

    found = []
    for table in Base.metadata.sorted_tables:
        for col in table.columns:
            if isinstance(col.type, String | JSON) or "JSON" in type(col.type).__name__:
                found.append((table.name, col.name))
    return found


async def count_touchpoints(s: AsyncSession) -> int:
    return int(await s.scalar(select(func.count()).select_from(Touchpoint)) or 0)
