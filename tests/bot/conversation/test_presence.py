"""Who is there for a waiting customer (bot/desk/presence.py): the place in the queue,
told once when they ask whether anybody is there; agents online; on duty or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.conversation import presence
from bot.desk import auth
from bot.runtime import Runtime
from storage.models import Agent, utcnow
from tests.conftest import RecordingChannel, inbound, make_settings


async def queued(rt: Runtime, user: str) -> None:
    for text in ("hallo", "Mensch"):
        await rt.engine.handle(inbound(text, user=user, locale="de"))


async def test_is_anybody_there_gets_the_place_in_the_queue_once(runtime: Runtime) -> None:
    await queued(runtime, "first")
    await queued(runtime, "second")
    await runtime.engine.handle(inbound("Es ist dringend", user="second", locale="de"))
    asked = await runtime.engine.handle(inbound("Hallo? Ist da jemand?", user="second"))
    assert asked.replies == [
        "Ja, wir sind für Sie da! Sie sind an Position 2 der Warteschlange – eine Kollegin"
        " oder ein Kollege antwortet Ihnen gleich hier im Chat."
    ]
    again = await runtime.engine.handle(inbound("Hallo?", user="second"))
    assert again.replies == []  # once is kind, twice is noise
    first = await runtime.engine.handle(inbound("Ist da jemand?", user="first"))
    assert first.replies[0].startswith("Ja, wir sind für Sie da! Sie sind an Position 1 ")
    assert (await runtime.engine.handle(inbound("Bestellung 4711", user="first"))).replies == []


@pytest.fixture
async def closed(db_url: str) -> AsyncIterator[Runtime]:
    """Business hours Monday 08:00-18:00 only; the clock on a Saturday."""
    saturday = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    hours = {"timezone": "Europe/Berlin", "weekly": {"mon": ["08:00-18:00"]}}
    rt = Runtime(make_settings(db_url, business_hours=hours), channels=[], clock=lambda: saturday)
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    yield rt
    await rt.stop()


async def test_out_of_hours_the_same_promise_as_at_the_escalation(closed: Runtime) -> None:
    await closed.engine.handle(inbound("hallo", user="sa", locale="de"))
    escalated = await closed.engine.handle(inbound("Mensch", user="sa", locale="de"))
    assert "ab 07.12.2026, 08:00 Uhr" in " ".join(escalated.replies)
    await closed.engine.handle(inbound("noch etwas", user="sa"))
    asked = await closed.engine.handle(inbound("Ist da jemand?", user="sa"))
    assert asked.replies == [
        "Ihre Nachricht ist angekommen. Sie sind an Position 1 der Warteschlange; unser Team"
        " ist ab 07.12.2026, 08:00 Uhr wieder da und antwortet Ihnen dann hier."
    ]


async def test_availability_counts_agents_with_the_console_open(runtime: Runtime) -> None:
    now = utcnow()
    async with runtime.sessions() as s, s.begin():
        here, _ = await auth.create_agent(s, "Here")
        away, _ = await auth.create_agent(s, "Away")
        here.last_seen_at = now - timedelta(seconds=30)
        away.last_seen_at = now - timedelta(hours=1)
    async with runtime.sessions() as s:
        there = await presence.availability(s, runtime.settings.business_hours, now)
        assert there.on_duty and there.agents_online == 1 and there.agents_available
        gone = await s.get(Agent, here.id)
        assert gone is not None
    async with runtime.sessions() as s, s.begin():
        await auth.revoke(s, here.id)
    async with runtime.sessions() as s:
        there = await presence.availability(s, runtime.settings.business_hours, now)
        assert there.agents_online == 0 and not there.agents_available
