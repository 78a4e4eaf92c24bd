"""/docs in real Chromium (issue 15, finding 15): Swagger UI comes from the app itself and
runs under its CSP without a violation, and the Authorize button takes an agent's token
that "Try it out" then sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from bot import auth
from storage.models import Agent, AgentRole
from tests.browser.test_agent_console import watch_errors
from tests.conftest import make_settings
from tests.server import serve

pytest.importorskip("playwright")
from playwright.async_api import expect


async def test_docs_authorize_and_try_it_out(
    sqlite_url: str, browser: Any, artifacts: Path
) -> None:
    errors: list[str] = []
    async with serve(make_settings(sqlite_url)) as (base, rt):
        async with rt.sessions() as s, s.begin():
            agent, token = await auth.create_agent(s, "Doris Doku", AgentRole.AGENT)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        watch_errors(page, errors)
        outside: list[str] = []
        page.on(
            "request",
            lambda r: outside.append(r.url) if not r.url.startswith(base) else None,
        )
        try:
            await page.goto(f"{base}/docs")
            me = page.locator('.opblock-summary-path[data-path="/api/v1/me"]')
            await expect(me).to_be_visible()
            await page.click("button.authorize")
            await page.locator(".auth-container input").fill(token)
            await page.click(".auth-btn-wrapper button.authorize")
            await page.click("button.btn-done")
            await me.click()
            await page.click("button.try-out__btn")
            await page.click("button.execute")
            live = page.locator(".live-responses-table tbody .response-col_status").first
            await expect(live).to_contain_text("200")
            await expect(page.locator(".live-responses-table")).to_contain_text("Doris Doku")
            await page.screenshot(path=artifacts / "docs.png")
        finally:
            await context.close()
            async with rt.sessions() as s, s.begin():
                await s.execute(delete(Agent).where(Agent.id == agent.id))
    assert not outside, outside
    assert not errors, errors
