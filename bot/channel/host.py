"""`ChannelHost`: everything a channel adapter may ask of the core, and nothing more.

An adapter is made with the host (`create(host)`, found through the `cicbot.channels`
entry point) instead of the runtime: it translates between its platform and the core's
messages, and the core does all the writing, each message in its own transaction.
bot/runtime.py implements the host.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel

from bot.channel.desk import AgentDesk
from bot.channel.inbound import Parser
from bot.channel.messages import Choice, InboundMessage
from bot.channel.records import Records

if TYPE_CHECKING:
    from fastapi import APIRouter

S = TypeVar("S", bound=BaseModel)


class Admission(Protocol):
    async def admit(self, key: tuple[str, str]) -> float:
        """0 if a message of `key` may be handled now (and counts it); otherwise the
        seconds until it may, counting nothing."""
        ...


async def wait_turn(limiter: Admission, key: tuple[str, str]) -> None:
    """Until a message of `key` may be handled (sleeps in the caller's task only)."""
    seconds = await limiter.admit(key)
    while seconds > 0:  # a token per wake-up; others of this key may race for it
        await asyncio.sleep(seconds)
        seconds = await limiter.admit(key)


@dataclass(frozen=True)
class Said:
    """One message of a customer's history on a channel, as the channel shows it again."""

    direction: str  # "in" (the customer) or "out" (bot or agent)
    outbox_id: int | None
    text: str
    choices: tuple[Choice, ...]
    at: datetime
    sender: str | None = None  # an agent's name; None: the bot or the customer


class ChannelHost(Protocol):
    # ---- its own settings ------------------------------------------------------------
    def settings_of(self, channel: str, model: type[S]) -> S:
        """The channel's settings section (channels/<name>/settings.py's model)."""
        ...

    @property
    def company_name(self) -> str: ...

    # ---- inbound: persisted first, handled by the inbox worker in order ---------------
    def register_parser(self, channel: str, parser: Parser) -> None:
        """The parser of the channel's inbox rows; the inbox paces a flooding sender."""
        ...

    async def accept(
        self, channel: str, dedupe_key: str, partition_key: str, payload: dict[str, Any]
    ) -> bool:
        """Persist one raw update (one INSERT, deduped on `dedupe_key`); False if it was
        there already. Raises `Unavailable` when the database is: do not acknowledge."""
        ...

    async def handle_now(self, message: InboundMessage) -> bool:
        """The terminal chat only (one local user, stdin): handle at once, past the inbox;
        True if it was a duplicate."""
        ...

    async def deliver_pending(self, *, recipient: str | None = None) -> None:
        """Send what the outbox holds now (the terminal chat runs without the dispatcher);
        with `recipient`, only that recipient's messages."""
        ...

    def limiter(
        self, per_second: float, burst: int | None = None, *, shared: bool = True
    ) -> Admission:
        """A rate limit of the channel's own (per address, per server); shared by all
        workers on PostgreSQL when `shared` and `limits.shared`. `burst`: `limits.burst`."""
        ...

    def rate_limited(self, channel: str) -> None:
        """Count that the platform dropped our events (a metric)."""
        ...

    # ---- HTTP --------------------------------------------------------------------------
    def add_routes(self, router: APIRouter, *, max_body_bytes: int | None = None) -> None:
        """Serve the channel's routes; `max_body_bytes` None: `server.max_body_bytes`."""
        ...

    # ---- what the channel must show ----------------------------------------------------
    async def conversation_open(
        self, channel: str, thread_key: str, *, pending: bool = False
    ) -> bool:
        """A conversation of the thread is not closed (`pending`: or its message waits in
        the inbox, about to open one)."""
        ...

    async def history(self, channel: str, sender_id: str, limit: int) -> list[Said]:
        """What was said in the sender's own conversations on this channel, oldest first."""
        ...

    async def contact_locale(self, channel: str, sender_id: str) -> str | None:
        """The language the sender's contact chose (None: unknown sender, or none chosen)."""
        ...

    async def withdraw_consent(self, contact_id: int, channel: str, via: str) -> bool:
        """Marketing consent withdrawn (an unsubscribe link); False if no such contact."""
        ...

    @property
    def records(self) -> Records:
        """Platform message ids and read positions the channel needs kept."""
        ...

    @property
    def agent_desk(self) -> AgentDesk:
        """The desk for an agent-facing channel."""
        ...
