"""A campaign's figures over all its runs (docs/campaigns.md): targeted, skipped and
deferred by reason, sent, failed, responded, completed, converted — counted in the
database from the runs, deliveries and what followed them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.campaigns.definitions import DEFERRED, SENT
from storage.models import (
    CampaignDelivery,
    CampaignRun,
    Case,
    Direction,
    LifecyclePhase,
    OutboxMessage,
    OutboxStatus,
    SurveyAnswer,
    Touchpoint,
)


async def figures(s: AsyncSession, name: str) -> dict[str, Any]:
    """Targeted, skipped and deferred by reason, sent, failed, responded, completed and
    converted, over all of the campaign's runs."""
    runs = (
        (
            await s.execute(
                select(CampaignRun).where(CampaignRun.campaign == name).order_by(CampaignRun.id)
            )
        )
        .scalars()
        .all()
    )
    by = (
        await s.execute(
            select(CampaignDelivery.status, CampaignDelivery.reason, func.count())
            .where(CampaignDelivery.campaign == name)
            .group_by(CampaignDelivery.status, CampaignDelivery.reason)
        )
    ).all()
    sent_rows = CampaignDelivery.campaign == name, CampaignDelivery.status == SENT
    failed = (
        await s.execute(
            select(func.count())
            .select_from(CampaignDelivery)
            .join(OutboxMessage, OutboxMessage.id == CampaignDelivery.outbox_id)
            .where(*sent_rows, OutboxMessage.status == OutboxStatus.FAILED)
        )
    ).scalar_one()
    responded = (
        await s.execute(
            select(func.count()).where(
                *sent_rows,
                exists().where(
                    Touchpoint.conversation_id == CampaignDelivery.conversation_id,
                    Touchpoint.direction == Direction.IN,
                    Touchpoint.created_at >= CampaignDelivery.sent_at,
                ),
            )
        )
    ).scalar_one()
    completed = (
        await s.execute(
            select(func.count()).where(
                *sent_rows,
                or_(
                    exists().where(
                        SurveyAnswer.conversation_id == CampaignDelivery.conversation_id,
                        SurveyAnswer.created_at >= CampaignDelivery.sent_at,
                    ),
                    exists().where(  # a complaint flow completes with its case
                        Case.conversation_id == CampaignDelivery.conversation_id,
                        Case.created_at >= CampaignDelivery.sent_at,
                    ),
                ),
            )
        )
    ).scalar_one()
    converted = (
        await s.execute(
            select(func.count()).where(
                *sent_rows,
                exists().where(
                    Touchpoint.contact_id == CampaignDelivery.contact_id,
                    Touchpoint.kind == "lifecycle_changed",
                    Touchpoint.payload["new"]
                    .as_string()
                    .in_([LifecyclePhase.AT_RISK, LifecyclePhase.ACTIVE]),
                    Touchpoint.created_at >= CampaignDelivery.sent_at,
                ),
            )
        )
    ).scalar_one()
    skipped: dict[str, int] = {}
    deferred: dict[str, int] = {}
    sent = 0
    for status, reason, n in by:
        if status == SENT:
            sent += n
        elif status == DEFERRED:
            deferred[reason or "?"] = deferred.get(reason or "?", 0) + n
        else:
            skipped[reason or "?"] = skipped.get(reason or "?", 0) + n
    return {
        "campaign": name,
        "runs": [
            {
                "id": r.id,
                "run_key": r.run_key,
                "status": r.status,
                "targeted": r.targeted,
                "started_at": r.started_at.isoformat(),
            }
            for r in runs
        ],
        "targeted": sum(r.targeted for r in runs),
        "skipped": skipped,
        "deferred": deferred,
        "sent": sent,
        "failed": failed,
        "responded": responded,
        "completed": completed,
        "converted": converted,
    }
