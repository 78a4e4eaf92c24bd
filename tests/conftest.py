"""Shared fixtures: databases (SQLite always; PostgreSQL when reachable), settings,
a runtime with a recording channel."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from bot.channel import ChannelAdapter, SendResult
from bot.channel.messages import InboundMessage, OutboundMessage
from bot.config import DatabaseSettings, DispatcherSettings, Settings, load_settings
from bot.runtime import Runtime
from storage import scratch
from storage.migrate import upgrade
from storage.models import Base
from tests.standins.slack_api import SlackStandIn
from tests.standins.telegram_api import TelegramStandIn

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CICBOT_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("CICBOT_REQUIRE_POSTGRES") == "1"
WEBCHAT_KEY = Path(tempfile.gettempdir()) / f"cicbot-tests-{os.getuid()}" / "webchat.key"
# every table of the models: a new table is truncated between tests without a list to keep
TABLES = tuple(t.name for t in reversed(Base.metadata.sorted_tables))


@pytest.fixture(scope="session", autouse=True)
def matcher_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The matcher cache of every bot the tests start: a folder of this session's, not the
    developer's ~/.cache (shared by the tests, so a base is fitted once per session)."""
    folder = tmp_path_factory.mktemp("matcher-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CICBOT_KNOWLEDGE_BASE__CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@contextmanager
def pg_database(prefix: str, *, migrate: bool = True) -> Iterator[str]:
    """A PostgreSQL database of its own, dropped afterwards; skipped (or, in CI, failed)
    when the server is unreachable."""
    try:
        url = asyncio.run(scratch.create(PG_ADMIN_URL, prefix))
    except Exception as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL required (CICBOT_REQUIRE_POSTGRES=1) but unreachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    try:
        if migrate:
            upgrade(url)
        yield url
    finally:
        asyncio.run(scratch.drop(PG_ADMIN_URL, url))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with pg_database(f"cicbot_test_{os.getpid()}") as url:
        yield url


async def _truncate(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


async def until_a_lock_is_awaited(probe: AsyncConnection, timeout: float = 10.0) -> None:
    """PostgreSQL: until a session of the probe's database waits for a lock (a statement
    under test has reached a row another connection holds), polled, not slept on."""
    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock'"
    )
    async with asyncio.timeout(timeout):
        while not (await probe.execute(waiting)).scalar():
            await probe.rollback()
            await asyncio.sleep(0.05)
    await probe.rollback()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """Every test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "cicbot.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    asyncio.run(_truncate(url))
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "cicbot.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


def make_settings(db_url: str, **overrides: Any) -> Settings:
    """The repository's config.yaml with the test database and fast retries."""
    base = load_settings(ROOT / "config.yaml")
    data = base.model_dump()
    data["database"] = DatabaseSettings(url=db_url, auto_migrate=False).model_dump()
    data["dispatcher"] = DispatcherSettings(
        base_backoff_seconds=0.05,
        max_backoff_seconds=0.5,
        poll_interval_seconds=0.05,
        lease_seconds=30,
    ).model_dump()
    # humans always on duty unless a test says otherwise (the suite runs on any weekday)
    data["business_hours"] = {
        "timezone": "UTC",
        "weekly": {
            d: ["00:00-23:59:59"] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        },
    }
    # the default (no CICBOT_WEBCHAT__SECRET): a key generated once into a file; the tests'
    # file lives outside the repository
    data["webchat"] = {**data["webchat"], "key_file": str(WEBCHAT_KEY)}
    data.update(overrides)
    return Settings(**data)


class RecordingChannel(ChannelAdapter):
    """A channel that records what it is asked to send; can be told to fail."""

    name = "test"

    def __init__(self, runtime: Runtime | None = None) -> None:
        self.sent: list[OutboundMessage] = []
        self.failures: list[Exception] = []  # raised by the next sends, in order
        self.event = asyncio.Event()

    async def send(self, message: OutboundMessage) -> SendResult:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(message)
        self.event.set()
        return SendResult(platform_message_id=f"t-{message.outbox_id}")

    def texts(self, recipient: str | None = None) -> list[str]:
        return [m.text for m in self.sent if recipient in (None, m.recipient_id)]

    async def wait_for(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.sent) < n:
                self.event.clear()
                await self.event.wait()


@pytest.fixture
async def runtime(db_url: str) -> AsyncIterator[Runtime]:
    rt = Runtime(make_settings(db_url), channels=[])
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    yield rt
    await rt.stop()


def recorder(rt: Runtime) -> RecordingChannel:
    ch = rt.channels["test"]
    assert isinstance(ch, RecordingChannel)
    return ch


async def settled(runtime: Runtime, timeout: float = 10.0) -> None:
    """Wait until no inbox row waits to be processed and no outbox row waits to be sent."""
    from storage.models import InboxStatus, InboxUpdate, OutboxMessage, OutboxStatus

    async def busy() -> bool:
        async with runtime.sessions() as s:
            inbox = await s.scalar(
                select(InboxUpdate.id)
                .where(InboxUpdate.status.in_([InboxStatus.PENDING, InboxStatus.PROCESSING]))
                .limit(1)
            )
            outbox = await s.scalar(
                select(OutboxMessage.id)
                .where(OutboxMessage.status.in_([OutboxStatus.PENDING, OutboxStatus.SENDING]))
                .limit(1)
            )
        return inbox is not None or outbox is not None

    async with asyncio.timeout(timeout):
        while await busy():
            await asyncio.sleep(0.03)


_counter = 0


def inbound(
    text: str = "",
    *,
    user: str = "u1",
    payload: str | None = None,
    mid: str | None = None,
    locale: str | None = "en",
    **kw: Any,
) -> InboundMessage:
    global _counter
    _counter += 1
    return InboundMessage(
        channel="test",
        sender_id=user,
        platform_message_id=mid or f"m{_counter}-{uuid.uuid4()}",
        thread_key=user,
        text=text,
        payload=payload,
        locale_hint=locale,
        kind="button" if payload else "message",
        **kw,
    )


# ---- the platform stand-ins (a module may define its own, e.g. with a cast of users) ----


@pytest.fixture
async def tg() -> AsyncIterator[TelegramStandIn]:
    async with TelegramStandIn() as standin:
        yield standin


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandIn]:
    async with SlackStandIn() as standin:
        yield standin
