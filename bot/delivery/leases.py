"""Who holds an inbox or outbox row, and for how long.

Every process has a boot id (random, new at each start). Claiming a row records it
(`leased_by`) with a short lease (`leased_until`, `lease_seconds` ahead). While the process
works on rows, a heartbeat renews its leases every `heartbeat_seconds`: a live worker keeps
its rows however long the work takes, a dead worker's lease runs out within `lease_seconds`.

At start (`reclaim`), rows held by a process that is gone are made due at once, so the
customers whose updates were in flight at a kill -9 do not wait for the lease:

* SQLite serves one process: every lease held under another boot id is a dead process's;
* PostgreSQL: each process holds a session advisory lock on its boot id, on a connection of
  its own; when the process dies, its connection and the lock go with it. A holder whose
  lock can be taken is gone.

Either way a lease renewed within the last 1.5 heartbeats is left alone: its holder is
beating, whatever the lock says (a live worker's lock connection may be reconnecting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from storage.models import InboxStatus, InboxUpdate, OutboxMessage, OutboxStatus, utcnow

log = logging.getLogger(__name__)
LOCK_CLASS = 0x4C454153  # "LEAS": the advisory locks' first key; the second is the boot id's
# (table, the status of a row being worked on)
HELD = ((InboxUpdate, InboxStatus.PROCESSING), (OutboxMessage, OutboxStatus.SENDING))


def lock_key(boot_id: str) -> int:
    """The boot id's advisory lock key (a signed 32-bit integer)."""
    return int(boot_id[:8], 16) - (1 << 31)


class Leases:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        db: AsyncEngine,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        boot_id: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.db = db
        self.postgres = db.dialect.name == "postgresql"
        self.ttl = timedelta(seconds=lease_seconds)
        self.heartbeat = heartbeat_seconds
        self.boot_id = boot_id or uuid.uuid4().hex
        self.working = 0  # batches being worked on: the heartbeat renews while > 0
        self.renewed_until: datetime | None = None  # the last renewal's lease end
        self._conn: AsyncConnection | None = None  # PostgreSQL: holds our advisory lock
        self._task: asyncio.Task[None] | None = None
        self._begun = False  # locked and reclaimed once

    def until(self) -> datetime:
        """The end of a lease taken now."""
        return utcnow() + self.ttl

    async def take(
        self,
        s: AsyncSession,
        model: type[InboxUpdate] | type[OutboxMessage],
        rows: Sequence[InboxUpdate] | Sequence[OutboxMessage],
        status: InboxStatus | OutboxStatus,
    ) -> None:
        """Lease claimed rows to this process: one UPDATE for the batch (not one per row
        from the unit of work), and the loaded rows told what they now are, not dirtied."""
        if not rows:
            return
        lease = self.until()
        await s.execute(
            update(model)
            .where(model.id.in_([r.id for r in rows]))
            .values(
                status=status,
                leased_until=lease,
                leased_by=self.boot_id,
                attempts=model.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        for r in rows:
            set_committed_value(r, "status", status)
            set_committed_value(r, "leased_until", lease)
            set_committed_value(r, "leased_by", self.boot_id)
            set_committed_value(r, "attempts", r.attempts + 1)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Around a batch of claimed rows: the heartbeat renews their leases meanwhile."""
        self.working += 1
        try:
            yield
        finally:
            self.working -= 1

    async def start(self) -> None:
        """Take our lock, make the rows of processes gone due, start the heartbeat. With
        the database away, the heartbeat does the first two once it is back."""
        try:
            await self._begin()
        except Exception as exc:
            log.warning("leases: database not reachable at start (%s)", type(exc).__name__)
        self._task = asyncio.create_task(self._beat(), name="lease-heartbeat")

    async def _begin(self) -> None:
        if self.postgres:
            await self._lock()
        await self.reclaim()
        self._begun = True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._release()

    async def _release(self) -> None:
        """Let go of our lock connection; closed for real (a pooled connection would keep
        the session lock, and we would look alive)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def reclaim(self) -> int:
        now = utcnow()
        quiet = now + self.ttl - timedelta(seconds=1.5 * self.heartbeat)  # not renewed since
        taken = 0
        async with self.sessions() as s, s.begin():
            for model, status in HELD:
                stale = and_(
                    model.status == status,
                    model.leased_by.is_not(None),
                    model.leased_by != self.boot_id,
                    model.leased_until > now,
                    model.leased_until < quiet,
                )
                holders = list(
                    (await s.execute(select(model.leased_by).where(stale).distinct())).scalars()
                )
                gone = await self._gone(s, [h for h in holders if h])
                if not gone:
                    continue
                result = await s.execute(
                    update(model)
                    .where(stale, model.leased_by.in_(gone))
                    .values(leased_until=now)
                    .execution_options(synchronize_session=False)
                )
                taken += result.rowcount  # type: ignore[attr-defined]
        if taken:
            log.warning("%d rows held by a process that is gone are due again at once", taken)
        return taken

    async def _gone(self, s: AsyncSession, holders: Sequence[str]) -> list[str]:
        if not self.postgres:
            return list(holders)  # one process per SQLite database: theirs are dead
        gone = []
        for holder in holders:
            # a transaction-level lock, let go at commit: free means nobody holds it
            free = await s.scalar(
                text("SELECT pg_try_advisory_xact_lock(:c, :k)"),
                {"c": LOCK_CLASS, "k": lock_key(holder)},
            )
            if free:
                gone.append(holder)
        return gone

    async def _lock(self) -> None:
        await self._release()
        conn = await self.db.connect()
        try:
            await conn.execute(
                text("SELECT pg_advisory_lock(:c, :k)"),
                {"c": LOCK_CLASS, "k": lock_key(self.boot_id)},
            )
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def renew(self) -> None:
        """Move the end of every lease we hold forward (the heartbeat's work)."""
        until = self.until()
        async with self.sessions() as s, s.begin():
            for model, status in HELD:
                held = and_(model.leased_by == self.boot_id, model.status == status)
                if self.postgres:
                    # the rows locked in id order, as the sent marks and the inbox
                    # group's done marks (storage/group_end.py) lock theirs:
                    # in the scan's order (an index by due time, the heap's) the renewal
                    # could hold a later row while a mark held an earlier one, and each
                    # waited for the other until PostgreSQL broke the deadlock (a second)
                    ids = select(model.id).where(held).order_by(model.id).with_for_update()
                    held = model.id.in_(ids.scalar_subquery())
                await s.execute(
                    update(model)
                    .where(held)
                    .values(leased_until=until)
                    .execution_options(synchronize_session=False)
                )
        self.renewed_until = until

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                if not self._begun:
                    await self._begin()
                if self.working:
                    await self.renew()
                if self.postgres:
                    await self._check_lock()
            except Exception as exc:  # the database is away: the next beat tries again
                log.warning("lease heartbeat failed: %s", f"{type(exc).__name__}: {exc}"[:300])

    async def _check_lock(self) -> None:
        try:
            assert self._conn is not None
            await self._conn.execute(text("SELECT 1"))
            await self._conn.commit()
        except Exception:
            await self._lock()  # the connection (and so the lock) was lost: take it again
