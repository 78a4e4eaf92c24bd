"""A turn: what one transaction of the engine works on, handed to the action runner.

Its own module so that the engine, the action runner and identity linking all import it
and none of them imports another for it (no cycle, not even through type hints).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from flows.model import Context, Reply
from storage import queries
from storage.models import Contact, Conversation, Direction, Identity


@dataclass
class Turn:
    """What one transaction works on; handed to the action runner."""

    session: AsyncSession
    contact: Contact
    identity: Identity
    conversation: Conversation
    ctx: Context
    replies: list[Reply] = field(default_factory=list)  # before the flow's replies
    after: list[Reply] = field(default_factory=list)  # after them
    # inside a marketing campaign's flow: every reply carries its mark (email: the
    # List-Unsubscribe header); the stop notice goes with the opening message only
    campaign: str | None = None
    stop_notice: str | None = None

    def note(self, kind: str, **payload: object) -> None:
        """An internal touchpoint in the conversation (an action the bot took)."""
        queries.add_touchpoint(
            self.session,
            contact_id=self.contact.id,
            conversation_id=self.conversation.id,
            channel=self.conversation.channel,
            direction=Direction.INTERNAL,
            kind=kind,
            actor="bot",
            payload=dict(payload),
        )
