"""The sandbox (bot/channel/sandbox.py): calls in worker processes with a time budget; a call over
it is cut off and the pool goes on; a worker that dies is reported, not hung on."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.channel.sandbox import OverBudget, Sandbox, WorkerDied
from tests import proctree
from tests.loop_lag import LoopLag
from tests.timed import TIMED


def spin(seconds: float) -> int:
    """Busy for `seconds` (no sleep: a validation holds its CPU)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return os.getpid()


def busy(marker: str, seconds: float) -> int:
    """spin(seconds), once a file named `marker`.<worker's pid> says it started."""
    Path(f"{marker}.{os.getpid()}").touch()
    return spin(seconds)


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


ROOT = Path(__file__).resolve().parents[3]
# a process with a sandbox whose two workers are busy for ten minutes (argv[1]: the marker)
OWNER = """
import asyncio, sys
from bot.channel.sandbox import Sandbox
from tests.bot.channel.test_sandbox import busy

async def main() -> None:
    box = Sandbox(workers=2)
    box.start()
    await asyncio.gather(*(box.run(busy, sys.argv[1], 600.0, budget=600) for _ in range(2)))

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PDEATHSIG and /proc are Linux's")
def test_nothing_outlives_an_owner_killed_while_its_workers_are_busy(tmp_path: Path) -> None:
    """kill -9 of the owner while both workers run a call: its forkserver, the workers and
    multiprocessing's resource tracker are gone within seconds (found after the restart test
    killed a server validating a rich-text bomb: each worker held the forkserver's alive pipe
    open, so the forkserver stayed, so the worker's PDEATHSIG never came, and the worker spun
    on at ppid 1 until its call ended, minutes or never)."""
    marker = tmp_path / "busy"
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(marker)], cwd=ROOT)
    tree: proctree.Tree = {}
    try:
        deadline = time.monotonic() + 120  # a cold start on a loaded machine
        while len(list(tmp_path.glob("busy.*"))) < 2:
            assert owner.poll() is None, "the owner exited"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.05)
        tree = proctree.descendants(owner.pid)
        assert len(tree) >= 4, tree  # the forkserver, the resource tracker, two workers
        owner.kill()
        owner.wait()
        left = proctree.gone_within(tree, 30)
        assert not left, f"still there after 30 s (pid: state): {left}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        proctree.kill(tree)  # never leave a spinning orphan behind, pass or fail
