"""The README's screenshots of the web chat and the agent console (docs/img/), taken from
the real app on a throw-away SQLite database in headless Chromium: `make screenshots`.

A customer fills the pre-chat form, asks for a person and is answered by an agent; the
agent's console shows the conversation with the customer's case, at desktop and phone
size. Run it again after changing the pages so that the README shows what a newcomer gets.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from playwright.async_api import Page, async_playwright, expect

from bot.desk import auth
from storage.migrate import upgrade_async
from storage.models import Agent, AgentRole, Case, Conversation, utcnow
from tests.browser.conftest import CHROMIUM_ARGS, chromium_path
from tests.conftest import make_settings
from tests.server import serve

PASSWORD = "Screenshots im Kundenservice"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 812}


async def say(chat: Page, text: str) -> None:
    replies = await chat.locator(".msg.out").count()
    await chat.fill("#text", text)
    await chat.press("#text", "Enter")
    await expect(chat.locator(".msg.out")).not_to_have_count(replies)


async def take(out: Path, db: Path) -> list[Path]:
    url = f"sqlite+aiosqlite:///{db}"
    await upgrade_async(url)
    shots: list[Path] = []
    path = chromium_path()
    if path is None:
        raise SystemExit("Chromium not found: apt-get install -y chromium (or CICBOT_CHROMIUM)")
    async with serve(make_settings(url)) as (base, rt), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        async with rt.sessions() as s, s.begin():
            anna, _ = await auth.create_agent(
                s, "Anna Berger", AgentRole.SUPERVISOR, email="anna@example.com", password=PASSWORD
            )
        home = await browser.new_context(locale="de-DE", viewport=DESKTOP)
        chat = await home.new_page()
        await chat.goto(f"{base}/")
        await expect(chat.locator("#welcome-text")).not_to_be_empty()
        for name, size in (("webchat-welcome", DESKTOP), ("webchat-welcome-phone", PHONE)):
            await chat.set_viewport_size(size)
            shots.append(out / f"{name}.png")
            await chat.screenshot(path=shots[-1])
        await chat.set_viewport_size(DESKTOP)
        await chat.fill("#prechat-name", "Erika Mustermann")
        await chat.fill("#prechat-email", "erika@example.com")
        await chat.click("#prechat-start")
        await say(chat, "Hallo")
        await say(chat, "Mein Paket A-12345 ist seit einer Woche nicht angekommen.")
        await say(chat, "Ich möchte mit einem Menschen sprechen")
        async with rt.sessions() as s, s.begin():
            conv = (
                await s.execute(Conversation.__table__.select().order_by(Conversation.id.desc()))
            ).first()
            assert conv is not None
            now = utcnow()
            s.add(
                Case(
                    reference=f"C-{now.year}-{uuid.uuid4().int % 900000 + 100000:06d}",
                    contact_id=conv.contact_id,
                    conversation_id=conv.id,
                    category="delivery",
                    description="Paket A-12345 seit einer Woche nicht zugestellt.",
                    order_reference="A-12345",
                    severity="high",
                    desired_resolution="replacement",
                    priority=35,
                    sla_due_at=now + timedelta(hours=20),
                )
            )
        await rt.desk.claim(anna, conv.id)
        await rt.desk.reply(
            anna, conv.id, "Guten Tag Frau Mustermann, ich sehe mir die Sendung sofort an."
        )
        await expect(chat.locator(".row.out .who", has_text="Anna Berger")).to_have_count(2)
        async with rt.sessions() as s, s.begin():  # as if her console were open
            row = await s.get(Agent, anna.id)
            assert row is not None
            row.last_seen_at = utcnow()
        await chat.reload()
        await expect(chat.locator("#state")).to_have_attribute("data-state", "team_online")
        await chat.fill("#text", "Danke, das ging schnell!")  # to the agent: no bot reply
        await chat.press("#text", "Enter")
        await expect(chat.locator(".msg.in.pending")).to_have_count(0)
        for name, size in (("webchat", DESKTOP), ("webchat-phone", PHONE)):
            await chat.set_viewport_size(size)
            await chat.evaluate("document.getElementById('log').scrollTop = 1e9")  # the newest
            shots.append(out / f"{name}.png")
            await chat.screenshot(path=shots[-1])

        desk = await browser.new_context(locale="de-DE", viewport=DESKTOP)
        console = await desk.new_page()
        await console.goto(f"{base}/agent")
        await console.fill("#email", "anna@example.com")
        await console.fill("#password", PASSWORD)
        await console.press("#password", "Enter")
        await console.click("#tab-mine")
        await console.locator(f'#list-mine [data-id="{conv.id}"]').click()
        await expect(console.locator("#timeline")).to_contain_text("Danke, das ging schnell!")
        await console.locator("#text").fill("Ich habe beim Versand nachgefragt …")
        for name, size in (("console", DESKTOP), ("console-phone", PHONE)):
            await console.set_viewport_size(size)
            await console.evaluate("document.getElementById('timeline').scrollTop = 1e9")
            shots.append(out / f"{name}.png")
            await console.screenshot(path=shots[-1])
        await desk.close()
        await home.close()
        await browser.close()
    return shots


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shots = asyncio.run(take(out, Path(tmp) / "screenshots.db"))
    print("\n".join(str(p) for p in shots))


if __name__ == "__main__":
    main()
