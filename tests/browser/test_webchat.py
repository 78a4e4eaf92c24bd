"""The web chat as a customer sees it (issue 20, findings 2, 4 and 5), in real headless
Chromium against the real app under uvicorn, on SQLite and PostgreSQL: a welcome view
with the company's name and an optional pre-chat form before the first word; a header
that says who is there (not whether the socket is open); the page chrome following the
language chosen in the chat; only the newest button row live; agent name, avatar and
times on the messages; "Hallo? Ist da jemand?" answered once with the place in the queue.
Screenshots at desktop and phone size go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bot.desk import auth
from bot.runtime import Runtime
from storage.models import AgentRole, Contact, Conversation, utcnow
from tests.browser.test_agent_console import say, watch_errors
from tests.conftest import make_settings
from tests.server import serve

if not os.environ.get("CI"):  # in CI a missing Playwright is an error, not a skip
    pytest.importorskip("playwright", reason="Playwright is not installed (uv sync)")
from playwright.async_api import expect

expect.set_options(timeout=10_000)
SIZES = {"desktop": {"width": 1280, "height": 860}, "phone": {"width": 375, "height": 812}}


async def test_web_chat_for_a_customer(
    db_url: str, browser: Any, artifacts: Path, request: pytest.FixtureRequest
) -> None:
    variant = request.node.callspec.params.get("db_url", "db")
    errors: list[str] = []
    async with serve(make_settings(db_url)) as (base, rt):
        async with rt.sessions() as s, s.begin():
            anna, _ = await auth.create_agent(s, "Anna Agentin", AgentRole.AGENT)
        ctx = await browser.new_context(locale="en-US", viewport=SIZES["desktop"])
        chat = await ctx.new_page()
        watch_errors(chat, errors)
        try:
            # before the first word: the company, who is there, a welcome and the form
            await chat.goto(f"{base}/")
            await expect(chat.locator("#title")).to_have_text("Beispiel GmbH")
            assert await chat.title() == "Beispiel GmbH · Customer service"
            await expect(chat.locator("#state")).to_have_text(
                "The virtual assistant answers at once"  # on duty, but no agent signed in
            )
            await expect(chat.locator("#welcome")).to_be_visible()
            await expect(chat.locator("#welcome-text")).to_contain_text("How can we help you?")
            await expect(chat.locator("#prechat")).to_be_visible()
            await expect(chat.locator("#conn")).to_be_hidden()
            for size, viewport in SIZES.items():
                await chat.set_viewport_size(viewport)
                await chat.screenshot(path=artifacts / f"webchat-welcome-{size}-{variant}.png")
            await chat.set_viewport_size(SIZES["desktop"])

            # the pre-chat form: the name and address go into the new contact
            await chat.fill("#prechat-name", "Erika Muster")
            await chat.fill("#prechat-email", "erika@example.com")
            await chat.click("#prechat-start")
            await expect(chat.locator("#prechat")).to_be_hidden()
            await say(chat, "hello")
            await expect(chat.locator(".msg.out").first).to_contain_text("Hello Erika Muster!")
            await expect(chat.locator("#welcome")).to_be_hidden()
            async with rt.sessions() as s:
                contact = (
                    await s.execute(select(Contact).where(Contact.name == "Erika Muster"))
                ).scalar_one()
                assert contact.email == "erika@example.com"

            # the bot's messages: its name, an avatar, a time
            first = chat.locator(".row.out").first
            await expect(first.locator(".who")).to_have_text("Virtual assistant")
            await expect(first.locator("time")).to_have_text(
                re.compile(r"^\d{1,2}:\d{2}( [AP]M)?$")
            )

            # "Sprache / Language" → Deutsch: the page's chrome follows
            await chat.get_by_role("button", name="Sprache / Language").click()
            await chat.get_by_role("button", name="Deutsch").click()
            await expect(chat.locator("#send")).to_have_text("Senden")
            await expect(chat.locator("html")).to_have_attribute("lang", "de")
            await expect(chat.locator("#text")).to_have_attribute("placeholder", "Ihre Nachricht…")
            await expect(chat.locator("#state")).to_have_text(
                "Der digitale Assistent antwortet sofort"
            )
            await expect(chat.locator(".row.out .who").first).to_have_text("Digitaler Assistent")

            # only the newest button row is live: older ones are disabled
            await say(chat, "Menü")
            rows = chat.locator(".choices")
            assert await rows.count() >= 2
            for i in range(await rows.count() - 1):
                for button in await rows.nth(i).locator("button").all():
                    await expect(button).to_be_disabled()
            await expect(rows.last.locator("button").first).to_be_enabled()

            # waiting for a person: "Hallo? Ist da jemand?" answered once, kindly
            await say(chat, "Mensch")
            await say(chat, "Hallo? Ist da jemand?")
            await expect(chat.locator(".msg.out").last).to_contain_text(
                "Sie sind an Position 1 der Warteschlange"
            )

            # Anna takes over: her name, her initials and the time on her messages
            async with rt.sessions() as s:
                conv = (
                    await s.execute(
                        select(Conversation).where(Conversation.contact_id == contact.id)
                    )
                ).scalar_one()
            await rt.desk.claim(anna, conv.id)
            await rt.desk.reply(anna, conv.id, "Guten Tag Frau Muster, ich bin für Sie da.")
            agent_row = chat.locator(".row.out", has_text="ich bin für Sie da")
            await expect(agent_row.locator(".who")).to_have_text("Anna Agentin")
            await expect(agent_row.locator(".avatar")).to_have_text("AA")
            await expect(agent_row.locator(".msg.agent")).to_have_count(1)
            # with an agent signed in, the header says the team is there
            async with rt.sessions() as s, s.begin():
                row = await s.get(type(anna), anna.id)
                assert row is not None
                row.last_seen_at = utcnow()
            await chat.reload()
            await expect(chat.locator("#state")).to_have_text("Unser Team ist für Sie da")
            await expect(chat.locator(".row.out .who", has_text="Anna Agentin")).to_have_count(2)
            for size, viewport in SIZES.items():
                await chat.set_viewport_size(viewport)
                await chat.screenshot(path=artifacts / f"webchat-conversation-{size}-{variant}.png")
        except BaseException:
            await chat.screenshot(path=artifacts / f"FAILED-webchat-{variant}.png")
            raise
        finally:
            await ctx.close()
    assert not errors, errors


async def test_chat_info_says_when_the_team_is_back(db_url: str) -> None:
    """Out of hours the header promises what the escalation promises: when the team is
    back (the issue's "online" while nobody was on duty)."""
    saturday = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    settings = make_settings(db_url, business_hours={"timezone": "Europe/Berlin"})
    async with serve(Runtime(settings, clock=lambda: saturday)) as (base, _):
        async with httpx.AsyncClient(base_url=base) as http:
            info = (await http.get("/chat/info")).json()
    assert info["presence"] == {
        "state": "closed",
        "on_duty": False,
        "agents_available": False,
        "next_open": "2026-12-07T08:00:00+01:00",  # Monday 08:00 in Berlin
    }
    assert info["company"] == "Beispiel GmbH" and info["prechat_form"] is True
    assert info["texts"]["de"]["closed"] == (
        "Unser Team ist ab 07.12.2026, 08:00 Uhr wieder da – der Assistent hilft sofort"
    )
    assert info["texts"]["en"]["closed"].startswith("Our team is back from 07 Dec 2026, 08:00")
