"""Raw platform updates: persisted first, acknowledged, processed afterwards.

A webhook handler calls `accept` (an INSERT deduped on the platform's update id) and
answers 200 once it is committed; the worker parses each row with its channel's parser and
hands the result to the engine. Per partition (a chat, a thread) only the oldest unfinished
row is eligible, so a customer's updates are processed in order; partitions run
concurrently. A parser error (the update is over its bounds or its time budget, or the
library's models reject it) or repeated failures park the row as `dead` with the error,
never dropped; what the parser could still read (a customer's text) is handled all the same.

Group commit (bot/delivery/group.py): the accepts arriving while one is committed share the
next INSERT and commit; parsed customer messages share one engine transaction, each row in
a savepoint of its own together with its done mark, so a message's effects and its row's
state commit together and one failing row (handled alone afterwards) never fails the rest.

Leases (bot/delivery/leases.py): a claimed row carries this process's boot id and a short lease
the heartbeat renews. A row whose holder died (the lease ran out, or the holder is known to
be gone at start) is taken again, at most `max_crashes` times in all: an update that kills
the process is parked as dead instead of killing every process that takes it. Such rows are
taken one at a time and handled alone, outside the group commit: a crash counts only
against the row being handled, not against the rows that were in flight with it (three
kills in a row, tests/reliability/test_kill_group_commit.py, parked a dozen innocent rows).

Claimed at birth: while the running worker has a free slot, a new row that is its chat's
head (no unfinished row of its partition in the table, none in an insert under way here,
none before it in the same INSERT) is written already leased to this process (`processing`,
as a claim leaves it: the same INSERT decides, from the partial index of unfinished rows;
bot/delivery/accept.py) and handed to processing after the commit: no claim transaction,
no wake-up. Any other row is inserted pending and claimed as before. Killed meanwhile,
its lease runs out and the claim takes it again, as a claimed row. The replies of the
group commit are likewise born leased to the dispatcher and handed to it in memory
(bot/delivery/dispatcher.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, Update, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel.inbound import Deferred, Parsed, ParseError, Parser, Tolerated, Unavailable
from bot.channel.messages import ChannelEvent, InboundMessage
from bot.conversation.engine import Engine, HandleResult
from bot.delivery import accept
from bot.delivery.dispatcher import Dispatcher
from bot.delivery.flood import Admission, SharedFloodControl, defer, row_key
from bot.delivery.group import GroupCommit
from bot.delivery.leases import Leases
from bot.delivery.settings import IN_FLIGHT
from bot.delivery.worker import RoundWorker
from storage import group_end, queries
from storage.db import OneStatement, inline, is_unavailable
from storage.models import DeadLetter, InboxStatus, InboxUpdate, utcnow
from storage.queries import scrub

log = logging.getLogger(__name__)
# the parser types live in the channel contract (bot/channel/inbound.py); named here too
__all__ = ["Deferred", "Inbox", "ParseError", "Parsed", "Parser", "Tolerated", "Unavailable"]
UNFINISHED = (InboxStatus.PENDING, InboxStatus.PROCESSING)
STOP_SECONDS = 10.0  # at stop, rows being handled get this long to finish
SUSPECT_SECONDS = 10.0  # rows whose holder died are handled alone: the next waits this long at most


class Inbox(RoundWorker):
    name = "inbox-worker"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: Engine,
        leases: Leases,
        *,
        dialect: str,
        concurrency: int | None = None,
        batch: int | None = None,
        max_attempts: int = 5,
        max_crashes: int = 3,
        poll_interval: float = 1.0,
        flood: Admission | None = None,
    ) -> None:
        super().__init__(poll_interval)
        self.flood = flood
        self._not_before = 0.0  # loop time when the last deferred row is due again
        self.sessions = sessions
        self.engine = engine
        self.dialect = dialect
        # rows in flight at once: enough for every chat active under load, so that a row
        # is born claimed (the module's text: "Claimed at birth") and waits for its
        # turn in memory, in the group commit's queue (first come, first served). With
        # fewer slots than chats (it was 64 on PostgreSQL, 32 on SQLite) the rest were
        # inserted pending and waited in the table for a claim: four round trips each, the
        # slots taken at birth by newer rows before them (200 customers, bench/telegram.py:
        # p99 of "accepted -> turn began" 3.5-4.1 s, with 256 slots 0.5-0.9 s)
        self.concurrency = concurrency or IN_FLIGHT
        # the most rows in one group commit. PostgreSQL: 64 (its batches overlap, each
        # waiting for the server); SQLite: 32 (a group holds the one writer lock and,
        # inline, the event loop)
        self.batch = batch or (64 if dialect == "postgresql" else 32)
        self.max_attempts = max_attempts
        self.max_crashes = max_crashes  # attempts in all once a holder died with the row
        self.leases = leases
        self.parsers: dict[str, Parser] = {}
        self._running: set[asyncio.Task[None]] = set()  # rows the running worker handles
        self._running_keys: dict[tuple[str, str], int] = {}  # their partitions
        self._running_ids: set[int] = set()  # and rows: our own claim must not take them
        # rows whose holder died with them, handled alone: row id -> loop time begun
        self._suspects: dict[int, float] = {}
        # claimed at birth (see the module's text): slots promised to inserts under way,
        # partitions of rows being inserted, partitions this process left pending rows in
        # (a finished row then wakes the claim; otherwise nothing waits for one)
        self._reserved = 0
        self._inserting: dict[tuple[str, str], int] = {}
        self._waiting: dict[int, tuple[str, str]] = {}  # row id: partition
        self._deferred: dict[tuple[str, str], float] = {}  # flood control: loop time due
        self._accept_stmt = accept.statement(dialect)
        self._one = OneStatement(sessions)
        # the outbox rows of a group commit are born leased to it (runtime sets it)
        self.dispatcher: Dispatcher | None = None
        # PostgreSQL: two batches at once (a connection each): one runs while the other
        # waits for the server's answers. A batch makes about eight statements whatever its
        # size (its turns' rows are read and written together: queries.defer_group), so
        # more of them only split the load into smaller groups: with four, groups of 8
        # rows and 2.7 statements per message in bench/telegram.py; with two, 26 and 1.8.
        # SQLite has one writer anyway. The accepts: one INSERT at a time on either (on
        # PostgreSQL two at once made groups of 3.2 rows, one 5.9: 15 % fewer statements
        # and 10 % less server CPU per bench/telegram.py closed-loop run; session 15)
        postgres = dialect == "postgresql"
        self._accepts = GroupCommit("inbox-accept", self._insert)
        self._group = GroupCommit(
            "inbox-rows",
            self._commit_rows,
            max_batch=self.batch,
            workers=2 if postgres else 1,
        )
        # told of arrivals (accepted, duplicate) and of each outcome (an InboxStatus): metrics
        self.observe: Callable[[str, str], None] = lambda channel, event: None

    @property
    def groups(self) -> tuple[GroupCommit[Any, bool], ...]:
        """The group commits (their counters go to /metrics)."""
        return (self._accepts, self._group)

    def register(self, channel: str, parser: Parser) -> None:
        self.parsers[channel] = parser

    async def accept(
        self, channel: str, dedupe_key: str, partition_key: str, payload: dict[str, Any]
    ) -> bool:
        """Persist one raw update; False if it was already there (a redelivery). Returns
        once the row is committed, in one transaction with whatever other updates arrived
        meanwhile (group commit)."""
        row = {
            "channel": channel,
            "dedupe_key": scrub(dedupe_key[:200]),
            "partition_key": scrub(partition_key[:200]),
            "payload": scrub(payload),
        }
        new = await self._accepts.submit(row)  # a pending row notifies the claim
        self.observe(channel, "accepted" if new else "duplicate")
        return new

    async def _insert(self, rows: list[dict[str, Any]]) -> list[bool | BaseException]:
        """One INSERT of many rows, deduped; alone each if the batch fails for another
        reason than the database's absence, so that one bad row never fails its neighbours.
        The rows that may be claimed at birth are, and start once committed."""
        keys = [(r["channel"], r["partition_key"]) for r in rows]
        born = self._born_candidates(keys)
        for key in keys:
            self._inserting[key] = self._inserting.get(key, 0) + 1
        self._reserved += sum(born)
        try:
            return await self._insert_rows(rows, keys, born)
        finally:
            self._reserved -= sum(born)
            for key in keys:
                left = self._inserting[key] - 1
                if left:
                    self._inserting[key] = left
                else:
                    del self._inserting[key]

    def _born_candidates(self, keys: list[tuple[str, str]]) -> list[bool]:
        """Which rows of an insert may be claimed at birth: the worker runs and has a free
        slot, and no earlier row of the partition is being inserted here or is before it
        in this batch (the INSERT itself checks the table)."""
        if self._task is None or self._stopping:
            return [False] * len(keys)
        free = self.concurrency - len(self._running) - self._reserved
        chosen: list[bool] = []
        seen: set[tuple[str, str]] = set()
        for key in keys:
            ok = free > 0 and key not in seen and key not in self._inserting
            ok = ok and key[0] in self.parsers
            seen.add(key)
            free -= ok
            chosen.append(ok)
        return chosen

    async def _insert_rows(
        self, rows: list[dict[str, Any]], keys: list[tuple[str, str]], born: list[bool]
    ) -> list[bool | BaseException]:
        now = utcnow()
        until = self.leases.until()
        owner = self.leases.boot_id
        shared = self._shared_flood()
        try:
            params = self._accept_params(rows, born, now, until, owner)
            # one statement: on PostgreSQL outside a transaction, one round trip, committed
            # when it answers (storage/db.OneStatement); all or nothing on either
            async with self._one() as s:
                result = await s.execute(self._accept_stmt, params)
                inserted = {(c, k): (i, st) for i, c, k, st in result}
        except Exception as exc:
            if is_unavailable(exc):
                return [Unavailable(f"{type(exc).__name__}: {exc}"[:500]) for _ in rows]
            if len(rows) == 1:
                return [exc]
            return [(await self._insert([r]))[0] for r in rows]
        results: list[bool | BaseException] = []
        queued = False
        late: list[int] = []
        for r, key in zip(rows, keys, strict=True):
            # the same update twice in one batch: the first one is the new one
            got = inserted.pop((r["channel"], r["dedupe_key"]), None)
            results.append(got is not None)
            if got is None:
                continue
            row_id, status = got
            if status == InboxStatus.PROCESSING and until - utcnow() < self.leases.ttl / 2:
                # the lease nearly ran out during a slow commit: the claim's, after it
                # (released: left leased to us, the heartbeat would renew it as long as
                # anything else is being worked on, and no claim would take it till then)
                late.append(row_id)
                self._waiting[row_id] = key
                queued = True
            elif status == InboxStatus.PROCESSING:
                # the shared flood control admitted it in the accept (bot/delivery/accept.py)
                self._start(
                    InboxUpdate(
                        id=row_id,
                        channel=r["channel"],
                        dedupe_key=r["dedupe_key"],
                        partition_key=r["partition_key"],
                        payload=r["payload"],
                        status=InboxStatus.PROCESSING,
                        attempts=1,
                        leased_by=self.leases.boot_id,
                        leased_until=until,
                        created_at=now,
                    ),
                    admitted=shared is not None,
                )
            else:
                self._waiting[row_id] = key
                queued = True
        if late:
            await self._release(late)
        if queued:
            self.notify()
        if shared is not None:
            try:  # the rows are committed: a failed purge must not fail their webhooks
                await shared.tidy()
            except Exception as exc:
                log.warning("flood marks not purged: %s", f"{type(exc).__name__}: {exc}"[:300])
        return results

    def _accept_params(
        self,
        rows: list[dict[str, Any]],
        born: list[bool],
        now: datetime,
        until: datetime,
        owner: str,
    ) -> dict[str, Any]:
        return accept.params(self.dialect, rows, born, now, until, owner, self._shared_flood())

    def _shared_flood(self) -> SharedFloodControl | None:
        """The flood control shared by the workers, which PostgreSQL's accept asks;
        None elsewhere (the row's processing asks it then)."""
        if self.dialect != "postgresql" or not isinstance(self.flood, SharedFloodControl):
            return None
        return self.flood

    async def _release(self, ids: list[int]) -> None:
        """Rows born claimed but not started: pending again, the attempt not counted (only
        while still ours: if the lease ran out, another worker's claim may hold them)."""
        try:
            async with self.sessions() as s, s.begin():
                await s.execute(
                    update(_INBOX)
                    .where(
                        _INBOX.c.id.in_(ids),
                        _INBOX.c.status == InboxStatus.PROCESSING,
                        _INBOX.c.leased_by == self.leases.boot_id,
                    )
                    .values(
                        status=InboxStatus.PENDING,
                        leased_until=None,
                        leased_by=None,
                        attempts=_INBOX.c.attempts - 1,
                    )
                )
        except Exception as exc:  # the heartbeat stops renewing them once this process idles
            log.warning("inbox rows %s not released: %s", ids, f"{type(exc).__name__}: {exc}"[:300])

    async def round(self) -> int:
        """The running worker: claim rows for the free slots and start them, without
        waiting for the batch, so a slow row (a validation using its whole time budget)
        holds up only its own partition. A finished row notifies the next round if this
        process left rows pending."""
        free = self.concurrency - len(self._running) - self._reserved
        # rows left pending by inserts that commit while the claim runs are not in its
        # snapshot: they keep their wake-up below
        known = set(self._waiting)
        rows = await self._claim(free) if free > 0 else []
        for row in rows:
            self._waiting.pop(row.id, None)
            self._start(row)
        if free > 0 and len(rows) < free:
            # what is left is behind a row being handled here (its end wakes the claim)
            # or deferred here (its claim and end do), or was taken or is held up by
            # another worker: the poll finds those
            soon = asyncio.get_running_loop().time() - 5.0
            self._deferred = {k: t for k, t in self._deferred.items() if t > soon}
            self._waiting = {
                i: k
                for i, k in self._waiting.items()
                if i not in known or k in self._running_keys or k in self._deferred
            }
        return len(rows)

    def _start(self, row: InboxUpdate, *, admitted: bool = False) -> None:
        key = (row.channel, row.partition_key)
        self._running_ids.add(row.id)
        self._running_keys[key] = self._running_keys.get(key, 0) + 1
        task = asyncio.create_task(
            self._process_held(row, admitted=admitted), name=f"inbox-row-{row.id}"
        )
        self._running.add(task)
        task.add_done_callback(lambda t: self._done(t, key, row.id))

    def _done(self, task: asyncio.Task[None], key: tuple[str, str], row_id: int) -> None:
        self._running.discard(task)
        self._running_ids.discard(row_id)
        left = self._running_keys[key] - 1
        if left:
            self._running_keys[key] = left
        else:
            del self._running_keys[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("inbox row task failed", exc_info=task.exception())
        if self._waiting:  # rows left pending here may be due now (a head, a free slot)
            self.notify()

    async def _process_held(self, row: InboxUpdate, *, admitted: bool) -> None:
        with self.leases.held():
            await self._process(row, admitted=admitted)

    async def stop(self) -> None:
        await super().stop()
        await self._accepts.stop()
        if self._running:  # let rows being handled finish (a validation is bounded)
            _, pending = await asyncio.wait(list(self._running), timeout=STOP_SECONDS)
            for task in pending:  # their leases run out; the next start takes them again
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._group.stop()  # a batch in flight commits or rolls back whole

    async def process_once(self) -> int:
        """One batch, claimed and finished (tests, `drain`)."""
        with self.leases.held():
            rows = await self._claim(self.concurrency)
            await asyncio.gather(*(self._process(r) for r in rows))
        return len(rows)

    async def drain(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            deferred = loop.time() < self._not_before  # rows the flood control put back
            if not await self.process_once() and not deferred:
                return
            if loop.time() > deadline:
                raise TimeoutError("inbox not drained")
            await asyncio.sleep(0.01 if deferred else 0)

    async def _claim(self, limit: int) -> list[InboxUpdate]:
        if not self.parsers:
            return []
        now = utcnow()
        # each chat's oldest unfinished row (queries.heads: read from a window of the
        # oldest unfinished rows, whatever the number of chats waiting): a busy chat offers
        # one row at a time like every other chat (oldest first)
        heads = queries.heads(
            self.dialect, "inbox", "partition_key", list(self.parsers), now=now, limit=limit
        )
        q = (
            select(InboxUpdate)
            .where(*queries.claimable(self.dialect, "inbox", heads, now))  # the heads due now
            .order_by(InboxUpdate.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        async with self.sessions() as s, s.begin(), inline(s):  # index-bounded
            rows = list((await s.execute(q)).scalars())
            claimed = []
            suspect = None
            loop = asyncio.get_running_loop()
            # a suspect that takes long (a validation using its budget, a hang) does not
            # hold up the others' recovery beyond SUSPECT_SECONDS
            busy = any(loop.time() - t < SUSPECT_SECONDS for t in self._suspects.values())
            for r in rows:
                if r.id in self._running_ids:  # ours, its lease ran out before a renewal
                    continue
                # its holder died while working on it (a deferred row has no holder)
                orphan = r.status == InboxStatus.PROCESSING and r.leased_by is not None
                if orphan and r.attempts >= self.max_crashes:
                    self._park(
                        s,
                        r,
                        f"the process stopped while handling this update; "
                        f"parked after {r.attempts} attempts",
                    )
                    continue
                if orphan:
                    # one at a time, and alone (_process): the attempt taken now counts
                    # a crash only if this row is being handled when it happens
                    if busy or suspect is not None:
                        continue
                    suspect = r.id
                claimed.append(r)
            await self.leases.take(s, InboxUpdate, claimed, InboxStatus.PROCESSING)
        if suspect is not None:
            self._suspects[suspect] = loop.time()
        return claimed

    async def _process(self, row: InboxUpdate, *, admitted: bool = False) -> None:
        """Handle one claimed row; `admitted`: the flood control let it through already."""
        if row.id not in self._suspects:
            await self._process_row(row, admitted=admitted, alone=False)
            return
        try:
            await self._process_row(row, admitted=admitted, alone=True)
        finally:
            self._suspects.pop(row.id, None)
            self.notify()  # the next row whose holder died

    async def _process_row(self, row: InboxUpdate, *, admitted: bool, alone: bool) -> None:
        if not admitted and await self._flooded(row):
            return
        try:
            parsed = self.parsers[row.channel](row.payload)
            result = await parsed if inspect.isawaitable(parsed) else parsed
        except Exception as exc:
            # garbage from outside, not our failure: a warning, no traceback
            log.warning("inbox row %s (%s) parked: %s", row.id, row.channel, type(exc).__name__)
            salvaged = exc.salvaged if isinstance(exc, ParseError) else ()
            if await self._handle(row, salvaged):
                await self._finish(row, InboxStatus.DEAD, _error(exc))
            return
        items, note = (
            (result.items, result.note) if isinstance(result, Tolerated) else (result, None)
        )
        if note is not None:
            log.warning("inbox row %s (%s): %s", row.id, row.channel, note[:300])
        status = InboxStatus.DONE if items else InboxStatus.IGNORED
        messages = [i for i in items if isinstance(i, InboundMessage)]
        if messages and len(messages) == len(items):
            # the common case (customers' messages): handled in a group commit; a row
            # whose holder died in a transaction of its own, the same way
            grouped = Grouped(row, messages, status, note)
            if alone:
                committed = (await self._commit_rows([grouped]))[0]
            else:
                committed = await self._group.submit(grouped)
            if committed:
                self.observe(row.channel, status)
                return
        if await self._handle(row, items):
            await self._finish(row, status, note)

    async def _commit_rows(self, batch: list[Grouped]) -> list[bool]:
        """The engine's work for many rows in one transaction; the done marks of the rows
        that succeeded at the end, in the same transaction (a message's effects and its
        row's state commit together). First without savepoints (two statements per row,
        and on PostgreSQL two round trips, that almost never serve): if a row fails, the
        whole transaction rolls back and the batch runs again with a savepoint per row. True
        for the rows committed; a row whose savepoint failed (or all, if the transaction
        did) goes the single way after (`_handle`: its retries, its dead letter)."""
        if len(batch) > 1:
            done = await self._commit_group(batch, savepoints=False)
            if done is not None:
                return done
        return await self._commit_group(batch, savepoints=len(batch) > 1) or [False] * len(batch)

    async def _before_turns(self, s: AsyncSession, batch: list[Grouped]) -> None:
        """Each chat's first message's rows read first (on PostgreSQL in one statement, not
        one each: queries.prefetch_turn_rows), then the new customers among the chats with
        no row read get theirs together, one INSERT per table, not one customer at a time
        (Engine.onboard; a failure reruns the group, a savepoint each), their turn rows
        kept as if read."""
        firsts: dict[tuple[str, str], InboundMessage] = {}
        for g in batch:
            for m in g.messages:
                firsts.setdefault((m.channel, m.thread_key), m)
        keys = {_turn_key(m): m for m in firsts.values()}
        await queries.prefetch_turn_rows(s, list(keys))
        unknown = queries.prefetched_unknown(s, list(keys))
        if unknown:  # the rows made are what a read would find (not read again)
            queries.prefetched(s, await self.engine.onboard(s, [keys[k] for k in unknown]))

    async def _commit_group(self, batch: list[Grouped], *, savepoints: bool) -> list[bool] | None:
        """One try of `_commit_rows`; None if a row failed without savepoints (nothing was
        committed: the caller tries again with them)."""
        keys = sorted({(m.channel, m.thread_key) for g in batch for m in g.messages})
        done = [False] * len(batch)
        results: list[list[HandleResult]] = [[] for _ in batch]
        birth: queries.OutboxBirth | None = None
        async with contextlib.AsyncExitStack() as held:
            for channel, thread in keys:  # sorted: two batches never wait for each other
                await held.enter_async_context(self.engine.hold_thread(channel, thread))
            try:
                # SQLite: the rows' statements on the loop, no thread trip each (storage/db.py)
                async with self.sessions() as s, s.begin(), inline(s):
                    now = utcnow()
                    # the senders' seen marks, written for the whole group at its end with
                    # the done marks (queries.defer_seen, storage/group_end.py)
                    seen = queries.defer_seen(s)
                    # a row's touchpoints in one INSERT, inside its savepoint (the dedupe
                    # index speaks there if a racing process took the message in first)
                    queries.defer_touchpoints(s)
                    # the replies born leased to the dispatcher, handed to it after the commit
                    birth = self.dispatcher.birth() if self.dispatcher is not None else None
                    queries.lease_at_birth(s, birth)
                    # without savepoints (a failure reruns the whole group), the turns'
                    # touchpoints, flow states and replies go in one statement per table at
                    # the group's end; a chat's second message flushes them first. A lone
                    # row writes its reply at once, its touchpoints and flow state at the
                    # end too (storage/group_end.py: one round trip on PostgreSQL, not three)
                    if not savepoints:
                        if len(batch) > 1:
                            queries.defer_group(s)
                        else:
                            queries.defer_writes(s)
                        await self._before_turns(s, batch)
                    chats: set[tuple[str, str]] = set()  # handled since the last flush
                    for i, g in enumerate(batch):
                        mark = len(seen)
                        born = birth.mark() if birth is not None else (0, 0)
                        try:
                            async with s.begin_nested() if savepoints else _no_savepoint():
                                try:
                                    for m in g.messages:
                                        if not savepoints and (m.channel, m.thread_key) in chats:
                                            await queries.flush_deferred(s)
                                            chats.clear()
                                        chats.add((m.channel, m.thread_key))
                                        results[i].append(await self.engine.handle_in(s, m))
                                    if savepoints:
                                        await queries.flush_touchpoints(s)
                                finally:
                                    if savepoints:
                                        queries.drop_touchpoints(s)  # written, or rolled back
                            done[i] = True
                            # inline statements (SQLite) never yield: let the loop breathe
                            await asyncio.sleep(0)
                        except Exception as exc:
                            if is_unavailable(exc) or not savepoints:
                                raise
                            results[i] = []
                            del seen[mark:]  # rolled back with its savepoint
                            if birth is not None:
                                birth.rollback(born)
                            log.info("inbox row %s: %s; handled alone", g.row.id, repr(exc)[:200])
                    # in the same transaction as the rows' effects: they commit together
                    finished = [
                        _finished(g.row.id, g.status, g.note, now)[1]
                        for g, ok in zip(batch, done, strict=True)
                        if ok
                    ]
                    # with what the turns kept for the end (the replies written first)
                    await group_end.end_group(s, finished, seen)
            except Exception as exc:
                if is_unavailable(exc):
                    return [False] * len(batch)
                if not savepoints and len(batch) > 1:
                    log.info(
                        "inbox group of %d rows: %s; again, a savepoint each",
                        len(batch),
                        repr(exc)[:200],
                    )
                    return None
                if len(batch) == 1:
                    log.info("inbox row %s: %s; handled alone", batch[0].row.id, repr(exc)[:200])
                else:
                    log.exception("inbox group commit of %d rows failed", len(batch))
                return [False] * len(batch)
        if birth is None:
            quiet: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        else:
            assert self.dispatcher is not None
            self.dispatcher.hand_over(birth.born)
            # every reply handed over: nothing for the dispatcher's claim
            quiet = self.dispatcher.quiet() if not birth.pending else contextlib.nullcontext()
        with quiet:
            for handled in results:
                for result in handled:
                    self.engine.handled(result)
        return done

    async def _handle(self, row: InboxUpdate, items: Parsed) -> bool:
        """Hand the items on; False if that failed (the row is then retried or parked)."""
        try:
            for item in items:
                if isinstance(item, InboundMessage | ChannelEvent):
                    await self._hand_on(item)
                else:  # deferred work: what it made goes the same way
                    for made in await item() or ():
                        await self._hand_on(made)
        except Exception as exc:
            log.exception("inbox row %s (%s) failed", row.id, row.channel)
            status = InboxStatus.DEAD if row.attempts >= self.max_attempts else InboxStatus.PENDING
            await self._finish(row, status, _error(exc))
            return False
        return True

    async def _hand_on(self, item: InboundMessage | ChannelEvent) -> None:
        # the engine's one transaction per message (bot/conversation/engine.py)
        if isinstance(item, InboundMessage):
            await self.engine.handle(item)
        else:
            await self.engine.record_event(item)

    async def _finish(self, row: InboxUpdate, status: InboxStatus, error: str | None) -> None:
        self.observe(row.channel, status)
        if status == InboxStatus.PENDING:  # to be retried: the claim takes it again
            self._waiting[row.id] = (row.channel, row.partition_key)
        async with self.sessions() as s, s.begin():
            await s.execute(*_finished(row.id, status, error, utcnow()))
            if status == InboxStatus.DEAD:
                s.add(_dead_letter(row, error or ""))

    def _park(self, s: AsyncSession, row: InboxUpdate, error: str) -> None:
        """Park a row as dead inside the claiming transaction (it is not processed)."""
        log.error("inbox row %s (%s) parked: %s", row.id, row.channel, error)
        self.observe(row.channel, InboxStatus.DEAD)
        row.status, row.error = InboxStatus.DEAD, error
        row.leased_until, row.leased_by, row.processed_at = None, None, utcnow()
        s.add(_dead_letter(row, error))

    async def _flooded(self, row: InboxUpdate) -> bool:
        """True if the row's sender is over the rate: the row waits (see bot/delivery/flood.py)."""
        key = row_key(row.channel, row.partition_key)
        seconds = await self.flood.admit(key) if self.flood is not None and key else 0.0
        if seconds <= 0:
            return False
        await defer(self.sessions, row, seconds)
        loop = asyncio.get_running_loop()
        loop.call_later(seconds, self.notify)
        if key is not None:
            self._deferred[key] = loop.time() + seconds
        self._not_before = max(self._not_before, loop.time() + seconds)
        return True


@dataclass(frozen=True)
class Grouped:
    """A parsed row waiting for the group commit."""

    row: InboxUpdate
    messages: Sequence[InboundMessage]
    status: InboxStatus
    note: str | None


@contextlib.asynccontextmanager
async def _no_savepoint() -> AsyncIterator[None]:
    yield


_INBOX: Table = InboxUpdate.__table__  # type: ignore[assignment]


def _finished(
    row_id: int, status: InboxStatus, error: str | None, now: datetime
) -> tuple[Update, dict[str, Any]]:
    processed = now if status != InboxStatus.PENDING else None
    return group_end.FINISHED, {
        "row_id": row_id,
        "status": status,
        "error": error,
        "processed_at": processed,
    }


def _dead_letter(row: InboxUpdate, error: str) -> DeadLetter:
    # the raw update stays in its inbox row; the dead letter points at it
    return DeadLetter(
        source="inbox",
        channel=row.channel,
        reference=f"inbox:{row.id}",
        error=error,
        payload={"inbox_id": row.id, "attempts": row.attempts},
        created_at=utcnow(),
    )


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]


def _turn_key(m: InboundMessage) -> queries.TurnKey:
    return (m.channel, m.sender_id, m.thread_key, m.platform_message_id)
