"""The contract between the core and a channel adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TextIO, runtime_checkable

from bot.channel.host import ChannelHost
from bot.channel.messages import OutboundMessage


@dataclass(frozen=True)
class SendResult:
    """What the platform said about a sent message."""

    platform_message_id: str | None = None


class SendError(Exception):
    """Base of the errors an adapter raises from `send`."""


class TransientSendError(SendError):
    """Try again later: 429, 5xx, timeouts. `retry_after` in seconds if the platform said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentSendError(SendError):
    """Never retry: blocked bot, deleted account, bad address. The identity becomes unreachable."""


@runtime_checkable
class Channel(Protocol):
    """An outbound side of a channel, used by the dispatcher."""

    name: str

    async def send(self, message: OutboundMessage) -> SendResult:
        """Deliver one message, or raise TransientSendError / PermanentSendError."""
        ...


class ChannelAdapter:
    """Base of the channel modules in `channels/`, found through the `cicbot.channels`
    entry points so the core never imports a platform library.

    An adapter gets the `ChannelHost` (bot/channel/host.py), not the runtime: it may add
    HTTP routes (`host.add_routes`), run background work between `start` and `stop`, and
    must implement `send`.
    """

    name: str = ""

    def __init__(self, host: ChannelHost) -> None:
        self.host = host

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, message: OutboundMessage) -> SendResult:
        raise NotImplementedError


@runtime_checkable
class Terminal(Protocol):
    """A channel that is itself the user interface (the terminal chat, `cicbot chat`)."""

    async def chat(self, user: str, locale: str | None, stdin: TextIO) -> None: ...
