"""A working day at the agent console and in the web chat (issue 20), in real headless
Chromium against the real app under uvicorn, on SQLite and PostgreSQL.

Sign-in by email and password and its expiry; a customer's follow-up after the agent
resolved reaching that agent again. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.desk import auth
from channels.webchat.session import COOKIE
from storage.models import AgentRole, AgentSession, utcnow
from tests.browser.test_agent_console import say, watch_errors
from tests.channels.webchat.helpers import new_session
from tests.conftest import make_settings
from tests.server import serve

if not os.environ.get("CI"):  # in CI a missing Playwright is an error, not a skip
    pytest.importorskip("playwright", reason="Playwright is not installed (uv sync)")
from playwright.async_api import Page, expect

expect.set_options(timeout=10_000)
PASSWORD = "Sommer im Kundenservice"
DESKTOP = {"width": 1440, "height": 900}
PHONE = {"width": 375, "height": 812}


async def sign_in(page: Page, base: str, email: str, password: str) -> None:
    await page.goto(f"{base}/agent")
    await page.fill("#email", email)
    await page.fill("#password", password)
    await page.press("#password", "Enter")


async def test_password_sign_in_expiry_and_reopen_after_resolve(
    db_url: str, browser: Any, artifacts: Path, request: pytest.FixtureRequest
) -> None:
    variant = request.node.callspec.params.get("db_url", "db")
    errors: list[str] = []
    async with serve(make_settings(db_url)) as (base, rt):
        async with rt.sessions() as s, s.begin():
            await auth.create_agent(
                s, "Anna Agentin", AgentRole.AGENT, email="anna@example.com", password=PASSWORD
            )
        session = await new_session(base)
        desk = await browser.new_context(locale="de-DE", viewport=DESKTOP)
        home = await browser.new_context(locale="de-DE", viewport={"width": 480, "height": 860})
        await home.add_cookies([{"name": COOKIE, "value": session, "url": base}])
        agent, chat = await desk.new_page(), await home.new_page()
        watch_errors(agent, errors)
        watch_errors(chat, errors)
        try:
            # a wrong password: one clear message, nothing about which part was wrong
            await sign_in(agent, base, "anna@example.com", "falsch falsch")
            await expect(agent.locator("#login-error")).to_have_text(
                "E-Mail-Adresse oder Passwort ist falsch."
            )
            await agent.screenshot(path=artifacts / f"workday-login-desktop-{variant}.png")
            await agent.fill("#password", PASSWORD)
            await agent.press("#password", "Enter")
            await expect(agent.locator("#me-name")).to_have_text("Anna Agentin")
            stored = await agent.evaluate("sessionStorage.getItem('cicbot.agent.token')")
            assert stored.startswith("cis_")
            assert await agent.locator("#password").input_value() == ""

            # the customer asks for a person; Anna claims, answers and resolves
            await chat.goto(f"{base}/")
            await say(chat, "hallo")
            await say(chat, "Mensch")
            await agent.locator("#list-queue .conv-item").click()
            await agent.click("#btn-claim")
            await agent.fill("#text", "Der Ersatz ist unterwegs.")
            await agent.press("#text", "Enter")
            await expect(
                chat.locator(".msg.out", has_text="Der Ersatz ist unterwegs.")
            ).to_be_visible()
            await agent.click("#btn-resolve")
            await expect(agent.locator("[data-testid=conv-status]")).to_have_text("Abgeschlossen")
            await expect(chat.locator(".msg.out").last).to_contain_text("als erledigt markiert")

            # her follow-up reaches Anna again, not the bot (finding 1)
            await say(chat, "Der Ersatz ist noch nicht da.")
            await expect(chat.locator(".msg.out").last).to_contain_text(
                "Anna Agentin hat es bearbeitet und antwortet Ihnen hier"
            )
            assert "nicht sicher" not in await chat.locator("#log").inner_text()
            mine = agent.locator("#list-mine .conv-item")
            await expect(mine).to_have_count(1)
            await expect(agent.locator("[data-testid=conv-status]")).to_have_text(
                "Ihnen zugewiesen"
            )
            await expect(agent.locator("#timeline")).to_contain_text(
                "Der Ersatz ist noch nicht da."
            )
            await agent.fill("#text", "Ich frage beim Versand nach.")
            await agent.press("#text", "Enter")
            await expect(
                chat.locator(".msg.out", has_text="Ich frage beim Versand nach.")
            ).to_be_visible()

            # the session ends after its idle time: back to the sign-in, with the reason
            idle = rt.settings.desk.session_idle_hours
            async with rt.sessions() as s, s.begin():
                await s.execute(
                    update(AgentSession).values(last_used_at=utcnow() - timedelta(hours=idle + 1))
                )
            await agent.reload()
            await expect(agent.locator("#login")).to_be_visible()
            await expect(agent.locator("#login-error")).to_have_text(
                "Ihre Sitzung ist beendet. Bitte melden Sie sich erneut an."
            )
            # signing in again and out: the server forgets the session too
            await agent.fill("#email", "anna@example.com")
            await agent.fill("#password", PASSWORD)
            await agent.press("#password", "Enter")
            await expect(agent.locator("#me-name")).to_have_text("Anna Agentin")
            await agent.click("#signout")
            await expect(agent.locator("#login")).to_be_visible()
            for _ in range(50):  # the sign-out's request is not awaited by the page
                async with rt.sessions() as s:
                    left = await s.scalar(select(func.count()).select_from(AgentSession))
                if not left:
                    break
                await agent.wait_for_timeout(100)
            assert left == 0
        except BaseException:
            for name, page in (("console", agent), ("webchat", chat)):
                await page.screenshot(path=artifacts / f"FAILED-workday-{name}-{variant}.png")
            raise
        finally:
            await desk.close()
            await home.close()
    assert not errors, errors
