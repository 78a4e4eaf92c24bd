"""Reading the dead letters: messages whose flow raised and raw updates the inbox gave up
on (storage.models.DeadLetter). Listed for supervisors in the API and in `cicbot dead-letters`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import DeadLetter


def _summary(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id,
        "source": d.source,
        "channel": d.channel,
        "reference": d.reference,
        "contact_id": d.contact_id,
        "conversation_id": d.conversation_id,
        "error": d.error,
        "created_at": d.created_at.isoformat(),
    }


async def recent(
    s: AsyncSession, *, limit: int = 50, source: str | None = None
) -> list[dict[str, Any]]:
    """The newest first, without the traceback and the kept message."""
    q = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if source:
        q = q.where(DeadLetter.source == source)
    return [_summary(d) for d in (await s.execute(q)).scalars()]


async def one(s: AsyncSession, letter_id: int) -> dict[str, Any] | None:
    """One dead letter with its traceback and the message it kept."""
    d = await s.get(DeadLetter, letter_id)
    return None if d is None else {**_summary(d), "detail": d.detail, "payload": d.payload}
