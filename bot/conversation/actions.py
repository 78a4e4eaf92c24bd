"""Carries out the actions flows ask for, inside the engine's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from bot.conversation import presence
from bot.conversation.linking import IdentityLinker
from bot.conversation.turn import Turn
from flows.actions import (
    Action,
    Escalate,
    LeaveQueue,
    LogSelfService,
    OpenCase,
    RecordSurvey,
    RequestLinkCode,
    SetConsent,
    SetLifecycle,
    SetLocale,
    ShowCaseStatus,
    ShowQueuePosition,
    VerifyLinkCode,
)
from flows.catalog import Catalog
from flows.hours import BusinessHours
from flows.model import Context, Reply
from flows.options import FlowOptions
from flows.service_level import queue_priority
from storage import queries
from storage.models import ConversationStatus, SurveyAnswer

DATE_FORMATS = {"de": "%d.%m.%Y, %H:%M Uhr", "en": "%d %b %Y, %H:%M"}
DAY_FORMATS = {"de": "%d.%m.%Y", "en": "%d %b %Y"}


def selfservice_note(action: LogSelfService) -> dict[str, object]:
    """The payload of the touchpoint a self-service attempt leaves (the engine's plain
    turn writes it too)."""
    return {
        "question": action.question,
        "entry": action.entry_id,
        "confidence": round(action.confidence, 3),
        "answered": action.answered,
    }


class ActionRunner:
    def __init__(
        self,
        options: FlowOptions,
        catalog: Catalog,
        timezone: str,
        hours: BusinessHours | None = None,
    ) -> None:
        self.options = options
        self.catalog = catalog
        self.timezone = timezone
        self.hours = hours
        self.links = IdentityLinker(options.company_name, options.identity_link)

    async def run(self, turn: Turn, actions: Sequence[Action]) -> None:
        for action in actions:
            await self._one(turn, action)

    def _local(self, turn: Turn, when: datetime, formats: dict[str, str]) -> str:
        return self._local_in(turn.contact.timezone, turn.ctx.locale, when, formats)

    def _local_in(
        self, timezone: str | None, locale: str, when: datetime, formats: dict[str, str]
    ) -> str:
        tz = ZoneInfo(timezone or self.timezone)
        return when.astimezone(tz).strftime(formats.get(locale, formats["en"]))

    async def _one(self, turn: Turn, action: Action) -> None:
        ctx, conv, contact = turn.ctx, turn.conversation, turn.contact
        match action:
            case OpenCase():
                await self._open_case(turn, action)
            case Escalate(reason=reason, priority=prio):
                if conv.status in (ConversationStatus.QUEUED, ConversationStatus.AGENT):
                    return
                conv.status = ConversationStatus.QUEUED
                # queue order: the reason's weight plus the customer's value
                conv.priority = max(conv.priority, queue_priority(prio, contact.value_segment))
                conv.queued_at = ctx.now
                conv.flow_state = {}
                turn.note("escalated", reason=reason, priority=conv.priority)
                if self.hours is not None and not self.hours.is_open(ctx.now):
                    opening = self.hours.next_open(ctx.now)
                    if opening is not None:
                        when = self._local(turn, opening, DATE_FORMATS)
                        text = ctx.t("escalation.outside_hours", next_open=when)
                        turn.after.append(Reply("escalation.outside_hours", text))
            case LeaveQueue():
                conv.status = ConversationStatus.BOT
                conv.priority = 0
                conv.queued_at = None
                turn.note("left_queue")
            case RecordSurvey(survey=survey, answers=answers, case_reference=ref):
                case_id = None
                if ref:
                    found = await queries.cases_of_contact(turn.session, contact.id, reference=ref)
                    case_id = found[0].id if found else None
                for question, answer in answers.items():
                    turn.session.add(
                        SurveyAnswer(
                            contact_id=contact.id,
                            conversation_id=conv.id,
                            case_id=case_id,
                            survey=survey,
                            question=question,
                            answer=answer,
                            created_at=ctx.now,
                        )
                    )
                turn.note("survey_completed", survey=survey, answers=dict(answers))
            case SetLifecycle(phase=phase, reason=reason):
                if contact.lifecycle_phase != phase:
                    turn.note(
                        "lifecycle_changed",
                        old=contact.lifecycle_phase,
                        new=phase,
                        reason=reason,
                    )
                    contact.lifecycle_phase = phase
            case SetLocale(locale=locale):
                contact.locale = locale
                turn.ctx = replace(ctx, locale=locale)
            case SetConsent(purpose=purpose, granted=granted, source=source, text_shown=shown):
                await queries.add_consent(
                    turn.session,
                    contact_id=contact.id,
                    purpose=purpose,
                    channel=conv.channel,
                    granted=granted,
                    source=source,
                    text_shown=shown,
                )
                turn.note("consent", purpose=purpose, granted=granted, source=source)
            case ShowCaseStatus(reference=ref):
                await self._case_status(turn, ref)
            case ShowQueuePosition():
                await self._queue_position(turn)
            case RequestLinkCode(email=email):
                await self.links.request(turn, email)
            case VerifyLinkCode(code=code):
                await self.links.verify(turn, code)
            case LogSelfService():
                turn.note("selfservice", **selfservice_note(action))

    async def _queue_position(self, turn: Turn) -> None:
        """Where the customer stands and when someone answers: the same promise as at the
        escalation (out of hours: when the team is back)."""
        ctx = turn.ctx
        position = await presence.queue_position(turn.session, turn.conversation)
        if position is None:
            return
        there = await presence.availability(turn.session, self.hours, ctx.now)
        if there.next_open is not None:
            when = self._local(turn, there.next_open, DATE_FORMATS)
            key, params = "escalation.position_closed", {"position": position, "next_open": when}
        else:
            key, params = "escalation.position", {"position": position}
        turn.replies.append(Reply(key, ctx.t(key, **params)))
        turn.note("queue_position", position=position, agents_online=there.agents_online)

    async def _open_case(self, turn: Turn, a: OpenCase) -> None:
        # the same Core statements as the plain turn's (`open_case_in`): no Case object is
        # needed, only its reference
        note, reply = await self.open_case_in(
            turn.session,
            turn.contact.id,
            turn.conversation.id,
            turn.contact.timezone,
            turn.ctx,
            a,
        )
        turn.note("case_opened", **note)
        turn.replies.append(reply)

    async def open_case_in(
        self,
        s: AsyncSession,
        contact_id: int,
        conversation_id: int,
        timezone: str | None,
        ctx: Context,
        a: OpenCase,
    ) -> tuple[dict[str, object], Reply]:
        """`OpenCase` from plain values (the engine's plain turn): the case row in Core
        statements; the payload of its note and the reply, as `_open_case` gives them."""
        reference = await queries.insert_case(
            s,
            contact_id=contact_id,
            conversation_id=conversation_id,
            category=a.category,
            description=a.description,
            order_reference=a.order_reference,
            severity=a.severity,
            desired_resolution=a.desired_resolution,
            priority=a.priority,
            sla_due_at=a.due_at,
            created_at=ctx.now,
        )
        return self._case_opened(reference, a, ctx, timezone)

    def _case_opened(
        self, reference: str, a: OpenCase, ctx: Context, timezone: str | None
    ) -> tuple[dict[str, object], Reply]:
        """The note's payload and the customer's reply for a case just opened."""
        # the due time the flow decided (business hours): what the customer is promised is
        # what the case panel shows
        due = (
            "–"
            if a.due_at is None
            else self._local_in(timezone, ctx.locale, a.due_at, DATE_FORMATS)
        )
        note: dict[str, object] = {
            "reference": reference,
            "severity": a.severity,
            "category": a.category,
        }
        text = ctx.t("complaint.opened", reference=reference, due=due)
        return note, Reply("complaint.opened", text, meta={"case": reference})

    async def _case_status(self, turn: Turn, ref: str | None) -> None:
        ctx = turn.ctx
        # only this contact's own cases: a quoted reference reveals nothing about others'
        cases = await queries.cases_of_contact(
            turn.session, turn.contact.id, reference=ref, open_only=ref is None
        )
        if not cases:
            key = "status.not_found" if ref else "status.none"
            turn.replies.append(Reply(key, ctx.t(key, reference=ref)))
            return
        for case in cases[-5:]:
            category = next(
                (
                    c.label.get(ctx.locale)
                    for c in self.options.complaint.categories
                    if c.id == case.category
                ),
                case.category,
            )
            turn.replies.append(
                Reply(
                    "status.case",
                    ctx.t(
                        "status.case",
                        reference=case.reference,
                        category=category,
                        created=self._local(turn, case.created_at, DAY_FORMATS),
                        status=ctx.t(f"status.{case.status}"),
                    ),
                    meta={"case": case.reference},
                )
            )
