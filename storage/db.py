"""Engine and sessions. SQLite: WAL mode and BEGIN IMMEDIATE, so a write
transaction holds the write lock from its first statement (no upgrade deadlocks,
serialized across processes). PostgreSQL: a normal pool; callers lock rows."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from storage import sqlite_driver

T = TypeVar("T")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _prepare_sqlite_path(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


# what the stdlib would not encode either (a date, a dataclass) goes to it, and fails there
_ORJSON_AS_STDLIB = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def json_text(value: Any) -> str:
    """A JSON column's text: orjson (every message writes several JSON values; the stdlib's
    encoder was about 2 % of the process's CPU in bench/telegram.py's profile, and orjson
    encodes a Telegram update in about a ninth of its time). What orjson refuses (a lone
    surrogate, an integer key, one over 64 bits) is written by the stdlib's encoder, as
    before."""
    try:
        return orjson.dumps(value, option=_ORJSON_AS_STDLIB).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value)


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    if is_sqlite(url):
        _prepare_sqlite_path(url)
        # one trip to aiosqlite's thread per statement, not four (storage/sqlite_driver.py)
        engine = create_async_engine(
            url,
            echo=echo,
            hide_parameters=not echo,
            connect_args={"timeout": 30},
            module=sqlite_driver.dbapi(),
            json_serializer=json_text,
        )
        _configure_sqlite(engine)
        return engine
    # hide_parameters: an error's message must not carry customer text into the logs.
    # No pool_pre_ping: it cost a round trip (a SELECT 1, ~5% of the process's CPU in
    # bench/telegram.py) at every checkout, that is every transaction. A connection that
    # died meanwhile (a restart) fails its first statement as unavailable, which every
    # caller already retries or answers 503 to; the disconnect invalidates the whole pool
    # then, so the other pooled connections are replaced at their next checkout, not each
    # failing once (tests/storage/test_db.py).
    return create_async_engine(
        url,
        echo=echo,
        hide_parameters=not echo,
        pool_size=10,
        max_overflow=10,
        json_serializer=json_text,
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # take transaction control from the driver so we can BEGIN IMMEDIATE ourselves
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class SerialSession(AsyncSession):
    """A session that waits for its turn in asyncio, first come first served.

    SQLite has one writer at a time and every transaction here writes (BEGIN IMMEDIATE);
    without this, waiting transactions sleep and retry in SQLite's busy handler, which
    under load costs more than the work. Sessions must not be nested (none are).
    """

    _gate: asyncio.Lock

    async def __aenter__(self) -> Self:
        await self._gate.acquire()
        try:
            return await super().__aenter__()
        except BaseException:
            self._gate.release()
            raise

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await super().__aexit__(*exc)
        finally:
            self._gate.release()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    if engine.dialect.name == "sqlite":
        gated = type("SerialSession", (SerialSession,), {"_gate": asyncio.Lock()})
        return async_sessionmaker(engine, expire_on_commit=False, class_=gated)
    return async_sessionmaker(engine, expire_on_commit=False)


class OneStatement:
    """Sessions for work that is a single statement, atomic by itself (an INSERT of many
    rows, an executemany of sent marks): `async with one() as s: await s.execute(...)`.

    PostgreSQL: the session runs outside any transaction (AUTOCOMMIT), the statement in
    the server's implicit one, committed when its answer arrives (asyncpg waits for
    ReadyForQuery, after the commit; an executemany is atomic too). asyncpg sends BEGIN and
    COMMIT as round trips of their own: one statement in a transaction was three round
    trips, each a wake-up of the event loop and the driver's work. Elsewhere (SQLite): an
    ordinary transaction (BEGIN IMMEDIATE, the session's gate), its statements inline."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        bind = sessions.kw.get("bind")
        self.autocommit: async_sessionmaker[AsyncSession] | None = None
        if isinstance(bind, AsyncEngine) and bind.dialect.name == "postgresql":
            # an engine view sharing the pool; the setting is a flag of asyncpg's adapter
            # (no round trip), put back when the connection returns to the pool
            auto = bind.execution_options(isolation_level="AUTOCOMMIT")
            self.autocommit = async_sessionmaker(auto, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        if self.autocommit is not None:
            async with self.autocommit() as s:
                yield s
            return
        async with self.sessions() as s, s.begin(), inline(s):
            yield s


@contextlib.asynccontextmanager
async def inline(s: AsyncSession) -> AsyncIterator[None]:
    """SQLite: the statements of `s`'s transaction (begun here if it was not) run on the
    event loop while the transaction holds the write lock, without a trip to aiosqlite's
    thread each (storage/sqlite_driver.py). For short, index-bounded statements only (the
    inbox's group commit): a long one would stall the loop. Elsewhere: nothing changes."""
    conn = await s.connection()
    adapted = (await conn.get_raw_connection()).dbapi_connection
    if not isinstance(adapted, sqlite_driver.OneTripConnection) or adapted.inline:
        yield
        return
    adapted.inline = True
    try:
        yield
    finally:
        adapted.inline = False


def run_in_transaction(url: str, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """For command-line tools: run `fn` in one transaction on a fresh engine, committed
    when it returns, rolled back when it raises."""

    async def main() -> T:
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as s, s.begin():
                return await fn(s)
        finally:
            await engine.dispose()

    return asyncio.run(main())


# SQLSTATEs of a server that is away or refusing work for now: connection exceptions (08),
# insufficient resources (53: too many connections, disk full), operator intervention
# (57P01 admin shutdown, 57P02 crash shutdown, 57P03 starting up). asyncpg reports them
# as a plain DBAPIError, psycopg as OperationalError.
UNAVAILABLE_SQLSTATE = ("08", "53", "57P01", "57P02", "57P03")


def is_unavailable(exc: BaseException) -> bool:
    """The database or the way to it failed, not the work: worth trying again later."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        return (
            isinstance(exc, OperationalError | InterfaceError)
            or exc.connection_invalidated
            or (isinstance(sqlstate, str) and sqlstate.startswith(UNAVAILABLE_SQLSTATE))
        )
    return isinstance(exc, OSError | TimeoutError | PoolTimeout) or _closed_asyncpg(exc)


def _closed_asyncpg(exc: BaseException) -> bool:
    """asyncpg's own "connection is closed", raised unwrapped when the connection drops
    while SQLAlchemy sets a new one up (its JSON codec); SQLAlchemy's is_disconnect
    tests the same words."""
    from asyncpg.exceptions import ConnectionDoesNotExistError
    from asyncpg.exceptions import InterfaceError as AsyncpgInterfaceError

    return isinstance(exc, ConnectionDoesNotExistError) or (
        isinstance(exc, AsyncpgInterfaceError) and "connection is closed" in str(exc)
    )
