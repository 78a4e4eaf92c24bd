"""The Alembic migrations create exactly the schema the models describe."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from storage.db import create_engine
from storage.migrate import alembic_config, current_head, heads, known, upgrade
from storage.models import Base
from tests.conftest import pg_database


async def _diff(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_migrated_schema_matches_models(db_url: str) -> None:
    assert await _diff(db_url) == []


async def test_downgrade_and_upgrade_round_trip(sqlite_url: str) -> None:
    await asyncio.to_thread(upgrade, sqlite_url, "head")
    await asyncio.to_thread(command.downgrade, alembic_config(sqlite_url), "base")
    assert await _tables(sqlite_url) == {"alembic_version"}
    await asyncio.to_thread(upgrade, sqlite_url, "head")
    tables = {"contacts", "touchpoints", "outbox", "inbox", "cases", "agent_cards"}
    assert tables <= await _tables(sqlite_url)
    assert current_head() == "0016"


def test_heads_read_from_the_files_agree_with_alembic() -> None:
    """Every command compares the database with `heads()`, read without importing alembic."""
    assert heads() == {current_head()}
    assert "0001" in known() and heads() <= known()


@pytest.mark.postgres
def test_workers_starting_at_once_migrate_once() -> None:
    """Two processes upgrading an empty PostgreSQL database at the same time both succeed."""
    with pg_database("cicbot_mig", migrate=False) as url:
        # separate processes, as workers are (Alembic's context is one per process)
        code = f"from storage.migrate import upgrade; upgrade({url!r})"
        procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        assert asyncio.run(_diff(url)) == []
