"""A background loop that works in rounds: woken at once by `notify()`, otherwise
polling, pausing after a failed round, stopping cleanly. The outbox dispatcher and the
inbox worker are both one."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class RoundWorker:
    name = "worker"

    def __init__(self, poll_interval: float) -> None:
        self.poll_interval = poll_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def round(self) -> int:
        """Do one batch of work; how many items were handled (0 = idle)."""
        raise NotImplementedError

    def notify(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
            self._task = None

    async def _wait(self) -> None:
        """Until notified, the poll interval passes, or stop()."""
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before the round: a notify() during it is not lost
            try:
                if await self.round():
                    continue
            except Exception:  # a database hiccup must not kill the loop
                log.exception("%s round failed", self.name)
            await self._wait()
