"""Fixtures of the fault tests: a fresh PostgreSQL database per test (servers run as
subprocesses on it, so nothing of another test may be left in it), and the stand-ins.

Like `pg_url` in tests/conftest.py: skipped without PostgreSQL, failed when
CICBOT_REQUIRE_POSTGRES=1 (CI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import pg_database
from tests.reliability.harness import database


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    with pg_database("cicbot_rel") as url:
        yield url


@pytest.fixture
async def db(fresh_pg: str) -> AsyncIterator[AsyncEngine]:
    engine = database(fresh_pg)
    yield engine
    await engine.dispose()


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path
