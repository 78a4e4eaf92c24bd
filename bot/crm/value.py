"""Customer value from orders: RFM scores, a lifetime-value estimate, the value segment
(A / B / C) and the class of value × service need (docs/crm.md).

- R, F, M: quintile scores 1–5 among the customers with orders in the window (recency:
  days since the last order, fewer is better; frequency: orders; monetary: sum).
- CLV: the yearly spend observed in the window × the horizon × a retention probability
  taken from the recency score (R/5). A transparent heuristic, not a fitted model.
- Segment: the top `segment_a_share` of customers by CLV are A, the next
  `segment_b_share` B, every other contact with orders C; contacts without orders in the
  window lose their segment only if they had one (they become C).
- Class: high value (A or B) or not × high service need (inbound messages plus cases in
  the last 90 days ≥ `service_need_contacts`) or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.crm.settings import CrmSettings
from storage.models import Case, Contact, Direction, Order, Touchpoint, utcnow

CLASSES = {
    (True, False): "high_value_low_need",  # cultivate: keep them happy, little effort
    (True, True): "high_value_high_need",  # invest: personal service, first in the queue
    (False, False): "low_value_low_need",  # standard: self-service works
    (False, True): "low_value_high_need",  # steer to self-service, fix the root causes
}
NEED_DAYS = 90


@dataclass
class Rfm:
    contact_id: int
    recency_days: float
    frequency: int
    monetary_cents: int
    first_order: datetime
    r: int = 0
    f: int = 0
    m: int = 0
    clv_cents: int = 0
    segment: str = "C"


def quintiles(values: list[float], higher_is_better: bool = True) -> list[int]:
    """A 1–5 score per value by rank; ties share the score of their first rank."""
    n = len(values)
    order = sorted(range(n), key=lambda i: values[i], reverse=not higher_is_better)
    scores = [0] * n
    prev: float | None = None
    prev_score = 1
    for rank, i in enumerate(order):
        score = prev_score if values[i] == prev else 1 + (5 * rank) // n
        scores[i], prev, prev_score = score, values[i], score
    return scores


def score(rows: list[Rfm], settings: CrmSettings, now: datetime) -> None:
    if not rows:
        return
    rs = quintiles([r.recency_days for r in rows], higher_is_better=False)
    fs = quintiles([float(r.frequency) for r in rows])
    ms = quintiles([float(r.monetary_cents) for r in rows])
    for row, r, f, m in zip(rows, rs, fs, ms, strict=True):
        row.r, row.f, row.m = r, f, m
        observed_years = max((now - row.first_order).days, 90) / 365.0
        yearly = row.monetary_cents / observed_years
        row.clv_cents = int(yearly * settings.clv_horizon_years * (r / 5))
    ranked = sorted(rows, key=lambda x: (-x.clv_cents, x.contact_id))
    n = len(ranked)
    a_end = max(1, round(n * settings.segment_a_share))
    b_end = a_end + round(n * settings.segment_b_share)
    for i, row in enumerate(ranked):
        row.segment = "A" if i < a_end else "B" if i < b_end else "C"


async def recompute(
    s: AsyncSession, settings: CrmSettings, *, now: datetime | None = None
) -> dict[str, Any]:
    """Recompute every contact's value; returns counts per segment and class."""
    now = now or utcnow()
    since = now - timedelta(days=settings.value_window_days)
    q = (
        select(
            Order.contact_id,
            func.max(Order.ordered_at),
            func.min(Order.ordered_at),
            func.count(),
            func.sum(Order.amount_cents),
        )
        .where(Order.ordered_at >= since, Order.ordered_at <= now, Order.status == "completed")
        .group_by(Order.contact_id)
    )
    rows: list[Rfm] = []
    for cid, last, first, count, total in (await s.execute(q)).all():
        last = _aware(last)
        rows.append(
            Rfm(
                cid,
                (now - last).total_seconds() / 86400,
                int(count),
                int(total or 0),
                _aware(first),
            )
        )
    score(rows, settings, now)
    need = await _service_need(s, now)
    by_id = {r.contact_id: r for r in rows}
    changed = 0
    counts: dict[str, int] = {}
    contacts = (
        await s.execute(
            select(Contact).where(
                or_(
                    Contact.id.in_(select(Order.contact_id).where(Order.ordered_at >= since)),
                    Contact.value_segment.is_not(None),
                )
            )
        )
    ).scalars()
    for contact in contacts:
        if (contact.attributes or {}).get("erased"):
            continue
        row = by_id.get(contact.id)
        high_need = need.get(contact.id, 0) >= settings.service_need_contacts
        segment = row.segment if row else "C"
        klass = CLASSES[(segment in ("A", "B"), high_need)]
        value = {
            "r": row.r if row else None,
            "f": row.f if row else None,
            "m": row.m if row else None,
            "rfm": f"{row.r}{row.f}{row.m}" if row else None,
            "recency_days": round(row.recency_days, 1) if row else None,
            "orders": row.frequency if row else 0,
            "monetary_cents": row.monetary_cents if row else 0,
            "clv_cents": row.clv_cents if row else 0,
            "service_need": "high" if high_need else "low",
            "class": klass,
        }
        old = (contact.attributes or {}).get("value")
        if contact.value_segment != segment or old != value:
            contact.value_segment = segment
            contact.attributes = {**(contact.attributes or {}), "value": value}
            changed += 1
        counts[f"segment_{segment}"] = counts.get(f"segment_{segment}", 0) + 1
        counts[klass] = counts.get(klass, 0) + 1
    await s.flush()
    return {"customers_with_orders": len(rows), "changed": changed, **dict(sorted(counts.items()))}


async def _service_need(s: AsyncSession, now: datetime) -> dict[int, int]:
    since = now - timedelta(days=NEED_DAYS)
    need: dict[int, int] = {}
    q1 = (
        select(Touchpoint.contact_id, func.count())
        .where(Touchpoint.direction == Direction.IN, Touchpoint.created_at >= since)
        .group_by(Touchpoint.contact_id)
    )
    q2 = (
        select(Case.contact_id, func.count())
        .where(Case.created_at >= since)
        .group_by(Case.contact_id)
    )
    for q in (q1, q2):
        for cid, n in (await s.execute(q)).all():
            need[cid] = need.get(cid, 0) + int(n)
    return need


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
