"""What a channel may ask the core to remember for it about the platform (email today):
which platform message ids belong to which thread, and how far it read a mailbox.

The channel decides what the ids mean (threading rules are the channel's); the core keeps
the rows (tables `email_messages`, `email_mailboxes`) in its database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class MessageRef:
    """A platform message id of a thread; `direction` is "in" or "out"."""

    message_id: str
    thread_key: str
    address: str
    direction: str
    subject: str | None = None


class Records(Protocol):
    async def record(
        self, message_id: str, thread_key: str, address: str, direction: str, subject: str | None
    ) -> None:
        """Remember a message id (the first record of an id wins)."""
        ...

    async def find(self, ids: list[str], address: str | None = None) -> MessageRef | None:
        """The first of `ids` (in the order given) we know, of `address` if given."""
        ...

    async def sent(self, message_id: str) -> MessageRef | None:
        """Our own outgoing message with this id, if we sent one."""
        ...

    async def of_thread(self, thread_key: str) -> list[MessageRef]:
        """The thread's message ids, oldest first."""
        ...

    async def case_thread(self, channel: str, reference: str, sender: str) -> str | None:
        """The thread key of the conversation of the case `reference` on `channel`, if the
        case is the sender's own (a stranger quoting a reference gets none)."""
        ...

    async def case_reference(self, conversation_id: int) -> str | None:
        """The newest case reference of a conversation."""
        ...

    async def position(self, source: str) -> tuple[int, int] | None:
        """How far `source` (a mailbox) was read: (epoch, position), or None."""
        ...

    async def save_position(self, source: str, epoch: int, position: int) -> None: ...
