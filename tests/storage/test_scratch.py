"""Throw-away PostgreSQL databases (storage/scratch.py), used by the tests and benches."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from storage import scratch
from tests.conftest import PG_ADMIN_URL


async def _exists(name: str) -> bool:
    engine = create_async_engine(PG_ADMIN_URL)
    try:
        async with engine.connect() as conn:
            q = text("SELECT count(*) FROM pg_database WHERE datname = :n")
            return bool((await conn.execute(q, {"n": name})).scalar_one())
    finally:
        await engine.dispose()


async def test_a_scratch_database_is_dropped_even_while_connected(pg_url: str) -> None:
    # (the pg_url fixture: skipped without a server, failed in CI)
    async with scratch.database(PG_ADMIN_URL, "cicbot_scratch") as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("cicbot_scratch_") and await _exists(name)
        engine = create_async_engine(url)
        conn = await engine.connect()  # left open: DROP … WITH (FORCE) ends it
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        await scratch.drop(PG_ADMIN_URL, url)
        with pytest.raises(DBAPIError):  # its server side is gone
            await conn.execute(text("SELECT 1"))
        await engine.dispose()
    assert not await _exists(name)
