"""Fixtures of the campaign and reminder tests: a controllable clock and a runtime on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.runtime import Runtime
from tests.conftest import RecordingChannel, make_settings

NOON = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # a Friday; 13:00 in Berlin, the company's zone


class Clock:
    def __init__(self, now: datetime = NOON) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def rt(db_url: str, clock: Clock) -> AsyncIterator[Runtime]:
    runtime = Runtime(make_settings(db_url), channels=[], clock=clock)
    runtime.channels["test"] = RecordingChannel()
    await runtime.start(dispatch=False)
    yield runtime
    await runtime.stop()
