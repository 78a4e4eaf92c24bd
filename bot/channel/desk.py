"""The agent desk as an agent-facing channel sees it (Slack's cards, channels/slack/desk.py).

The core writes a desk row to the outbox inside the transaction that changes a conversation
(`AgentDesk.watch`); the channel renders what `card` returns and keeps the platform's
message ids of its cards through the core. Agents act through `act`; a refusal comes back as
`DeskRefused` with the conversation's state, for the channel to explain in its own words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# desk rows: thread key desk:{conversation id}:{kind} (bot/channel/messages.desk_key)
CARD, UPDATE, MIRROR = "card", "update", "mirror"
# what the engine or the desk did -> which desk row it makes
ROW_KINDS = {
    "escalated": CARD,
    "customer_message": MIRROR,
    "claimed": UPDATE,
    "resolved": UPDATE,
    "handed_back": UPDATE,
    "transferred": UPDATE,
    "left_queue": UPDATE,
}
# (customer name, customer's channel, what they said, number of attachments) -> row text
MirrorText = Callable[[str, str, str, int], str]


@dataclass(frozen=True)
class CardCase:
    reference: str | None
    category: str
    severity: str
    status: str


@dataclass(frozen=True)
class CardLine:
    """One message of the conversation; `actor` "customer", "bot" or "agent"."""

    actor: str
    text: str


@dataclass(frozen=True)
class CardData:
    """A conversation as an escalation card shows it, read now from the database."""

    conversation_id: int
    customer: str
    email: str | None
    channel: str
    value_segment: str | None
    priority: int
    cases: tuple[CardCase, ...]
    reason: str  # the Escalate reason's code ("callback")
    reason_label: str  # in the catalog's default language ("callback requested")
    recent: tuple[CardLine, ...]  # oldest first
    status: str  # bot, queued, agent, closed
    queued_at: datetime | None
    owner: str | None  # the assigned agent's name
    last_change: str | None  # the newest of claimed, resolved, handed_back, ... (its kind)
    last_by: str | None  # the name of the agent who made it


@dataclass(frozen=True)
class CardRef:
    id: int
    message_ref: str


@dataclass(frozen=True)
class AgentRef:
    id: int
    name: str
    active: bool


class DeskRefused(Exception):
    """The desk refused an agent's action. `conflict`: someone else has it, or it is not in
    a state for it; `status` and `owner` are the conversation's (None if it is gone)."""

    def __init__(
        self, message: str, *, conflict: bool, status: str | None, owner: str | None
    ) -> None:
        super().__init__(message)
        self.conflict = conflict
        self.status = status
        self.owner = owner


class AgentDesk(Protocol):
    def watch(self, channel: str, container: str, mirror: MirrorText) -> None:
        """Write desk rows for `channel`'s `container` (an agent channel) from now on."""
        ...

    async def card(self, conversation_id: int, n_messages: int) -> CardData | None: ...

    async def save_card(
        self, channel: str, container: str, conversation_id: int, message_ref: str
    ) -> CardRef: ...

    async def newest_card(
        self, channel: str, container: str, conversation_id: int
    ) -> CardRef | None: ...

    async def cards(
        self, channel: str, container: str, conversation_id: int, card_id: int | None = None
    ) -> list[CardRef]: ...

    async def card_conversation(self, channel: str, container: str, ref: str) -> int | None: ...

    async def add_card_message(self, card_id: int, message_ref: str) -> bool:
        """False if the card is gone (erased while the message was posted)."""
        ...

    async def card_messages(self, card_id: int) -> list[CardRef]: ...

    async def forget_card_message(self, message_id: int) -> None: ...

    async def forget_card(self, card_id: int) -> None: ...

    async def erased(self, conversation_id: int) -> bool:
        """The conversation's customer was erased (then no card may stay up)."""
        ...

    async def agent(self, channel: str, user: str) -> AgentRef | None:
        """The agent with this platform user id."""
        ...

    async def add_agent(self, channel: str, user: str, name: str, email: str | None) -> AgentRef:
        """The agent for this platform user, created (role agent) if there is none."""
        ...

    async def act(self, agent_id: int, conversation_id: int, action: str, text: str = "") -> None:
        """claim, resolve, hand_back, reply or note; raises DeskRefused."""
        ...

    async def assigned_to(self, conversation_id: int, agent_id: int) -> bool: ...
