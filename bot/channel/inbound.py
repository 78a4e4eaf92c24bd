"""What a channel's parser hands the inbox worker, and the errors of the inbound path.

A webhook (or poller) persists the raw update with `ChannelHost.accept` and acknowledges it;
the inbox worker later calls the parser the channel registered (`register_parser`) on the
row's payload and hands what it returns to the core, in order, in the row's turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.channel.messages import ChannelEvent, InboundMessage

# Work a parser hands back instead of a message, run in the worker in order with the rest:
# an agent's action in Slack, or a platform look-up before a message can be made. What it
# returns (messages, events) the worker hands to the core like a parser's; its failure is
# retried like the engine's (and parked as dead after max_attempts).
Items = Sequence[InboundMessage | ChannelEvent]
Deferred = Callable[[], Awaitable[Items | None]]
Parsed = Sequence[InboundMessage | ChannelEvent | Deferred]


@dataclass(frozen=True)
class Tolerated:
    """Items a parser read past its library (whose models rejected a valid update): handled
    as usual, the row done with `note` kept in its error column for an operator."""

    items: Parsed
    note: str


Result = Parsed | Tolerated
Parser = Callable[[dict[str, Any]], Result | Awaitable[Result]]


class Unavailable(Exception):
    """The database cannot be reached: the update is not persisted, so the webhook must
    not acknowledge it (503, the platform delivers it again)."""


class ParseError(Exception):
    """The update cannot be understood; it is kept as dead, not retried. `salvaged` is
    what could still be read from it (the customer's text from the raw JSON): handled all
    the same, so the customer is answered."""

    def __init__(self, reason: str, salvaged: Parsed = ()) -> None:
        super().__init__(reason)
        self.salvaged = salvaged
