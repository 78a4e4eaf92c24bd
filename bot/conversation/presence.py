"""Who is there for the customer (issue 20, findings 2 and 4): whether the team is on duty
(business hours), whether agents are signed in right now, and where a waiting customer
stands in the queue. The web chat's header shows the first two instead of the socket's
state; a customer who asks "Hallo? Ist da jemand?" while waiting is told the third."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flows.hours import BusinessHours
from storage.models import Agent, Conversation, ConversationStatus

# the console refreshes every 10 s and every request marks the agent as seen: an agent
# not seen for this long has closed the console
ONLINE_WINDOW = timedelta(minutes=2)


@dataclass(frozen=True)
class Availability:
    on_duty: bool  # within business hours (always, without business hours)
    agents_online: int  # agents with the console open
    next_open: datetime | None  # when the team is next on duty, if it is not now

    @property
    def agents_available(self) -> bool:
        return self.on_duty and self.agents_online > 0


async def availability(s: AsyncSession, hours: BusinessHours | None, now: datetime) -> Availability:
    on_duty = hours is None or hours.is_open(now)
    online = await s.scalar(
        select(func.count())
        .select_from(Agent)
        .where(Agent.active.is_(True), Agent.last_seen_at >= now - ONLINE_WINDOW)
    )
    opening = None if on_duty or hours is None else hours.next_open(now)
    return Availability(on_duty, int(online or 0), opening)


async def queue_position(s: AsyncSession, conv: Conversation) -> int | None:
    """1 for the next to be served (the desk's order: priority, then the longest wait);
    None when the conversation is not waiting."""
    if conv.status != ConversationStatus.QUEUED or conv.queued_at is None:
        return None
    ahead = await s.scalar(
        select(func.count())
        .select_from(Conversation)
        .where(
            Conversation.status == ConversationStatus.QUEUED,
            Conversation.id != conv.id,
            or_(
                Conversation.priority > conv.priority,
                and_(
                    Conversation.priority == conv.priority,
                    or_(
                        Conversation.queued_at < conv.queued_at,
                        and_(Conversation.queued_at == conv.queued_at, Conversation.id < conv.id),
                    ),
                ),
            ),
        )
    )
    return int(ahead or 0) + 1
