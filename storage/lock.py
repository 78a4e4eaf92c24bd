"""One serving process per SQLite database (README: SQLite is for one process).

A second `cicbot serve` on the same SQLite file would also lead the campaign scheduler and
claim the same outbox rows; it is refused at start with a message naming the first one.
The lock is an advisory `flock` on `<database>.lock` beside the file: the kernel drops it
when the process ends, however it ends, so a crash leaves no stale lock behind.
PostgreSQL needs none: several workers share it by design (row locks, leases).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyServed(Exception):
    """Another process serves this SQLite database; the message says which and what to do."""


class ProcessLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyServed(
                f"another cicbot (pid {holder}) already serves the SQLite database "
                f"{self.path.with_suffix('')}: SQLite is for one process. Stop that one, or "
                "use PostgreSQL for several (docs/operations.md)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless)
            self._fd = None


def sqlite_lock(url: str) -> ProcessLock | None:
    """The lock of a SQLite file database; None for PostgreSQL and in-memory SQLite."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database).absolute()
    return ProcessLock(path.with_name(path.name + ".lock"))
