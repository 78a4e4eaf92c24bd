"""Drains the outbox through the channel adapters.

A row is claimed with a lease (status `sending`, `leased_until`), sent, then marked
sent / retried / failed in its own transaction. Per recipient only the oldest
unfinished row is eligible, so replies arrive in order and a message waiting on
a 429 holds back the ones behind it. PostgreSQL claims with FOR UPDATE SKIP LOCKED
so several workers share the work; a lease that expires (the process died while
sending; bot/delivery/leases.py renews a live worker's) makes the row eligible again, the
documented at-least-once window.

Leased at birth: the replies a turn of the inbox's group commit writes are born leased to
this dispatcher (`birth`, storage/queries.OutboxBirth) when their recipient has no unsent
row already, and handed over in memory after the commit (`hand_over`): no claim
transaction and no wake-up for them. Each recipient's rows go out in order in one task;
their sent marks share transactions (a group commit). A row that must be retried goes
back to pending as any other, with the rows born behind it: the claim takes them then. A
process killed meanwhile leaves rows leased like claimed ones: taken again after the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel import Channel, PermanentSendError, SendResult, TransientSendError
from bot.channel.messages import OutboundMessage
from bot.delivery.group import GroupCommit
from bot.delivery.leases import Leases
from bot.delivery.settings import IN_FLIGHT, DispatcherSettings
from bot.delivery.worker import RoundWorker
from storage import queries
from storage.db import OneStatement, inline
from storage.models import Conversation, Direction, OutboxMessage, OutboxStatus, utcnow
from storage.queries import MASKED_TEXT, OutboxBirth, masked

log = logging.getLogger(__name__)
UNFINISHED = (OutboxStatus.PENDING, OutboxStatus.SENDING)


class Dispatcher(RoundWorker):
    name = "outbox-dispatcher"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channels: Mapping[str, Channel],
        settings: DispatcherSettings,
        leases: Leases,
        *,
        skip_locked: bool = False,
    ) -> None:
        super().__init__(settings.poll_interval_seconds)
        self.leases = leases
        self.sessions = sessions
        self.channels = channels
        self.settings = settings
        self.skip_locked = skip_locked
        # rows claimed at once: a few rounds of sends in flight
        self.claim_size = settings.concurrency * 4
        # rows born leased to it at once (`birth`): the replies of as many turns as the
        # inbox has in flight, so that under load they go out from memory rather than
        # wait in the table for a claim (claim_size was the cap: 64)
        self.born_size = max(self.claim_size, IN_FLIGHT)
        # told of each attempt's result after it is committed: sent, retry, failed (metrics)
        self.observe: Callable[[OutboxMessage, str], None] = lambda row, result: None
        # rows leased at birth (`birth`, `hand_over`): their tasks, how many rows are in
        # flight, and their sent marks in shared transactions
        self._born: set[asyncio.Task[None]] = set()
        self._born_rows = 0
        self._born_ids: set[int] = set()  # held in memory: our own claim must not take them
        self._marks = GroupCommit("outbox-sent", self._sent_marks)
        self._one = OneStatement(sessions)
        self._quiet = 0  # notify() ignored (the rows committed were all handed over)
        self._missed = False  # notified while born rows were in flight

    def notify(self) -> None:
        if self._quiet:
            return
        if self._born:
            self._missed = True  # rows may wait behind a born one: a claim when it is sent
        super().notify()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """Around a commit's after-work whose outbox rows were all handed over: no claim."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    def birth(self) -> OutboxBirth | None:
        """What a transaction's new outbox rows may be born as (leased to this running
        dispatcher, as many as it has room for); None when it is not running."""
        if self._task is None or self._stopping or not self.channels:
            return None
        slots = self.born_size - self._born_rows
        if slots <= 0:
            return None
        return OutboxBirth(owner=self.leases.boot_id, until=self.leases.until(), slots=slots)

    def hand_over(self, born: list[dict[str, object]]) -> None:
        """After the commit that wrote them: send the rows born leased to us, in order per
        recipient. A channel gone meanwhile (never in practice) leaves them to the lease."""
        chains: dict[tuple[object, object], list[OutboxMessage]] = {}
        # a lease that ran out (or nearly) during a slow commit: the rows are the claim's
        # (another worker's claim may take them now: sending them here too would double),
        # released to it: left leased to us, the heartbeat would renew them as long as
        # anything else is being sent, and no claim would take them till then
        fresh = utcnow() + self.leases.ttl / 2
        late: list[OutboxMessage] = []
        for values in born:
            if values["channel"] not in self.channels:
                continue
            row = OutboxMessage(**values)
            if values["leased_until"] < fresh:  # type: ignore[operator]
                late.append(row)
                continue
            chains.setdefault((row.channel, row.recipient_id), []).append(row)
        if late:
            task = asyncio.create_task(self._release(late), name="outbox-born-late")
            self._born.add(task)
            task.add_done_callback(self._born_done)
        for chain in chains.values():
            self._born_rows += len(chain)
            self._born_ids.update(r.id for r in chain)
            task = asyncio.create_task(self._send_born(chain), name=f"outbox-born-{chain[0].id}")
            self._born.add(task)
            task.add_done_callback(self._born_done)

    def _born_done(self, task: asyncio.Task[None]) -> None:
        self._born.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("outbox born row task failed", exc_info=task.exception())
        if self._missed:
            if not self._born:
                self._missed = False
            super().notify()

    async def _send_born(self, chain: list[OutboxMessage]) -> None:
        marks: list[asyncio.Future[None]] = []
        try:
            with self.leases.held():
                for i, row in enumerate(chain):
                    sent = await self._deliver(row)
                    if sent is None:  # retried or failed: the rest wait for the claim
                        await self._release(chain[i + 1 :])
                        break
                    # the next row goes out without waiting for this one's mark (its
                    # lease covers the window, as in a claimed batch)
                    marks.append(asyncio.ensure_future(self._marks.submit([sent])))
                await asyncio.gather(*marks)
        finally:
            self._born_rows -= len(chain)
            self._born_ids.difference_update(r.id for r in chain)

    async def _sent_marks(
        self, batches: list[list[tuple[OutboxMessage, SendResult]]]
    ) -> list[None]:
        await self._sent_while_leased([d for batch in batches for d in batch])
        return [None] * len(batches)

    async def _release(self, rows: list[OutboxMessage]) -> None:
        """Rows born behind one that was retried, or born too late to send here (see
        `hand_over`): pending again, the attempt not counted."""
        if not rows:
            return
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id.in_([r.id for r in rows]),
                    OutboxMessage.status == OutboxStatus.SENDING,
                    OutboxMessage.leased_by == self.leases.boot_id,
                )
                .values(
                    status=OutboxStatus.PENDING,
                    leased_until=None,
                    leased_by=None,
                    attempts=OutboxMessage.attempts - 1,
                )
            )
        self.notify()

    async def stop(self) -> None:
        await super().stop()
        if self._born:  # rows handed over are sent and marked (a send is bounded)
            await asyncio.gather(*list(self._born), return_exceptions=True)
        await self._marks.stop()

    async def round(self) -> int:
        return await self.drain_once()

    async def drain_once(self, recipient: str | None = None) -> int:
        """Claim one batch and send it; returns how many rows were attempted. With
        `recipient`, only that recipient's messages (the terminal chat of one user)."""
        with self.leases.held():
            return await self._drain_once(recipient)

    async def _drain_once(self, recipient: str | None = None) -> int:
        rows = await self._claim(recipient)
        if not rows:
            return 0
        sem = asyncio.Semaphore(self.settings.concurrency)
        done: list[tuple[OutboxMessage, SendResult]] = []
        flushing = asyncio.Lock()

        async def flush() -> None:
            # sends finishing while a flush writes are recorded together by the next one:
            # few transactions, and no reply waits for a slower one of its batch
            async with flushing:
                batch = done[:]
                del done[:]
                await self._sent_while_leased(batch)

        async def one(row: OutboxMessage) -> None:
            async with sem:
                sent = await self._deliver(row)
            if sent is not None:
                done.append(sent)
                await flush()

        # the next claim is made while the last rows of this one are still sending, so
        # the channel's rate is kept without a gap between claims; a recipient whose row
        # is in flight is not claimed again (its row is leased: not due). A notify (a
        # turn committed replies) claims at once too: a reply does not wait for the
        # slowest send of the batch before it
        attempted = len(rows)
        running = {asyncio.create_task(one(r)) for r in rows}
        finished: list[asyncio.Task[None]] = []
        more = len(rows) == self.claim_size
        failed = False
        woken: asyncio.Task[None] | None = None
        wanted = False  # notified, and no claim made since
        claim_failed: Exception | None = None
        try:
            while running:
                if woken is None and not (wanted or self._stopping or failed):
                    woken = asyncio.create_task(self._woken())
                waited = running | {woken} if woken is not None else running
                ended, _ = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
                notified = woken is not None and woken in ended
                if notified:
                    ended.discard(woken)
                    woken, wanted = None, True
                running -= ended
                finished.extend(ended)
                if any(not t.cancelled() and t.exception() for t in ended):
                    more, failed = False, True  # as a failed gather would: start no more
                room = len(running) <= self.settings.concurrency
                if ((more and room) or (wanted and len(running) < self.claim_size)) and not (
                    self._stopping or failed
                ):
                    wanted = False
                    self._wake.clear()  # before the claim: a notify during it is not lost
                    try:
                        rows = await self._claim(recipient)
                    except Exception as exc:
                        # the rows in flight finish first (a sent one must get its sent
                        # mark, or its lease runs out and it goes out twice); then the
                        # round fails as before
                        claim_failed, more, failed = exc, False, True
                        continue
                    more = len(rows) == self.claim_size
                    attempted += len(rows)
                    running |= {asyncio.create_task(one(r)) for r in rows}
        finally:
            if woken is not None:
                woken.cancel()
            if running:  # cancelled: the rows in flight end as their leases say
                for t in running:
                    t.cancel()
                await asyncio.gather(*running, return_exceptions=True)
        for t in finished:
            t.result()  # the first failure propagates, as gather's did
        if claim_failed is not None:
            raise claim_failed
        return attempted

    async def _woken(self) -> None:
        await self._wake.wait()

    async def drain(self, timeout: float = 30.0, *, recipient: str | None = None) -> None:
        """Send until nothing is due (tests, `cicbot chat`, which passes its user: the
        other console users' messages wait for their own chat)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.drain_once(recipient):
            if loop.time() > deadline:
                raise TimeoutError("outbox not drained")

    async def _claim(self, recipient: str | None = None) -> list[OutboxMessage]:
        if not self.channels:
            return []
        now = utcnow()
        # each recipient's oldest unsent row (queries.heads: read from a window of the
        # oldest unsent rows, whatever the number of recipients waiting)
        dialect = self.leases.db.dialect.name
        heads = queries.heads(
            dialect,
            "outbox",
            "recipient_id",
            list(self.channels),
            now=now,
            limit=self.claim_size,
            partition=recipient,
        )
        q = (
            select(OutboxMessage)
            .where(*queries.claimable(dialect, "outbox", heads, now))  # the heads due now
            .order_by(OutboxMessage.id)
            .limit(self.claim_size)
        )
        if self.skip_locked:
            q = q.with_for_update(skip_locked=True)
        async with self.sessions() as s, s.begin(), inline(s):  # index-bounded
            rows = list((await s.execute(q)).scalars().all())
            # a row born leased to us whose lease ran out before the heartbeat renewed it
            # is still ours, being sent: not again
            rows = [r for r in rows if r.id not in self._born_ids]
            await self.leases.take(s, OutboxMessage, rows, OutboxStatus.SENDING)
        return rows

    async def _deliver(self, row: OutboxMessage) -> tuple[OutboxMessage, SendResult] | None:
        """Send one row; the result if it went out, None if it was retried or failed."""
        channel = self.channels[row.channel]
        message = OutboundMessage.from_row(
            channel=row.channel,
            recipient_id=row.recipient_id,
            thread_key=row.thread_key,
            body=row.body,
            outbox_id=row.id,
            conversation_id=row.conversation_id,
        )
        try:
            result = await channel.send(message)
        except TransientSendError as exc:
            await self._retry(row, str(exc), exc.retry_after)
        except PermanentSendError as exc:
            await self._fail(row, str(exc), unreachable=True)
        except Exception as exc:  # an adapter bug is treated as transient, and logged
            log.exception("channel %s raised while sending outbox row %s", row.channel, row.id)
            await self._retry(row, f"{type(exc).__name__}: {exc}", None)
        else:
            return row, result
        return None

    async def _sent_while_leased(self, done: list[tuple[OutboxMessage, SendResult]]) -> None:
        """Record sends, retrying while their lease lasts: a database outage shorter than the
        lease does not make a delivered reply go out again (past it, another claim may)."""
        delay = 0.2
        while True:
            try:
                await self._sent(done)
                return
            except Exception as exc:
                leased = min((r.leased_until for r, _ in done if r.leased_until), default=None)
                if leased and self.leases.renewed_until:
                    leased = max(leased, self.leases.renewed_until)  # the heartbeat renewed it
                left = (leased - utcnow()).total_seconds() if leased else 0.0
                if self._stopping or left < delay * 2:
                    raise
                log.warning(
                    "recording %d sent outbox rows failed, again in %.1fs: %s",
                    len(done),
                    delay,
                    f"{type(exc).__name__}: {exc}"[:300],
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _sent(self, done: list[tuple[OutboxMessage, SendResult]]) -> None:
        if not done:
            return
        now = utcnow()
        # in id order, as the heartbeat's renewal meets the rows: two statements locking
        # the same rows in opposite orders deadlock (one fails after a second's wait)
        marks = [
            {"row_id": row.id, "sent_time": now, "platform_id": result.platform_message_id}
            for row, result in sorted(done, key=lambda d: d[0].id)
        ]
        secrets = [r for r, _ in done if isinstance(r.body, dict) and MASKED_TEXT in r.body]
        if not secrets:
            # the common case: one executemany, on PostgreSQL outside a transaction (one
            # round trip, atomic: storage/db.OneStatement); by primary key
            async with self._one() as s:
                await s.execute(_SENT, marks)
        else:
            async with self.sessions() as s, s.begin(), inline(s):  # by primary key
                await s.execute(_SENT, marks)
                for row in secrets:
                    # a secret (a one-time code) need not outlive its delivery
                    await s.execute(
                        update(_OUTBOX).where(_OUTBOX.c.id == row.id).values(body=masked(row.body))
                    )
        for row, _ in done:
            self.observe(row, "sent")

    def _backoff(self, attempts: int) -> float:
        base: float = self.settings.base_backoff_seconds * 2.0 ** max(attempts - 1, 0)
        return min(base, self.settings.max_backoff_seconds) * random.uniform(0.8, 1.2)

    async def _retry(self, row: OutboxMessage, error: str, retry_after: float | None) -> None:
        if row.attempts >= self.settings.max_attempts:
            await self._fail(
                row, f"gave up after {row.attempts} attempts: {error}", unreachable=False
            )
            return
        delay = retry_after if retry_after is not None else self._backoff(row.attempts)
        log.warning("outbox row %s: transient error, retry in %.1fs: %s", row.id, delay, error)
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id)
                .values(
                    status=OutboxStatus.PENDING,
                    leased_until=None,
                    leased_by=None,
                    last_error=error[:1000],
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                )
            )
        self.observe(row, "retry")
        if delay < self.poll_interval:  # due before the next poll: a claim then
            asyncio.get_running_loop().call_later(delay + 0.01, self.notify)

    async def _fail(self, row: OutboxMessage, error: str, *, unreachable: bool) -> None:
        log.warning("outbox row %s failed permanently: %s", row.id, error)
        async with self.sessions() as s, s.begin():
            failed = [row.id]
            if unreachable:
                # whatever else waits for this recipient would fail the same way
                rest = await s.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.channel == row.channel,
                        OutboxMessage.recipient_id == row.recipient_id,
                        OutboxMessage.status == OutboxStatus.PENDING,
                    )
                    .values(status=OutboxStatus.FAILED, last_error="recipient unreachable")
                    .returning(OutboxMessage.id)
                )
                failed += list(rest.scalars())
                if row.identity_id:
                    await queries.set_reachable(s, row.identity_id, False, error[:500])
            await s.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id)
                .values(
                    status=OutboxStatus.FAILED,
                    leased_until=None,
                    leased_by=None,
                    last_error=error[:1000],
                )
            )
            conv = await s.get(Conversation, row.conversation_id) if row.conversation_id else None
            if conv is not None:
                queries.add_touchpoint(
                    s,
                    contact_id=conv.contact_id,
                    conversation_id=conv.id,
                    channel=row.channel,
                    direction=Direction.INTERNAL,
                    kind="delivery_failed",
                    actor="system",
                    payload={
                        "outbox_ids": failed,
                        "error": error[:500],
                        "unreachable": unreachable,
                    },
                )
        self.observe(row, "failed")


_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[assignment]
# Core, built once (its compiled form cached): the ORM's bulk UPDATE by primary key
# rebuilt and compiled its statement at every call
_SENT = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row_id"))
    .values(
        status=OutboxStatus.SENT,
        sent_at=bindparam("sent_time"),
        leased_until=None,
        leased_by=None,
        last_error=None,
        platform_message_id=bindparam("platform_id"),
    )
)
