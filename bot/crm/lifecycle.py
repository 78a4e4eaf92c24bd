"""Lifecycle transitions by inactivity (docs/crm.md): active → at_risk after
`crm.at_risk_after_days` without an order or a message from the customer, → lost after
`crm.lost_after_days`; back to active on a new order or message. Every change is an
internal touchpoint `lifecycle_changed`. Prospects become active with their first order
or message; terminated contacts (they said goodbye) are left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.crm.history import CRM_CHANNEL
from bot.crm.settings import CrmSettings
from storage import queries
from storage.models import Contact, Direction, LifecyclePhase, Order, Touchpoint, utcnow

MANAGED = (
    LifecyclePhase.PROSPECT,
    LifecyclePhase.ACTIVE,
    LifecyclePhase.AT_RISK,
    LifecyclePhase.LOST,
)


def next_phase(
    phase: str,
    last_activity: datetime | None,
    phase_since: datetime | None,
    now: datetime,
    settings: CrmSettings,
) -> tuple[str, str] | None:
    """The new phase and the reason, or None when the phase stays. `phase_since` is when
    the current phase was set (a survey may set `lost` right after the customer wrote):
    only activity after it brings a customer back."""
    if phase not in MANAGED or last_activity is None:
        return None
    age = now - last_activity
    fresh = phase_since is None or last_activity > phase_since
    if age <= timedelta(days=settings.at_risk_after_days):
        if phase != LifecyclePhase.ACTIVE and fresh:
            return LifecyclePhase.ACTIVE, "new_activity"
        return None
    if phase == LifecyclePhase.PROSPECT:
        return None
    if age > timedelta(days=settings.lost_after_days):
        if phase in (LifecyclePhase.ACTIVE, LifecyclePhase.AT_RISK):
            return LifecyclePhase.LOST, f"inactive_{settings.lost_after_days}_days"
        return None
    if phase == LifecyclePhase.ACTIVE:
        return LifecyclePhase.AT_RISK, f"inactive_{settings.at_risk_after_days}_days"
    return None


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # SQLite aggregate over a subquery loses the column type
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def run(
    s: AsyncSession,
    settings: CrmSettings,
    *,
    now: datetime | None = None,
    contact_ids: set[int] | None = None,
) -> dict[str, int]:
    """Apply the transitions to every managed contact (or to `contact_ids`)."""
    now = now or utcnow()
    last_order = dict(
        (
            await s.execute(
                select(Order.contact_id, func.max(Order.ordered_at))
                .where(Order.status != "cancelled")
                .group_by(Order.contact_id)
            )
        ).all()
    )
    since = dict(
        (
            await s.execute(
                select(Touchpoint.contact_id, func.max(Touchpoint.created_at))
                .where(Touchpoint.kind == "lifecycle_changed")
                .group_by(Touchpoint.contact_id)
            )
        ).all()
    )
    q = select(Contact).where(Contact.lifecycle_phase.in_([str(p) for p in MANAGED]))
    if contact_ids is not None:
        q = q.where(Contact.id.in_(sorted(contact_ids)))
    counts: dict[str, int] = {}
    for contact in (await s.execute(q)).scalars():
        if (contact.attributes or {}).get("erased"):
            continue
        times = [t for t in (_aware(last_order.get(contact.id)), contact.last_contact_at) if t]
        last = max(times) if times else None
        if last is None and contact.lifecycle_phase == LifecyclePhase.ACTIVE:
            last = contact.created_at  # never ordered nor wrote: inactive since creation
        change = next_phase(
            contact.lifecycle_phase, last, _aware(since.get(contact.id)), now, settings
        )
        if change is None:
            continue
        new, reason = change
        queries.add_touchpoint(
            s,
            contact_id=contact.id,
            conversation_id=None,
            channel=CRM_CHANNEL,
            direction=Direction.INTERNAL,
            kind="lifecycle_changed",
            actor="system",
            payload={"old": contact.lifecycle_phase, "new": str(new), "reason": reason},
        )
        key = f"{contact.lifecycle_phase}->{new}"
        counts[key] = counts.get(key, 0) + 1
        contact.lifecycle_phase = new
    await s.flush()
    return dict(sorted(counts.items()))
