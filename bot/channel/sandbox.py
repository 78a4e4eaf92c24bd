"""Pure, CPU-bound work on untrusted input (validating a platform's payload with a
library's models) in worker processes, each call with a time budget.

Why processes and not a thread: a thread cannot be stopped. A validation that takes a
minute (or, with a deeper payload, forever) would keep its thread, a CPU and a share of the
GIL for as long as it runs, and a server cannot shut down while a non-daemon thread works;
a few such payloads and every thread is taken. A process over its budget is killed and
replaced, and the event loop never shares an interpreter with it, so it stays responsive
whatever the payload does. A cheap bound on the payload's shape before it gets here keeps
the known slow shapes away; the budget is the guarantee for the unknown ones.

The pool is pebble's ProcessPool (a timeout per task: the worker is terminated, then
killed, and a new one started). Workers are forked from a forkserver that imported
`preload` once, so a replacement is ready in milliseconds, and they die with the server,
also after a kill -9 in the middle of a call: the forkserver exits when the server's end of
its "alive" pipe closes (each worker closes the copy multiprocessing gives it, which kept the
forkserver up), and each worker asks the kernel for SIGKILL when the forkserver goes
(Linux). multiprocessing also runs the program's main script again in each worker: the
`cicbot` script imports only bot/cli/__init__.py for that reason. Starting the forkserver
takes as long as importing `preload`; `start` begins it early and `ready` says when it is up,
so a caller can do without it meanwhile. Calls that raise inside the worker come back as
exceptions; a function should return its errors as values where they may not pickle
(pydantic's).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import importlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

log = logging.getLogger(__name__)
T = TypeVar("T")
PR_SET_PDEATHSIG = 1


class OverBudget(Exception):
    """The call ran longer than its budget; its worker was killed."""


class WorkerDied(Exception):
    """The worker process died running the call (a crash the input caused, or a kill)."""


class SandboxBroken(Exception):
    """The pool could not run the call (a worker died for another reason, or could not
    be started); a new pool is made for the next call."""


def _die_with_parent() -> None:
    """Worker initializer: SIGKILL when the parent (the forkserver) exits."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _release_forkserver() -> None:
    """Worker initializer: close the worker's copy of the forkserver's "alive" pipe.

    The forkserver exits when every write end of that pipe is closed, and multiprocessing
    gives one to each process it forks (so that it could use the forkserver too). A worker
    busy with a long call (pydantic holds the GIL for the whole validation) kept the
    forkserver up after its owner's kill -9, and the forkserver, alive, never set off the
    worker's PDEATHSIG: both ran on, orphaned, until the call ended. Without it the owner's
    copy is the last: the forkserver exits with the owner, and the kernel kills the workers.
    Called after `_die_with_parent`: holding its copy until then, the worker keeps the
    forkserver up until the kernel will kill the worker when it goes."""
    # loaded in a process the forkserver forked; absent under spawn
    state = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    fd = getattr(state, "_forkserver_alive_fd", None)
    if fd is not None:
        state._forkserver_alive_fd = None  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            os.close(fd)


def _init_worker(preload: Sequence[str]) -> None:
    """Worker initializer: die with the parent, and have `preload` imported before the
    first call, also when the forkserver was started without it (it is one per process,
    and the first user's preload wins): a worker counts as ready only then."""
    _die_with_parent()
    _release_forkserver()
    for name in preload:
        importlib.import_module(name)


def _ready() -> bool:
    return True


def _context(preload: Sequence[str]) -> Any:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    # effective until the forkserver starts (once per process); the first caller's wins
    ctx.set_forkserver_preload([__name__, *preload])
    return ctx


class Sandbox:
    def __init__(self, *, workers: int = 2, preload: Sequence[str] = ()) -> None:
        self.workers = workers
        self.preload = tuple(preload)
        self._pool: ProcessPool | None = None
        self._started: Future[bool] | None = None
        self.killed = 0  # calls over budget (their workers were killed)

    def start(self) -> None:
        """Start the forkserver and the workers now (in the background, no loop needed);
        again if the last start failed."""
        started = self._started
        if started is not None and started.done() and not self.ready:
            log.warning("sandbox: the workers did not start (%r); trying again", started)
            self._started = None
        if self._started is None or self._pool is None:
            self._started = self._get().schedule(_ready)

    @property
    def ready(self) -> bool:
        """The workers are up (they took a first call)."""
        started = self._started
        return (
            started is not None
            and started.done()
            and not started.cancelled()
            and started.exception() is None
        )

    def _get(self) -> ProcessPool:
        if self._pool is None:
            self._pool = ProcessPool(
                max_workers=self.workers,
                initializer=functools.partial(_init_worker, self.preload),
                context=_context(self.preload),
            )
        return self._pool

    async def run(self, fn: Callable[..., T], *args: Any, budget: float) -> T:
        """fn(*args) in a worker; OverBudget after `budget` seconds of running (time
        waiting for a free worker does not count)."""
        try:
            future = self._get().schedule(fn, args, timeout=budget)
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            self.killed += 1
            raise OverBudget(f"took longer than {budget:g}s") from None
        except ProcessExpired as exc:
            raise WorkerDied(f"the validating process died ({exc.exitcode})") from None
        except (BrokenProcessPool, RuntimeError) as exc:  # RuntimeError: pool not running
            await self.close()
            raise SandboxBroken(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        self._started = None
        if pool is not None:
            pool.stop()  # type: ignore[no-untyped-call]
            await asyncio.to_thread(pool.join, 10)
