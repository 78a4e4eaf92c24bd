"""Campaign audiences compiled to SQL: one query selects everyone a campaign targets now
(bot.campaigns.definitions.Audience and the trigger's event), never a filter in Python."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, String, and_, cast, exists, false, func, literal, null, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from bot.campaigns.definitions import MARKETING, SENT, Audience, CampaignSettings
from storage.models import (
    CampaignDelivery,
    Case,
    CaseStatus,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Identity,
    LifecyclePhase,
    Touchpoint,
)


def _rule(rule: Audience, now: datetime) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if rule.lifecycle_phase is not None:
        conds.append(Contact.lifecycle_phase.in_(rule.lifecycle_phase))
    if rule.inactive_days is not None:
        last = func.coalesce(Contact.last_contact_at, Contact.created_at)
        conds.append(last < now - timedelta(days=rule.inactive_days))
    if rule.value_segment is not None:
        conds.append(Contact.value_segment.in_(rule.value_segment))
    if rule.case_resolved_days_ago is not None:
        case = aliased(Case)  # the query may join cases itself (an event trigger)
        conds.append(
            exists().where(
                case.contact_id == Contact.id,
                case.status.in_([CaseStatus.RESOLVED, CaseStatus.CLOSED]),
                case.resolved_at <= now - timedelta(days=rule.case_resolved_days_ago),
            )
        )
    if rule.reachable_on is not None:
        identity = aliased(Identity)
        conds.append(
            exists().where(
                identity.contact_id == Contact.id,
                identity.channel.in_(rule.reachable_on),
                identity.reachable.is_(True),
            )
        )
    for key, value in (rule.attributes or {}).items():
        item = Contact.attributes[key]
        if isinstance(value, bool):
            conds.append(item.as_boolean() == value)
        elif isinstance(value, int):
            conds.append(item.as_integer() == value)
        else:
            conds.append(item.as_string() == value)
    if rule.any_of is not None:
        alternatives = [and_(*(_rule(r, now) or [literal(True)])) for r in rule.any_of]
        conds.append(or_(*alternatives) if alternatives else false())
    return conds


def audience_query(c: CampaignSettings, now: datetime) -> Select[Any, Any, Any, Any]:
    """(contact id, subject, case reference, conversation id) of everyone the campaign
    targets now."""
    conds = _rule(c.audience, now)
    if c.purpose == MARKETING:
        conds.append(Contact.lifecycle_phase != LifecyclePhase.TERMINATED)
    if c.cooldown_days > 0:
        conds.append(
            ~exists().where(
                CampaignDelivery.campaign == c.name,
                CampaignDelivery.contact_id == Contact.id,
                CampaignDelivery.status == SENT,
                CampaignDelivery.sent_at > now - timedelta(days=c.cooldown_days),
            )
        )
    trigger = c.trigger
    if trigger is not None and trigger.after == "case_resolved":
        since = now - timedelta(days=trigger.days + trigger.lookback_days)
        q: Select[Any, Any, Any, Any] = (
            select(Contact.id, Case.reference, Case.reference, null())
            .join(Case, Case.contact_id == Contact.id)
            .where(
                Case.status.in_([CaseStatus.RESOLVED, CaseStatus.CLOSED]),
                Case.reference.is_not(None),
                Case.resolved_at <= now - timedelta(days=trigger.days),
                Case.resolved_at > since,
            )
        )
        subject: Any = Case.reference
    elif trigger is not None and trigger.after == "became_lost":
        since = now - timedelta(days=trigger.days + trigger.lookback_days)
        subject = Touchpoint.id
        q = (
            select(Contact.id, Touchpoint.id, null(), null())
            .join(Touchpoint, Touchpoint.contact_id == Contact.id)
            .where(
                Touchpoint.kind == "lifecycle_changed",
                Touchpoint.payload["new"].as_string() == LifecyclePhase.LOST,
                Touchpoint.created_at <= now - timedelta(days=trigger.days),
                Touchpoint.created_at > since,
                Contact.lifecycle_phase == LifecyclePhase.LOST,
            )
        )
    elif trigger is not None and trigger.after == "flow_abandoned":
        q, subject = _abandoned(c, trigger.days, trigger.lookback_days, now)
    else:
        return select(Contact.id, null(), null(), null()).where(*conds).order_by(Contact.id)
    already = exists().where(
        CampaignDelivery.campaign == c.name,
        CampaignDelivery.subject == cast(subject, String),
        CampaignDelivery.status == SENT,
    )
    return q.where(*conds, ~already).order_by(Contact.id, subject)


def _abandoned(
    c: CampaignSettings, days: float, lookback_days: float, now: datetime
) -> tuple[Select[Any, Any, Any, Any], ColumnElement[str]]:
    """Conversations with the bot whose flow is still running, whose customer wrote in the
    flow (a campaign's unanswered opening is not an abandoned flow) and then went quiet
    for `days`; not a marketing campaign's flow, not reminded yet. The subject is the
    conversation and the customer's last message in it: one reminder per abandonment."""
    quiet_since = now - timedelta(days=days)
    state = Conversation.flow_state
    in_conv = Touchpoint.conversation_id == Conversation.id
    last_in = (
        select(func.max(Touchpoint.id))
        .where(in_conv, Touchpoint.direction == Direction.IN)
        .scalar_subquery()
    )
    last_start = (
        select(func.coalesce(func.max(Touchpoint.id), 0))
        .where(in_conv, Touchpoint.kind == "flow_started")
        .scalar_subquery()
    )
    subject = cast(Conversation.id, String).concat(":").concat(cast(last_in, String))
    from bot.conversation.engine import MARKETING_KEY  # the engine only when a reminder runs

    running = state["flow"].as_string()
    q = (
        select(Contact.id, subject, null(), Conversation.id)
        .select_from(Conversation)
        .join(Contact, Contact.id == Conversation.contact_id)
        .where(
            Conversation.status == ConversationStatus.BOT,
            running.is_not(None) if c.flow is None else running == c.flow,
            state[MARKETING_KEY].as_string().is_(None),  # marketing flow: no service reminder
            func.coalesce(state["reminded"].as_boolean(), false()) == false(),
            Contact.last_contact_at <= quiet_since,
            Contact.last_contact_at > quiet_since - timedelta(days=lookback_days),
            last_in > last_start,
        )
    )
    return q, subject
