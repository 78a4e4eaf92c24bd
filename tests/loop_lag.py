"""Measuring event-loop stalls in a test: a task ticking every `interval` on the loop.

Per tick: how late it came (wall clock: whatever delayed the loop, including the machine
being busy with other processes), and how much CPU the loop's thread and the whole process
spent meanwhile. A stall is the part of the lateness the process itself was running:
min(late, process CPU), so code on the loop, another thread holding the GIL and a garbage
collection all count, the machine's other work does not. Tests assert on `max_stall`
(other helpers share the cores) and print everything, full collections included.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from types import TracebackType
from typing import Any


class LoopLag:
    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.late: list[float] = []  # seconds each tick came late
        self.cpu: list[float] = []  # the loop thread's CPU seconds between two ticks
        self.process_cpu: list[float] = []  # the whole process's, all threads
        self._task: asyncio.Task[None] | None = None
        self.gc_pauses: list[float] = []  # seconds of each full (generation 2) collection
        self._gc_started = 0.0

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wall, cpu, pcpu = loop.time(), time.thread_time(), time.process_time()
            await asyncio.sleep(self.interval)
            self.late.append(max(0.0, loop.time() - wall - self.interval))
            self.cpu.append(time.thread_time() - cpu)
            self.process_cpu.append(time.process_time() - pcpu)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._tick(), name="loop-lag")
        gc.callbacks.append(self._gc)
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def max_late(self) -> float:
        return max(self.late, default=0.0)

    @property
    def max_cpu(self) -> float:
        return max(self.cpu, default=0.0)

    @property
    def max_stall(self) -> float:
        return max(map(min, self.late, self.process_cpu), default=0.0)

    def summary(self) -> str:
        if not self.late:
            return "no ticks"
        ms = sorted(x * 1000 for x in self.late)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return (
            f"{len(ms)} ticks: late median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
            f"max {ms[-1]:.1f} ms; stall max {self.max_stall * 1000:.1f} ms; "
            f"loop-thread CPU between ticks max {self.max_cpu * 1000:.1f} ms"
            f" (process CPU in the latest tick {self._worst_process_cpu() * 1000:.1f} ms); "
            f"{len(self.gc_pauses)} full collections, longest "
            f"{max(self.gc_pauses, default=0.0) * 1000:.1f} ms"
        )

    def _worst_process_cpu(self) -> float:
        worst = max(range(len(self.late)), key=self.late.__getitem__, default=None)
        return 0.0 if worst is None else self.process_cpu[worst]
