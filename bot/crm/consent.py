"""Consent changes a channel reports (an unsubscribe link or mail): written by the core,
the consent row and its touchpoint in one transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage import queries
from storage.models import Contact, Direction

MARKETING = "marketing"


async def withdraw(
    sessions: async_sessionmaker[AsyncSession], contact_id: int, channel: str, via: str
) -> bool:
    """Marketing consent withdrawn and a touchpoint; False if there is no such contact."""
    async with sessions() as s, s.begin():
        if await s.get(Contact, contact_id) is None:
            return False
        await queries.add_consent(
            s,
            contact_id=contact_id,
            purpose=MARKETING,
            channel=channel,
            granted=False,
            source=f"{channel}_list_unsubscribe",
            text_shown=None,
        )
        queries.add_touchpoint(
            s,
            contact_id=contact_id,
            conversation_id=None,
            channel=channel,
            direction=Direction.IN,
            kind="consent",
            actor="customer",
            text=None,
            payload={"purpose": MARKETING, "granted": False, "via": via},
            platform_message_id=None,
        )
    return True
