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
from tests.standins.slack_api import SlackStandIn
from tests.standins.telegram_api import TelegramStandIn


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
async def tg() -> AsyncIterator[TelegramStandIn]:
    async with TelegramStandIn() as stand_in:
        yield stand_in


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    return tmp_path
