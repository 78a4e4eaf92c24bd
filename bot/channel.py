"""The contract between the core and a channel adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bot.messages import OutboundMessage

if TYPE_CHECKING:
    from fastapi import APIRouter

    from bot.runtime import Runtime


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

    An adapter may add HTTP routes (`router`), run background work between `start`
    and `stop`, and must implement `send`.
    """

    name: str = ""
    # the request bodies its routes accept; None: the app's (`server.max_body_bytes`)
    max_body_bytes: int | None = None

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @property
    def router(self) -> APIRouter | None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, message: OutboundMessage) -> SendResult:
        raise NotImplementedError
