"""Group commit: work submitted while a transaction is running waits, and goes together in the
next one, so that one BEGIN/COMMIT (one fsync, one turn at SQLite's single writer lock) is
shared by many messages.

Nothing waits on purpose: an item submitted to an idle group starts a batch at once (no
latency added at light load); under load, the batch is whatever arrived during the previous
commit. Each submitter gets its own item's result (or exception) only after the batch's
transaction has committed (or failed): a webhook still answers 200 only for a committed row.

`run` gets the items and returns one result per item, in order; a result that is an
exception is raised to that item's submitter alone (`run` isolates items from each other:
a savepoint each, or a retry one by one), an exception `run` raises goes to all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        name: str,
        run: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int = 256,
        workers: int = 1,
    ) -> None:
        self.name = name
        self.run = run
        self.max_batch = max_batch
        self.workers = workers  # batches in flight at once (PostgreSQL: several connections)
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # committed batches, and the items in them (tests, the bench)
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)  # no "never retrieved" if the submitter left
        self._queue.append((item, future))
        if len(self._tasks) < self.workers:
            task = asyncio.create_task(self._drain(), name=f"group-commit-{self.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # shielded: a submitter that goes away (a client hung up) does not cancel the batch
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            await self._drain_queue()
        finally:
            # at once, in the step that found the queue empty: a task already ready to run
            # may submit before this task's done-callbacks run, and must not count it as a
            # drain still running (its item would wait for the next submit)
            self._tasks.discard(asyncio.current_task())

    async def _drain_queue(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            try:
                results = await self.run([item for item, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise  # a cancellation (stop) ends the drain
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def stop(self) -> None:
        """Let the batches in flight finish (what was submitted is committed or refused)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
