"""The retention period (`crm.retention_days`) over every table that holds personal data
(docs/security.md lists them). Run nightly by the scheduling leader, and by
`cicbot gdpr retention` / `POST /api/v1/gdpr/retention`.

"Older than the period" means not changed within it. A contact nothing happened to within
the period (no message, order, conversation, case or consent) is erased like an erasure
request (bot/gdpr.py), keeping what the figures need. Of everyone else, what is older is
deleted when it is a copy or a working record (raw updates, sent mail, threading records,
dead letters, link codes, touchpoints, orders) and emptied of content when the figures
count it (cases, free-text answers, flow states); a Slack desk card nothing was added to
within the period is taken down through the outbox (unless its conversation still waits for
or is with an agent). Unfinished work (updates still to process, messages still to send)
and locked link addresses stay until done or unlocked.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, cast, delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import gdpr
from storage.models import (
    AgentCard,
    AgentCardMessage,
    Case,
    Consent,
    Contact,
    Conversation,
    ConversationStatus,
    DeadLetter,
    Direction,
    EmailMessageRef,
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

log = logging.getLogger(__name__)
ACTOR = "retention"
# contacts erased per run at most: a first run on an old database spreads over nights
MAX_ERASED_PER_RUN = 2000


async def purge(
    s: AsyncSession, retention_days: int, *, now: datetime | None = None
) -> dict[str, int]:
    """Apply the retention period; returns how many rows each step touched. The caller
    owns the transaction."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    counts: dict[str, int] = {}

    async def run(name: str, stmt: Any) -> None:
        result = await s.execute(stmt)
        counts[name] = int(getattr(result, "rowcount", 0) or 0)

    erased = 0
    for contact_id in await silent_contacts(s, cutoff):
        await gdpr.erase(s, contact_id, actor=ACTOR)
        erased += 1
    counts["contacts_erased"] = erased

    # copies and working records: deleted
    await run("touchpoints", delete(Touchpoint).where(Touchpoint.created_at < cutoff))
    await run(
        "inbox",
        delete(InboxUpdate).where(
            InboxUpdate.created_at < cutoff,
            InboxUpdate.status.not_in([InboxStatus.PENDING, InboxStatus.PROCESSING]),
        ),
    )
    await run(
        "outbox",
        delete(OutboxMessage).where(
            OutboxMessage.created_at < cutoff,
            OutboxMessage.status.in_([OutboxStatus.SENT, OutboxStatus.FAILED]),
        ),
    )
    await run("email_messages", delete(EmailMessageRef).where(EmailMessageRef.created_at < cutoff))
    await run("dead_letters", delete(DeadLetter).where(DeadLetter.created_at < cutoff))
    await run(
        "identity_link_codes", delete(IdentityLinkCode).where(IdentityLinkCode.created_at < cutoff)
    )
    await run(
        "identity_link_addresses",
        delete(IdentityLinkAddress).where(
            IdentityLinkAddress.updated_at < cutoff, IdentityLinkAddress.locked_at.is_(None)
        ),
    )
    await run("orders", delete(Order).where(Order.ordered_at < cutoff))

    # rows the figures count: emptied (their own time kept, so nothing looks recent)
    await run(
        "cases",
        update(Case)
        .where(Case.updated_at < cutoff, Case.description != gdpr.ERASED)
        .values(description=gdpr.ERASED, order_reference=None, updated_at=Case.updated_at),
    )
    await run(
        "conversations",
        update(Conversation)
        .where(Conversation.updated_at < cutoff, cast(Conversation.flow_state, Text) != "{}")
        .values(flow_state={}, updated_at=Conversation.updated_at),
    )
    answers = (
        await s.execute(
            select(SurveyAnswer).where(
                SurveyAnswer.created_at < cutoff, SurveyAnswer.answer.is_not(None)
            )
        )
    ).scalars()
    counts["survey_answers"] = 0
    for a in answers:
        if not gdpr.is_rating(a.answer):
            a.answer = None
            counts["survey_answers"] += 1

    # the Slack desk's cards nothing was added to since the cutoff, unless still worked on
    live = Conversation.status.in_([ConversationStatus.QUEUED, ConversationStatus.AGENT])
    old_cards = (
        await s.execute(
            select(AgentCard.id)
            .join(Conversation, Conversation.id == AgentCard.conversation_id)
            .where(
                AgentCard.created_at < cutoff,
                ~exists().where(
                    AgentCardMessage.card_id == AgentCard.id,
                    AgentCardMessage.created_at >= cutoff,
                ),
                or_(~live, Conversation.updated_at < cutoff),
            )
        )
    ).scalars()
    counts["agent_cards"] = await gdpr.erase_agent_messages(s, [], card_ids=list(old_cards))
    await s.flush()
    log.info("retention (%d days): %s", retention_days, counts)
    return counts


async def silent_contacts(s: AsyncSession, cutoff: datetime) -> list[int]:
    """Contacts nothing happened to since `cutoff`, not yet erased (oldest first)."""

    def since(model: Any, column: Any, *more: Any) -> Any:
        return exists().where(model.contact_id == Contact.id, column >= cutoff, *more)

    q = (
        select(Contact.id, Contact.attributes)
        .where(
            Contact.created_at < cutoff,
            or_(Contact.last_contact_at.is_(None), Contact.last_contact_at < cutoff),
            ~since(Order, Order.ordered_at),
            ~since(Conversation, Conversation.updated_at),
            ~since(Case, Case.updated_at),
            ~since(Consent, Consent.created_at),
            ~since(
                Touchpoint,
                Touchpoint.created_at,
                Touchpoint.direction.in_([Direction.IN, Direction.OUT]),
            ),
            # erased before (its record may itself be gone after a period: checked below)
            ~exists().where(Touchpoint.contact_id == Contact.id, Touchpoint.kind == "gdpr_erased"),
        )
        .order_by(Contact.id)
        .limit(MAX_ERASED_PER_RUN)
    )
    rows = (await s.execute(q)).all()
    return [cid for cid, attributes in rows if not (attributes or {}).get("erased")]
