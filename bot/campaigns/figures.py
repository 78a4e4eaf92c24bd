"""A campaign's figures over all its runs (docs/campaigns.md): targeted, skipped and
deferred by reason, sent, failed, responded, completed, converted — counted in the
database from the runs, deliveries and what followed them.

They add up: every contact a run targeted has one delivery row with its outcome (sent,
skipped or deferred), or none yet while the run is open (`pending`), so
targeted = sent + skipped + deferred + pending, per run and in all."""

from __future__ import annotations

from datetime import datetime, timedelta
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
    per_run: dict[int, dict[str, int]] = {}
    for run_id, status, n in (
        await s.execute(
            select(CampaignDelivery.run_id, CampaignDelivery.status, func.count())
            .where(CampaignDelivery.campaign == name)
            .group_by(CampaignDelivery.run_id, CampaignDelivery.status)
        )
    ).all():
        per_run.setdefault(run_id, {})[status] = n
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
    listed = [_run(r, per_run.get(r.id, {})) for r in runs]
    return {
        "campaign": name,
        "runs": listed,
        "targeted": sum(r.targeted for r in runs),
        "pending": sum(r["pending"] for r in listed),
        "skipped": skipped,
        "deferred": deferred,
        "sent": sent,
        "failed": failed,
        "responded": responded,
        "completed": completed,
        "converted": converted,
    }


# bot/campaigns/scheduler.py: the leader of `cicbot serve` resumes open and deferred runs
# this often, for this long after they started
RESUME_MINUTES = 15
RESUME_DAYS = 2


def _run(r: CampaignRun, counts: dict[str, int]) -> dict[str, Any]:
    recorded = sum(counts.values())
    deferred = counts.get(DEFERRED, 0)
    return {
        "id": r.id,
        "run_key": r.run_key,
        "status": r.status,
        "targeted": r.targeted,
        "sent": counts.get(SENT, 0),
        "skipped": recorded - counts.get(SENT, 0) - deferred,
        "deferred": deferred,
        "pending": max(r.targeted - recorded, 0),  # not reached yet (the run is open)
        "started_at": _iso(r.started_at),
        "finished_at": _iso(r.finished_at) if r.finished_at else None,
        # deferred contacts (quiet hours, a busy conversation) and an interrupted run are
        # tried again by the scheduler every RESUME_MINUTES until this time
        "retry_until": (
            _iso(r.started_at + timedelta(days=RESUME_DAYS))
            if r.status in ("running", "deferred")
            else None
        ),
    }


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
