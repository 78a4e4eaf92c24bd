"""The contact history made useful: one contact's timeline, and merging two contacts
(verified evidence or an agent's decision) without losing a touchpoint, case or consent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Column, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import queries
from storage.models import Base, Contact, Direction, Touchpoint

CRM_CHANNEL = "crm"  # the channel of internal CRM events (merge, lifecycle, erasure)
PHASE_RANK = {"active": 5, "at_risk": 4, "prospect": 3, "lost": 2, "terminated": 1}


class MergeError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def contact_columns() -> list[Column[Any]]:
    """Every column of every table that points at a contact: a table added later is
    merged too, without a list to keep."""
    found = []
    for table in Base.metadata.sorted_tables:
        for col in table.columns:
            if any(fk.column.table.name == "contacts" for fk in col.foreign_keys):
                found.append(col)
    return found


async def timeline_page(
    s: AsyncSession,
    contact_id: int,
    *,
    channel: str | None = None,
    kind: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[Sequence[Touchpoint], int]:
    """One page of a contact's touchpoints across channels, newest first, and the total."""
    cond = [Touchpoint.contact_id == contact_id]
    if channel:
        cond.append(Touchpoint.channel == channel)
    if kind:
        cond.append(Touchpoint.kind == kind)
    total = await s.scalar(select(func.count()).select_from(Touchpoint).where(*cond))
    q = select(Touchpoint).where(*cond).order_by(Touchpoint.id.desc()).limit(limit).offset(offset)
    return (await s.execute(q)).scalars().all(), int(total or 0)


async def merge_contacts(
    s: AsyncSession, keep_id: int, merge_id: int, *, actor: str, reason: str
) -> dict[str, Any]:
    """Move everything of contact `merge_id` to `keep_id`, fill the kept profile's gaps,
    delete the merged contact row and record the merge as an internal touchpoint on the
    kept contact. The caller owns the transaction (and commits only on success)."""
    if keep_id == merge_id:
        raise MergeError(422, "invalid_merge", "a contact cannot be merged into itself")
    rows = (
        (
            await s.execute(
                select(Contact)
                .where(Contact.id.in_([keep_id, merge_id]))
                .order_by(Contact.id)
                .with_for_update()
            )
        )
        .scalars()
        .all()
    )
    by_id = {c.id: c for c in rows}
    for cid in (keep_id, merge_id):
        if cid not in by_id:
            raise MergeError(404, "not_found", f"contact {cid} not found")
        if (by_id[cid].attributes or {}).get("erased"):
            raise MergeError(409, "erased", f"contact {cid} was erased")
    keep, gone = by_id[keep_id], by_id[merge_id]
    moved: dict[str, int] = {}
    for col in contact_columns():
        result = await s.execute(
            update(col.table).where(col == merge_id).values({col.name: keep_id})
        )
        n = int(getattr(result, "rowcount", 0) or 0)
        if n:
            moved[col.table.name] = moved.get(col.table.name, 0) + n
    for field in ("name", "email", "phone", "timezone", "source"):
        if not getattr(keep, field) and getattr(gone, field):
            setattr(keep, field, getattr(gone, field))
    keep.attributes = {**(gone.attributes or {}), **(keep.attributes or {})}
    if gone.last_contact_at and (
        keep.last_contact_at is None or gone.last_contact_at > keep.last_contact_at
    ):
        keep.last_contact_at = gone.last_contact_at
    if gone.value_segment and (not keep.value_segment or gone.value_segment < keep.value_segment):
        keep.value_segment = gone.value_segment  # "A" < "B" < "C": the better one
    if PHASE_RANK.get(gone.lifecycle_phase, 0) > PHASE_RANK.get(keep.lifecycle_phase, 0):
        keep.lifecycle_phase = gone.lifecycle_phase
    await s.flush()
    await s.delete(gone)
    await s.flush()
    audit = {"merged_contact_id": merge_id, "moved": moved, "reason": reason}
    queries.add_touchpoint(
        s,
        contact_id=keep_id,
        conversation_id=None,
        channel=CRM_CHANNEL,
        direction=Direction.INTERNAL,
        kind="contacts_merged",
        actor=actor,
        payload=audit,
    )
    await s.flush()
    return {"contact_id": keep_id, **audit}
