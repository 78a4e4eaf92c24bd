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

On SQLite (one process) the buckets live in memory; keys are bounded (least recently
used forgotten first; a forgotten key starts with a full bucket again, as an idle one
would have). On PostgreSQL, where several workers share the inbox, the inbox asks
`SharedFloodControl` instead: the same limit for all workers, kept in `flood_marks` as
GCRA (one "theoretical arrival time" per sender, equivalent to the token bucket) and
updated in one statement on the database's clock (`limits.shared`). A row born claimed
(bot/delivery/inbox.py) is admitted in the accept's own statement (`GCRA_UPSERT`): over the
rate, it is born pending and its claim asks `SharedFloodControl` as any other row's does.
(A born row released to the claim because its commit was slow is asked again there:
counted twice, it may wait one interval more; rare, and nothing is lost.) The web chat's
socket belongs to one process, so it keeps the in-memory buckets.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from datetime import timedelta

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel.host import Admission
from bot.delivery.group import GroupCommit
from storage.db import OneStatement
from storage.models import InboxStatus, InboxUpdate, utcnow

__all__ = [
    "Admission",
    "FloodControl",
    "SharedFloodControl",
    "defer",
    "digest",
    "limiter",
    "row_key",
]

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

    async def admit(self, key: tuple[str, str]) -> float:
        return self.delay(key)

    def __len__(self) -> int:
        return len(self._buckets)


# GCRA in one statement for many senders: a sender's mark (tat) moves on by one interval
# per message let through; a message is let through while the mark is at most `tolerance`
# ahead of now. A new sender is inserted; a sender over the rate is not updated (the
# UPSERT's WHERE), and its wait is read from the row as it was (a data-modifying CTE's
# snapshot). The keys are distinct (an INSERT ... ON CONFLICT touches a row once) and
# sorted, so two workers' statements lock marks in one order. `GCRA_UPSERT` is the step
# the inbox's accept shares (bot/delivery/inbox.py: a row born claimed is admitted there)
CLOCK = "clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now)"
GCRA_UPSERT = """
    INSERT INTO flood_marks (key, tat)
    SELECT {key}, clock.now + :interval FROM {source}, clock {where} ORDER BY {key}
    ON CONFLICT (key) DO UPDATE
        SET tat = greatest(flood_marks.tat, excluded.tat - :interval) + :interval
        WHERE greatest(flood_marks.tat, excluded.tat - :interval)
              - (excluded.tat - :interval) <= :tolerance
    RETURNING key
"""
_ADMIT = text(  # built from constants only
    f"""
    WITH {CLOCK},
    asked AS (SELECT k FROM unnest(CAST(:keys AS varchar[])) AS k),
    taken AS ({GCRA_UPSERT.format(key="asked.k", source="asked", where="")})
    SELECT key, 0.0::float8 AS wait FROM taken
    UNION ALL
    SELECT m.key, greatest(m.tat - clock.now - :tolerance, 0.001)
    FROM flood_marks m, clock
    WHERE m.key IN (SELECT k FROM asked) AND m.key NOT IN (SELECT key FROM taken)
    """  # noqa: S608
)
_FORGET = text("DELETE FROM flood_marks WHERE tat < extract(epoch FROM clock_timestamp()) - 3600")
FORGET_EVERY = 600.0  # seconds between purges of the senders idle for an hour


class SharedFloodControl:
    """The flood limit of all workers on one PostgreSQL database (see the module's text)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.sessions = sessions
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self._purge_at = time.monotonic()  # the first admission purges
        self._one = OneStatement(sessions)
        self._group = GroupCommit("flood", self._admit_many, max_batch=64)

    async def admit(self, key: tuple[str, str]) -> float:
        return await self._group.submit(digest(key))

    async def tidy(self) -> None:
        """Forget the senders idle for an hour, if it is time (the admissions made in the
        inbox's accept do not pass `_admit_many`, which does it too)."""
        if self._purge_due():
            async with self._one() as s:
                await s.execute(_FORGET)

    def _purge_due(self) -> bool:
        now = time.monotonic()
        if now < self._purge_at:
            return False
        self._purge_at = now + FORGET_EVERY
        return True

    async def _admit_many(self, digests: list[str]) -> list[float]:
        """The admissions asked for while the last statement ran, in one statement (group
        commit; PostgreSQL only, outside a transaction: one round trip). A sender asked for
        twice in one batch (never from the inbox, which handles a chat's rows one at a
        time) goes again in a statement of its own, after the first."""
        purge = self._purge_due()
        waits: list[float] = [self.interval] * len(digests)
        left = list(range(len(digests)))
        async with self._one() as s:
            while left:
                first: dict[str, int] = {}
                for i in left:
                    first.setdefault(digests[i], i)
                left = [i for i in left if first[digests[i]] != i]
                params = {
                    "keys": sorted(first),
                    "interval": self.interval,
                    "tolerance": self.tolerance,
                }
                got = {key: wait for key, wait in await s.execute(_ADMIT, params)}
                # no row: another worker inserted this sender's mark after our statement
                # began and the mark was full (its snapshot cannot see it): ask again later
                for key, i in first.items():
                    waits[i] = float(got[key]) if key in got else self.interval
            if purge:
                await s.execute(_FORGET)
        return waits


def limiter(
    sessions: async_sessionmaker[AsyncSession],
    rate: float,
    burst: int,
    *,
    shared: bool,
    max_keys: int = 10_000,
) -> Admission:
    """The shared limit (all workers, PostgreSQL) when `shared`, else one in memory."""
    if shared:
        return SharedFloodControl(sessions, rate, burst)
    return FloodControl(rate, burst, max_keys=max_keys)


def digest(key: tuple[str, str]) -> str:
    """A sender's key in `flood_marks`: a hash, not the chat id."""
    return hashlib.sha256("\x1f".join(key).encode()).hexdigest()


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
                leased_by=None,  # waiting, not being worked on: no heartbeat renews it
                attempts=InboxUpdate.attempts - 1,
            )
        )
