"""The web chat's limits, keyed on what a client cannot choose: its network address (the
proxy's X-Forwarded-For only when the proxy is trusted, `server.trusted_proxies`) and
the server as a whole. A fresh cookie costs nothing, so nothing here is per visitor.

* sockets: `max_sockets` open at once in this process, `max_sockets_per_address` of
  them from one address; the next is closed with 1013 (server full) or 4429;
* new conversations (each one can reach the agents' queue): a burst of
  `conversations_per_minute` for everybody and `conversations_per_address_hour` per
  address, refilling evenly; on PostgreSQL (`limits.shared`) all workers share them
  (the core's GCRA in `flood_marks`, through `ChannelHost.limiter`); the socket is closed
  with 1013 or 4429 and the page sends the message again after `retry_after` seconds;
* messages: `messages_per_address_second` per address (a burst of `limits.burst`); faster
  messages wait, in order, like the per-visitor flood limit.

IPv6 clients are counted per /64, the block one subscriber usually gets.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from dataclasses import dataclass

from bot.channel.host import Admission, ChannelHost
from channels.webchat.settings import WebChatSettings

SERVER_BUSY = 1013  # RFC 6455 "Try Again Later": the server as a whole is at its limit
TOO_MANY = 4429  # this client address is at its limit (like HTTP 429)
EVERYONE = "*"


@dataclass(frozen=True)
class Refusal:
    code: int
    reason: str
    retry_after: int = 0


def address_key(host: str | None) -> str:
    """The client address a limit counts against: the IPv4 address, or the IPv6 /64."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Limits:
    def __init__(self, host: ChannelHost, s: WebChatSettings) -> None:
        self.max_sockets = s.max_sockets
        self.max_per_address = s.max_sockets_per_address
        self.open: Counter[str] = Counter()
        self.total = 0
        self.everyone = host.limiter(s.conversations_per_minute / 60, s.conversations_per_minute)
        per_hour = s.conversations_per_address_hour
        self.per_address = host.limiter(per_hour / 3600, per_hour)
        # a socket belongs to this process: its messages wait in memory (limits.burst)
        self.messages: Admission = host.limiter(s.messages_per_address_second, shared=False)

    def open_socket(self, address: str) -> Refusal | None:
        """Count a new socket from `address`, or say why it is refused."""
        if self.total >= self.max_sockets:
            return Refusal(SERVER_BUSY, "too many open chats; try again later", 30)
        if self.open[address] >= self.max_per_address:
            return Refusal(TOO_MANY, "too many open chats from this address", 30)
        self.open[address] += 1
        self.total += 1
        return None

    def close_socket(self, address: str) -> None:
        self.total -= 1
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]

    async def new_conversation(self, address: str) -> Refusal | None:
        """Count a new conversation from `address`, or say why it is refused."""
        wait = await self.per_address.admit(("webchat-new", address))
        if wait > 0:
            return Refusal(
                TOO_MANY, "too many new conversations from this address", math.ceil(wait)
            )
        wait = await self.everyone.admit(("webchat-new", EVERYONE))
        if wait > 0:
            return Refusal(SERVER_BUSY, "too many new conversations; try again", math.ceil(wait))
        return None
