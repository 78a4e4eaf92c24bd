"""A working day at the agent console and in the web chat (issue 20), in real headless
Chromium against the real app under uvicorn, on SQLite and PostgreSQL.

Sign-in by email and password and its expiry; a customer's follow-up after the agent
resolved reaching that agent again; the All tab, search and a canned reply. Screenshots
go to test-artifacts/.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from bot.channel.messages import InboundMessage
from bot.desk import auth
from channels.webchat.session import COOKIE
from storage.models import AgentRole, AgentSession, Conversation, utcnow
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
            await agent.click("#tab-unassigned")
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

            # the session ends: back to the sign-in, with the reason, whether the open page
            # notices first (the customer writes; the page's refresh is refused) ...
            expired = "Ihre Sitzung ist beendet. Bitte melden Sie sich erneut an."
            await expire_sessions(rt)
            await chat.fill("#text", "Hallo?")
            await chat.press("#text", "Enter")
            await expect(agent.locator("#login")).to_be_visible()
            await expect(agent.locator("#login-error")).to_have_text(expired)
            # ... and a reload after it still says why (CI once reloaded just after a
            # background refresh had signed the tab out: the reason was gone)
            await agent.reload()
            await expect(agent.locator("#login")).to_be_visible()
            await expect(agent.locator("#login-error")).to_have_text(expired)
            # signing in again and out: the server forgets the session too
            await agent.fill("#email", "anna@example.com")
            await agent.fill("#password", PASSWORD)
            await agent.press("#password", "Enter")
            await expect(agent.locator("#me-name")).to_have_text("Anna Agentin")
            await expect(agent.locator("#login-error")).to_be_hidden()
            # ... or the reload is the first to ask with the stale token
            await expire_sessions(rt)
            await agent.reload()
            await expect(agent.locator("#login-error")).to_have_text(expired)
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


async def expire_sessions(rt: Any) -> None:
    """Every agent session idle for longer than the desk allows, and past its end: a
    request of the page in flight records its use (last_used_at) after this update, which
    would revive an only-idle session; its end stays (the idle rule alone is tested in
    tests/bot/web/test_signin_api.py)."""
    idle = rt.settings.desk.session_idle_hours
    past = utcnow() - timedelta(hours=idle + 1)
    async with rt.sessions() as s, s.begin():
        await s.execute(update(AgentSession).values(last_used_at=past, expires_at=past))


async def web_customer(rt: Any, visitor: str, name: str, *texts: str) -> int:
    """A web-chat customer who writes (through the engine, as the socket would)."""
    conv = 0
    for text in texts:
        result = await rt.engine.handle(
            InboundMessage(
                channel="webchat",
                sender_id=visitor,
                platform_message_id=f"{visitor}-{uuid.uuid4()}",
                thread_key=visitor,
                text=text,
                sender_name=name,
                locale_hint="de",
            )
        )
        conv = result.conversation_id or conv
    return conv


async def test_all_tab_search_and_canned_reply(
    db_url: str, browser: Any, artifacts: Path, request: pytest.FixtureRequest
) -> None:
    variant = request.node.callspec.params.get("db_url", "db")
    errors: list[str] = []
    canned_text = "Ihre Sendung ist unterwegs und kommt in ein bis zwei Werktagen an."
    async with serve(make_settings(db_url)) as (base, rt):
        async with rt.sessions() as s, s.begin():
            await auth.create_agent(
                s, "Sina Schmidt", AgentRole.SUPERVISOR, email="sina@example.com", password=PASSWORD
            )
            await auth.create_agent(
                s, "Anna Agentin", AgentRole.AGENT, email="anna@example.com", password=PASSWORD
            )
            ben, _ = await auth.create_agent(s, "Ben Berater", AgentRole.AGENT)
            _, root_token = await auth.create_agent(s, "Root", AgentRole.ADMIN)
        headers = {"Authorization": f"Bearer {root_token}"}
        async with httpx.AsyncClient(base_url=f"{base}/api/v1", headers=headers) as http:
            r = await http.put(
                "/canned/lieferung", json={"short_code": "lieferung", "text": canned_text}
            )
            assert r.status_code == 200, r.text
            r = await http.put(
                "/canned/danke", json={"short_code": "danke", "text": "Vielen Dank!"}
            )
            assert r.status_code == 200
        erika = await web_customer(
            rt, "visitor-erika", "Erika Muster", "Mein Paket 4711 ist beschädigt", "Mensch"
        )
        await rt.desk.claim(ben, erika)
        max_conv = await web_customer(rt, "visitor-max", "Max Kunde", "hallo", "Mensch")

        ctx = await browser.new_context(locale="de-DE", viewport=DESKTOP)
        lead, agent = await ctx.new_page(), await ctx.new_page()
        watch_errors(lead, errors)
        watch_errors(agent, errors)
        try:
            # the team lead sees colleagues' open conversations under All
            await sign_in(lead, base, "sina@example.com", PASSWORD)
            await expect(lead.locator("#me-name")).to_have_text("Sina Schmidt")
            await lead.click("#tab-all")
            items = lead.locator("#list-all .conv-item")
            await expect(items).to_have_count(2)
            await expect(lead.locator("#count-all")).to_have_text("2")
            await expect(lead.locator(f'#list-all [data-id="{erika}"]')).to_contain_text(
                "Ben Berater"
            )
            await expect(lead.locator(f'#list-all [data-id="{max_conv}"]')).to_contain_text(
                "wartet"
            )
            await lead.screenshot(path=artifacts / f"workday-all-desktop-{variant}.png")

            # search across messages and contacts
            await lead.fill("#search", "4711")
            hit = lead.locator("#search-messages .conv-item")
            await expect(hit).to_have_count(1)
            await expect(hit.locator("mark")).to_have_text("4711")
            await expect(lead.locator("#search-results")).to_be_visible()
            await expect(lead.locator(".list-section[data-list=all]")).to_be_hidden()
            await lead.screenshot(path=artifacts / f"workday-search-desktop-{variant}.png")
            await hit.click()
            await expect(lead.locator("[data-testid=conv-status]")).to_contain_text("Ben Berater")
            await lead.fill("#search", "max kunde")
            await expect(lead.locator("#search-contacts .conv-item")).to_have_count(1)
            await lead.press("#search", "Escape")
            await expect(lead.locator("#search-results")).to_be_hidden()
            await expect(lead.locator(".list-section[data-list=all]")).to_be_visible()

            # an agent answers with a canned reply: "/" opens the menu, Enter takes it
            await sign_in(agent, base, "anna@example.com", PASSWORD)
            await agent.click("#tab-unassigned")
            await agent.locator(f'#list-queue [data-id="{max_conv}"]').click()
            await agent.click("#btn-claim")
            await expect(agent.locator("#text")).to_be_enabled()
            await agent.locator("#text").press_sequentially("/lie")
            menu = agent.locator("#canned-menu")
            await expect(menu).to_be_visible()
            await expect(menu.locator(".canned-item")).to_have_count(1)
            await expect(menu.locator(".canned-item.active")).to_contain_text("/lieferung")
            await agent.screenshot(path=artifacts / f"workday-canned-desktop-{variant}.png")
            await agent.press("#text", "Enter")
            await expect(menu).to_be_hidden()
            await expect(agent.locator("#text")).to_have_value(canned_text)  # not sent yet
            await agent.press("#text", "Enter")
            await expect(
                agent.locator("#timeline .tp.out.agent", has_text=canned_text)
            ).to_have_count(1)
            await agent.locator("#text").press_sequentially("/xyz")
            await expect(menu).to_contain_text("Keine Vorlage beginnt mit „/xyz“.")
            await agent.press("#text", "Escape")
            await expect(menu).to_be_hidden()
        except BaseException:
            for n, page in enumerate(ctx.pages):
                await page.screenshot(path=artifacts / f"FAILED-workday-inbox-{n}-{variant}.png")
            raise
        finally:
            await ctx.close()
    assert not errors, errors


# what sticks out of the viewport or has its text cut off (an ellipsis is allowed only
# where it is meant: names in lists and headers)
CUT_JS = """() => {
  const w = window.innerWidth, out = [], page = document.documentElement;
  if (page.scrollWidth > w) out.push('page scrolls sideways: ' + page.scrollWidth);
  const all = 'button, a, input, select, textarea, h1, h2, .chip, .count';
  for (const node of document.querySelectorAll(all)) {
    const r = node.getBoundingClientRect();
    if (!r.width || !r.height || node.closest('[hidden]')) continue;
    const style = getComputedStyle(node);
    if (style.visibility === 'hidden' || style.display === 'none') continue;
    const name = node.id || node.dataset.list || node.textContent.trim().slice(0, 30);
    if (r.left < -0.5 || r.right > w + 0.5) out.push(`outside: ${name} ${r.left}..${r.right}`);
    const cut = node.matches('button') && node.scrollWidth > node.clientWidth + 1;
    if (cut) out.push('clipped: ' + name);
  }
  return out;
}"""


async def test_console_fits_a_phone(
    db_url: str, browser: Any, artifacts: Path, request: pytest.FixtureRequest
) -> None:
    """Finding 9: at 375 x 812 the header's tabs and Sign out, the lists, a conversation
    with its actions and the supervisor view fit, nothing cut off; desktop and phone
    screenshots of each view."""
    variant = request.node.callspec.params.get("db_url", "db")
    errors: list[str] = []
    async with serve(make_settings(db_url)) as (base, rt):
        async with rt.sessions() as s, s.begin():
            await auth.create_agent(
                s, "Sina Schmidt", AgentRole.SUPERVISOR, email="sina@example.com", password=PASSWORD
            )
        conv = await web_customer(
            rt, "visitor-phone", "Erika Mustermann", "Mein Paket ist beschädigt", "Mensch"
        )
        for size, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
            ctx = await browser.new_context(
                locale="de-DE",
                viewport=viewport,
                is_mobile=size == "phone",
                has_touch=size == "phone",
            )
            page = await ctx.new_page()
            watch_errors(page, errors)

            def shot(view: str, size: str = size) -> Path:
                return artifacts / f"console-{view}-{size}-{variant}.png"

            try:
                await page.goto(f"{base}/agent")
                await expect(page.locator("#email")).to_be_visible()
                assert await page.evaluate(CUT_JS) == []
                await page.screenshot(path=shot("login"))
                await page.fill("#email", "sina@example.com")
                await page.fill("#password", PASSWORD)
                await page.press("#password", "Enter")
                await expect(page.locator("#signout")).to_be_visible()
                await expect(page.locator("#tab-supervisor")).to_be_visible()
                await page.click("#tab-unassigned")
                await expect(page.locator("#list-queue .conv-item")).to_have_count(1)
                assert await page.evaluate(CUT_JS) == []
                await page.screenshot(path=shot("lists"))
                await page.locator(f'#list-queue [data-id="{conv}"]').click()
                await expect(page.locator("#btn-claim")).to_be_visible()
                await page.click("#btn-claim")
                await expect(page.locator("#btn-resolve")).to_be_visible()
                await expect(page.locator("#text")).to_be_enabled()
                if size == "phone":
                    await expect(page.locator(".lists")).to_be_hidden()
                assert await page.evaluate(CUT_JS) == []
                await page.screenshot(path=shot("conversation"))
                if size == "phone":
                    await page.click("#btn-back")
                    await expect(page.locator(".lists")).to_be_visible()
                    await expect(page.locator("#btn-back")).to_be_hidden()
                    await page.click("#tab-mine")
                    await expect(page.locator("#list-mine .conv-item")).to_have_count(1)
                else:
                    await expect(page.locator("#btn-back")).to_be_hidden()
                await page.click("#tab-supervisor")
                await expect(page.locator("#sv-body")).to_be_visible()
                await expect(page.locator("#supervisor")).not_to_have_attribute("aria-busy", "true")
                assert await page.evaluate(CUT_JS) == []
                await page.screenshot(path=shot("supervisor"), full_page=True)
                await page.click("#tab-desk")
            except BaseException:
                await page.screenshot(path=artifacts / f"FAILED-console-{size}-{variant}.png")
                raise
            finally:
                await ctx.close()
            if size == "phone":  # the desktop round claims it again from the queue
                async with rt.sessions() as s, s.begin():
                    row = await s.get(Conversation, conv)
                    assert row is not None
                    row.status, row.assignee, row.queued_at = "queued", None, utcnow()
    assert not errors, errors
