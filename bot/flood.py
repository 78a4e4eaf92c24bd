"""Per-identity flood control: a token bucket per sender, in memory.

A customer may send `burst` messages at once and then `rate` per second; what comes
faster is not refused, only handled later, in order, exactly once:

* inbox rows (webhooks, Telegram polling, email): `Inbox` asks `delay()` before it
  processes a row; a row that must wait is put back with a not-before time in its lease
  (`defer`), so the worker's round is not held up and the flooder's partition waits behind
  its head row while every other partition goes on;
* in-process paths (the web chat's socket): `wait()` sleeps in that sender's own task.
  The terminal chat needs none: it reads a line only after the last one was answered.

"Identity" is the inbox partition (a private chat, a Slack thread, an email sender): the
key by which a customer's messages are already ordered.

No "please slow down" note is sent: nothing is lost or refused, replies just come at a
steady pace, and a note would be one more reply queued behind the flood, read as an
answer to whichever message it follows (and noise to a script).

The buckets live in one process: with several workers a flooder may get that many times
the rate. Keys are bounded (least recently used forgotten first; a forgotten key starts
with a full bucket again, as an idle one would have).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from storage.models import InboxStatus, InboxUpdate, utcnow

if TYPE_CHECKING:
    from bot.runtime import Runtime

# a partition of updates without a sender (garbage, rejected): not one identity
NO_IDENTITY = "-"


class FloodControl:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst and max_keys >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def delay(self, key: Hashable) -> float:
        """0 if a message of `key` may be handled now (and counts it); otherwise the seconds
        until it may, counting nothing: ask again then."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1 if wait == 0 else tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    async def wait(self, key: Hashable) -> None:
        """Until a message of `key` may be handled (sleeps in the caller's task only)."""
        seconds = self.delay(key)
        while seconds > 0:  # a token per wake-up; others of this key may race for it
            await asyncio.sleep(seconds)
            seconds = self.delay(key)

    def __len__(self) -> int:
        return len(self._buckets)


def attach(runtime: Runtime) -> FloodControl:
    """The runtime's flood control, made from `settings.limits` on first use and given to its
    inbox; every channel that takes customer input asks for it when it is created."""
    if runtime.inbox.flood is None:
        limits = runtime.settings.limits
        runtime.inbox.flood = FloodControl(
            limits.messages_per_second, limits.burst, max_keys=limits.max_identities
        )
    return runtime.inbox.flood


def row_key(channel: str, partition_key: str) -> tuple[str, str] | None:
    """The identity an inbox row counts against; None for rows without one."""
    return None if partition_key == NO_IDENTITY else (channel, partition_key)


async def defer(
    sessions: async_sessionmaker[AsyncSession], row: InboxUpdate, seconds: float
) -> None:
    """Put a claimed row back, not to be claimed again for `seconds`: it keeps its lease
    (so the partition's later rows wait behind it) and the attempt is not counted."""
    async with sessions() as s, s.begin():
        await s.execute(
            update(InboxUpdate)
            .where(InboxUpdate.id == row.id, InboxUpdate.status == InboxStatus.PROCESSING)
            .values(
                leased_until=utcnow() + timedelta(seconds=seconds),
                attempts=InboxUpdate.attempts - 1,
            )
        )
