"""SQLite's one-trip cursor (storage/sqlite_driver.py): the same results as aiosqlite's own,
and inline statements only inside a transaction that holds the write lock."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import create_engine, inline, session_factory


async def test_statements_give_what_a_plain_cursor_gives(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
            one = await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
            assert one.lastrowid == 1 and one.rowcount == 1
            many = await conn.execute(
                text("INSERT INTO t (v) VALUES (:v)"), [{"v": "b"}, {"v": "c"}]
            )
            assert many.rowcount == 2
            back = await conn.execute(text("INSERT INTO t (v) VALUES ('d') RETURNING id, v"))
            assert back.all() == [(4, "d")]
            changed = await conn.execute(text("UPDATE t SET v = v || '!' WHERE id > 2"))
            assert changed.rowcount == 2
            rows = await conn.execute(text("SELECT v FROM t ORDER BY id"))
            assert rows.scalars().all() == ["a", "b", "c!", "d!"]
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
    finally:
        await engine.dispose()


async def test_inline_runs_on_the_loop_only_while_the_write_lock_is_held(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    sessions = session_factory(engine)
    loop_thread = threading.get_ident()

    async def ran_on_loop(s: AsyncSession) -> bool:
        """Which thread SQLite ran the statement in (a function it calls reports it)."""
        raw = (await (await s.connection()).get_raw_connection()).driver_connection
        assert raw is not None
        await raw.create_function("tid", 0, threading.get_ident)
        return (await s.execute(text("SELECT tid()"))).scalar() == loop_thread

    try:
        async with sessions() as s, s.begin():
            assert not await ran_on_loop(s)  # a trip to aiosqlite's thread
            async with inline(s):
                assert await ran_on_loop(s)
                await s.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
                await s.execute(text("INSERT INTO t (v) VALUES ('x')"))
            assert not await ran_on_loop(s)
        async with sessions() as s:
            assert (await s.execute(text("SELECT count(*) FROM t"))).scalar() == 1
            await s.commit()  # the transaction ended: inline has nothing to hold on to
            async with inline(s):
                assert await ran_on_loop(s)  # inline began a new one (BEGIN IMMEDIATE)
            await s.rollback()
    finally:
        await engine.dispose()
