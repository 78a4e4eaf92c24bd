"""aiosqlite with one trip to its thread per statement.

aiosqlite runs the sqlite3 connection in a thread of its own; each call is a trip there and
back (a queue put, a wake-up of the thread, a call_soon_threadsafe back to the event loop,
a GIL handover each way). SQLAlchemy's adapter makes four per statement: open a cursor,
execute, fetch the rows, close the cursor. This cursor makes one: the whole statement (open,
execute, fetch, close) is a single function run in aiosqlite's thread, on the same sqlite3
connection, in the same order, so nothing changes but the trips (the profile of
bench/telegram.py showed them as the biggest single cost per message on SQLite).

Only the buffered cursor is replaced; server-side cursors (`stream`) keep aiosqlite's own.

Inline (`storage.db.inline`): the hot path (the inbox's group commit) may have the statements
of its transaction run on the event loop itself, no trip at all. Only while the transaction
holds SQLite's write lock (every transaction here starts with BEGIN IMMEDIATE, which is
taken in the thread, as COMMIT is): a statement then never waits for another connection
(WAL: readers never block the writer), so it costs what SQLite's work costs, microseconds
for the hot path's index lookups and single-row writes. The connection is opened with
check_same_thread=False for it; the two threads never use it at once (each statement is
awaited before the next, and the mutex is checked).
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

# what one statement gives back: description, rows, rowcount, lastrowid
Outcome = tuple[Any, list[Any], int, int | None]


def _statement(conn: sqlite3.Connection, operation: Any, parameters: Any, many: bool) -> Outcome:
    """Runs in aiosqlite's thread: the whole statement, its cursor opened and closed here."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:  # no aiosqlite cursor of its own
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    async def _async_soft_close(self) -> None:
        return  # nothing open: the statement's cursor was closed in the thread

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        try:
            await_(self._run(operation, parameters, False))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        try:
            await_(self._run(operation, seq_of_parameters, True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _run(self, operation: Any, parameters: Any, many: bool) -> None:
        connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        adapted: OneTripConnection = self._adapt_connection  # type: ignore[assignment]
        raw = connection._connection
        if (
            adapted.inline
            and raw is not None
            and raw.in_transaction  # begun: BEGIN IMMEDIATE holds the write lock
            and not adapted._execute_mutex.locked()
        ):
            outcome = _statement(raw, operation, parameters, many)
        else:
            async with adapted._execute_mutex:
                outcome = await connection._execute(  # type: ignore[no-untyped-call]
                    _statement, connection._conn, operation, parameters, many
                )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("inline",)
    _cursor_cls = OneTripCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self.inline = False  # statements inside a write transaction on the loop (see above)


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module for `create_async_engine(..., module=...)`."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        kw["check_same_thread"] = False  # inline statements (see above)
        adapted = super().connect(*arg, **kw)
        return OneTripConnection(self, adapted._connection)


def dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)
