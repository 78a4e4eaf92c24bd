"""A process's descendants from /proc (Linux; empty elsewhere), to tell that none outlive it.

Its own light module: tests/bot/channel/test_sandbox.py imports it, and that module is
imported again in sandbox workers (its functions run there by reference).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

Tree = dict[int, int]  # pid -> start time (a reused pid has another)


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> Tree:
    """Every process below `pid` now."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (found := stat(int(entry.name))) is not None:
                children.setdefault(found[1], []).append(int(entry.name))
    tree: Tree = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if (found := stat(child)) is not None:
                tree[child] = found[2]
                todo.append(child)
    return tree


def running(tree: Tree) -> dict[int, str]:
    """pid -> state of the processes of `tree` still there (a zombie is not)."""
    left = {}
    for pid, started in tree.items():
        found = stat(pid)
        if found is not None and found[2] == started and found[0] not in "ZX":
            left[pid] = found[0]
    return left


def gone_within(tree: Tree, seconds: float) -> dict[int, str]:
    """Wait, polling, until no process of `tree` runs, at most `seconds`; those left."""
    deadline = time.monotonic() + seconds
    while (left := running(tree)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def kill(tree: Tree) -> dict[int, str]:
    """SIGKILL to the processes of `tree` still there; those it went to."""
    left = running(tree)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left
