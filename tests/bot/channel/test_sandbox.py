"""The sandbox (bot/channel/sandbox.py): calls in worker processes with a time budget; a call over
it is cut off and the pool goes on; a worker that dies is reported, not hung on."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from bot.channel.sandbox import OverBudget, Sandbox, WorkerDied
from tests.loop_lag import LoopLag
from tests.timed import TIMED


def spin(seconds: float) -> int:
    """Busy for `seconds` (no sleep: a validation holds its CPU)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return os.getpid()


def die() -> None:
    os._exit(3)


def fail() -> None:
    raise ValueError("bad input")


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    box = Sandbox(workers=2)
    box.start()
    async with asyncio.timeout(120):
        while not box.ready:
            await asyncio.sleep(0.05)
    yield box
    await box.close()


@TIMED
async def test_over_budget_is_cut_off_and_the_pool_goes_on(sandbox: Sandbox) -> None:
    async with LoopLag() as lag:
        started = time.monotonic()
        with pytest.raises(OverBudget):
            await sandbox.run(spin, 60.0, budget=0.5)
        took = time.monotonic() - started
        # the other worker answered meanwhile, and a fresh one after the kill
        pids = {await sandbox.run(spin, 0.01, budget=5) for _ in range(4)}
    assert took < 5 and sandbox.killed == 1
    assert pids and os.getpid() not in pids
    assert lag.max_stall < 0.1, lag.summary()


async def test_errors_and_deaths_come_back(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="bad input"):
        await sandbox.run(fail, budget=5)
    with pytest.raises(WorkerDied):
        await sandbox.run(die, budget=5)
    assert await sandbox.run(spin, 0.0, budget=5) != os.getpid()


def loaded(name: str) -> bool:
    import sys

    return name in sys.modules


async def test_ready_workers_have_their_preload_even_from_a_forkserver_without_it() -> None:
    """The forkserver is one per process and the first user's preload wins: a second
    sandbox's workers import theirs themselves before they count as ready (found when a
    test's sandbox started the forkserver first and every Telegram validation then paid
    for importing aiogram, over its budget)."""
    first = Sandbox(workers=1)  # starts the forkserver, preloading nothing of ours
    first.start()
    second = Sandbox(workers=1, preload=["channels.telegram.parse"])
    try:
        async with asyncio.timeout(120):
            while not first.ready:
                await asyncio.sleep(0.05)
            second.start()
            while not second.ready:
                await asyncio.sleep(0.05)
        assert await second.run(loaded, "channels.telegram.parse", budget=5)
    finally:
        await first.close()
        await second.close()
