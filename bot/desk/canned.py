"""Canned replies (issue 20, finding 6): prepared answers an agent inserts by typing
`/short_code` in the reply box. Admins keep them; every agent reads them. The text is
inserted into the box for the agent to edit, never sent on its own."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import CannedReply

SHORT_CODE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class CannedError(ValueError):
    pass


def check_code(short_code: str) -> str:
    code = short_code.strip().lstrip("/").lower()
    if not SHORT_CODE.match(code):
        raise CannedError(
            "a short code is 1-64 lower-case letters, digits, - or _ (e.g. 'delivery-delay')"
        )
    return code


async def all_replies(s: AsyncSession) -> Sequence[CannedReply]:
    return (await s.execute(select(CannedReply).order_by(CannedReply.short_code))).scalars().all()


async def by_code(s: AsyncSession, short_code: str) -> CannedReply | None:
    q = select(CannedReply).where(CannedReply.short_code == short_code)
    return (await s.execute(q)).scalar_one_or_none()


async def save(s: AsyncSession, short_code: str, text: str, by: int | None) -> CannedReply:
    """Create the reply, or replace the text of the one with this code."""
    code = check_code(short_code)
    if not text.strip():
        raise CannedError("the text is empty")
    row = await by_code(s, code)
    if row is None:
        row = CannedReply(short_code=code, text=text.strip(), created_by=by)
        s.add(row)
    else:
        row.text = text.strip()
    await s.flush()
    return row


async def remove(s: AsyncSession, short_code: str) -> bool:
    row = await by_code(s, short_code.strip().lstrip("/").lower())
    if row is None:
        return False
    await s.delete(row)
    return True
