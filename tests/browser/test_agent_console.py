"""The agent console in a real browser: a web-chat customer asks for a person, an agent
signs in at /agent, sees the conversation arrive in the queue live, claims it, replies,
writes an internal note, moves the case on and resolves; the customer's own web chat
page shows the reply and the status messages and never the note.

Runs the real app under uvicorn (on SQLite and PostgreSQL) and real headless Chromium.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select

from bot.desk import auth
from bot.runtime import Runtime
from channels.webchat.session import COOKIE
from storage import queries
from storage.models import (
    Agent,
    AgentRole,
    Case,
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Identity,
    utcnow,
)
from tests.channels.webchat.helpers import new_session
from tests.conftest import make_settings
from tests.server import serve

if not os.environ.get("CI"):  # in CI a missing Playwright is an error, not a skip
    pytest.importorskip("playwright", reason="Playwright is not installed (uv sync)")
from playwright.async_api import Page, expect

expect.set_options(timeout=10_000)
LIVE = 5_000  # below the console's 10 s polling: an arrival this fast came by the event stream
CUSTOMER = "Erika Mustermann"
REPLY = "Guten Tag Frau Mustermann, ich kümmere mich sofort um Ihre Lieferung."
NOTE = "Kundin ist Segment A – Kulanz für Expressversand prüfen."
MARKUP = '<b>fett</b><img src=x onerror="window.__pwned=1">'


async def seed_customer(rt: Runtime, visitor: str) -> int:
    """A known customer: an e-mail exchange three days ago, and the web-chat visitor id
    already verified as hers, so the console shows one timeline across both channels."""
    earlier = utcnow() - timedelta(days=3)
    async with rt.sessions() as s, s.begin():
        contact = Contact(
            name=CUSTOMER,
            email="erika@example.com",
            phone="+49 30 1234567",
            locale="de",
            value_segment="A",
            created_at=earlier - timedelta(days=400),
        )
        s.add(contact)
        await s.flush()
        mail = Identity(contact_id=contact.id, channel="email", external_id="erika@example.com")
        web = Identity(contact_id=contact.id, channel="webchat", external_id=visitor)
        s.add_all([mail, web])
        await s.flush()
        conv = await queries.create_conversation(
            s, contact.id, mail.id, "email", "erika@example.com"
        )
        conv.status, conv.closed_at = ConversationStatus.CLOSED, earlier
        for minutes, direction, actor, text in [
            (
                0,
                Direction.IN,
                "customer",
                "Meine Bestellung A-12345 ist seit einer Woche nicht da.",
            ),
            (2, Direction.OUT, "bot", "Danke für Ihre Nachricht, wir prüfen die Sendung."),
        ]:
            queries.add_touchpoint(
                s,
                contact_id=contact.id,
                conversation_id=conv.id,
                channel="email",
                direction=direction,
                kind="message",
                actor=actor,
                text=text,
                created_at=earlier + timedelta(minutes=minutes),
            )
        return contact.id


async def open_case(rt: Runtime, contact_id: int, conversation_id: int) -> str:
    """The delivery complaint, as the complaint flow would have recorded it."""
    now = utcnow()
    async with rt.sessions() as s, s.begin():
        case = Case(
            reference=f"C-{now.year}-{uuid.uuid4().int % 900000 + 100000:06d}",
            contact_id=contact_id,
            conversation_id=conversation_id,
            category="delivery",
            description="Bestellung A-12345 seit einer Woche nicht zugestellt.",
            order_reference="A-12345",
            severity="high",
            desired_resolution="replacement",
            priority=35,
            sla_due_at=now + timedelta(hours=8),
        )
        s.add(case)
    assert case.reference is not None
    return case.reference


async def say(chat: Page, text: str) -> None:
    """The customer types a message and presses Enter; the bot's answer arrives."""
    replies = await chat.locator(".msg.out").count()
    await chat.fill("#text", text)
    await chat.press("#text", "Enter")
    await expect(chat.locator(".msg.in.pending")).to_have_count(0)  # acknowledged
    await expect(chat.locator(".msg.out")).not_to_have_count(replies)


def watch_errors(page: Page, errors: list[str]) -> None:
    """Uncaught script errors and security-policy violations fail the test."""
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))

    def on_console(msg: Any) -> None:
        text = msg.text
        if msg.type == "error" and any(
            word in text for word in ("Content Security Policy", "TrustedHTML", "Uncaught")
        ):
            errors.append(f"console: {text}")

    page.on("console", on_console)


async def test_agent_console_end_to_end(
    db_url: str, browser: Any, artifacts: Path, request: pytest.FixtureRequest
) -> None:
    variant = request.node.callspec.params.get("db_url", "db")
    shots = {
        "console": artifacts / f"agent-console-{variant}.png",
        "webchat": artifacts / f"webchat-{variant}.png",
        "history": artifacts / f"agent-console-history-{variant}.png",
        "login": artifacts / f"agent-console-login-{variant}.png",
    }
    errors: list[str] = []
    async with serve(make_settings(db_url)) as (base, rt):
        async with rt.sessions() as s, s.begin():
            anna, token = await auth.create_agent(s, "Anna Agentin", AgentRole.AGENT)
            ben, _ = await auth.create_agent(s, "Ben Berater", AgentRole.AGENT)
        # her browser holds the session cookie the chat page gave her on an earlier visit
        session = await new_session(base)
        visitor = rt.channels["webchat"].sessions.visitor(session)  # type: ignore[attr-defined]
        contact_id = await seed_customer(rt, visitor)

        desk = await browser.new_context(locale="de-DE", viewport={"width": 1440, "height": 900})
        home = await browser.new_context(locale="de-DE", viewport={"width": 480, "height": 860})
        await home.add_cookies([{"name": COOKIE, "value": session, "url": base}])
        agent, chat = await desk.new_page(), await home.new_page()
        watch_errors(agent, errors)
        watch_errors(chat, errors)
        try:
            # sign-in: a wrong token is refused with a clear message
            await agent.goto(f"{base}/agent")
            await agent.locator("#token-box").evaluate("box => { box.open = true; }")
            await agent.fill("#token", "cic_not-a-real-token")
            await agent.press("#token", "Enter")
            await expect(agent.locator("#login-error")).to_contain_text("ungültig")
            await agent.screenshot(path=shots["login"])
            await agent.locator("#token-box").evaluate("box => { box.open = true; }")
            await agent.fill("#token", token)
            await agent.click("#login-submit")
            await expect(agent.locator("#me-name")).to_have_text("Anna Agentin")
            assert await agent.evaluate("sessionStorage.getItem('cicbot.agent.token')") == token
            await expect(agent.locator("#conn")).to_have_attribute("data-state", "live")
            await expect(agent.locator("#list-queue .conv-item")).to_have_count(0)

            # the customer, in her web chat, asks for a person
            await chat.goto(f"{base}/")
            # the header says who is there (Anna has the console open), not the socket state
            await expect(chat.locator("#state")).to_have_text("Unser Team ist für Sie da")
            await say(chat, "hallo")
            await say(chat, "Mensch")

            # ... and the console's queue shows her at once, without a reload
            item = agent.locator("#list-queue .conv-item")
            await expect(item).to_have_count(1, timeout=LIVE)
            await expect(item).to_contain_text(CUSTOMER)
            await expect(item).to_contain_text("Web-Chat")
            async with rt.sessions() as s:
                conv = (
                    await s.execute(
                        select(Conversation).where(
                            Conversation.contact_id == contact_id,
                            Conversation.channel == "webchat",
                        )
                    )
                ).scalar_one()
            assert conv.status == "queued"
            reference = await open_case(rt, contact_id, conv.id)

            await agent.click("#tab-unassigned")
            await item.click()
            timeline = agent.locator("#timeline")
            await expect(timeline).to_contain_text("Mensch")
            # the reason, labelled by the flows' catalog (GET /agent/api/labels)
            await expect(timeline).to_contain_text("Kunde möchte einen Menschen")
            await expect(timeline).to_contain_text("Bestellung A-12345 ist seit einer Woche")
            await expect(timeline.locator(".chip.ch-email").first).to_be_visible()
            await expect(agent.locator("#text")).to_be_disabled()
            await expect(agent.locator("#cases .case")).to_have_count(1)

            # claim: the customer is told who is taking care of her
            await agent.click("#btn-claim")
            status = agent.locator("[data-testid=conv-status]")
            await expect(status).to_have_text("Ihnen zugewiesen")
            await expect(agent.locator("#list-mine .conv-item")).to_have_count(1)
            await expect(agent.locator("#list-queue .conv-item")).to_have_count(0)
            await expect(chat.locator(".msg.out").last).to_contain_text(
                "Anna Agentin aus unserem Team"
            )

            # reply with Enter: it reaches the customer's web chat
            await expect(agent.locator("#text")).to_be_enabled()
            await agent.fill("#text", REPLY)
            await agent.press("#text", "Enter")
            await expect(chat.locator(".msg.out", has_text=REPLY)).to_have_count(1)
            await expect(timeline.locator(".tp.out.agent", has_text=REPLY)).to_have_count(1)
            await expect(agent.locator("#text")).to_have_value("")

            # an internal note: in the console, never on the customer's page
            await agent.click(".mode[data-mode=note]")
            await expect(agent.locator("#composer")).to_have_class("composer is-note")
            await agent.fill("#text", NOTE)
            await agent.press("#text", "Enter")
            await expect(timeline.locator(".note", has_text=NOTE)).to_have_count(1)
            await agent.click(".mode[data-mode=reply]")

            # the customer answers (with markup): it shows up live, as text
            await chat.fill("#text", MARKUP)
            await chat.press("#text", "Enter")
            await expect(chat.locator(".msg.in.pending")).to_have_count(0)
            await expect(timeline.locator(".tp.in", has_text=MARKUP)).to_have_count(1)
            assert await timeline.locator("b, img").count() == 0
            assert await agent.evaluate("window.__pwned") is None

            # the case panel: a status change is announced to the customer
            case = agent.locator(f'#cases .case[data-reference="{reference}"]')
            await case.locator("select").select_option("in_progress")
            await expect(chat.locator(".msg.out").last).to_contain_text(
                f"Neuigkeiten zu Ihrem Fall {reference}: in Bearbeitung"
            )
            await expect(timeline).to_contain_text(f"Fall {reference} → In Bearbeitung")
            await agent.locator("#text").focus()
            await agent.screenshot(path=shots["console"])
            await timeline.evaluate("box => { box.scrollTop = 0; }")  # the e-mail, days ago
            await agent.screenshot(path=shots["history"])

            # the note never reached the customer, not even in her history after a reload
            await chat.reload()
            await expect(chat.locator(".msg.out", has_text=REPLY)).to_have_count(1)
            assert NOTE not in await chat.locator("#log").inner_text()

            # resolve: closed in the console, the customer is told, the case is resolved
            await agent.click("#btn-resolve")
            await expect(status).to_have_text("Abgeschlossen")
            await expect(agent.locator("#list-mine .conv-item")).to_have_count(0)
            await expect(agent.locator("#btn-resolve")).to_be_hidden()
            await expect(chat.locator(".msg.out").last).to_contain_text("als erledigt markiert")
            await expect(case.locator("select")).to_have_value("resolved")
            await chat.screenshot(path=shots["webchat"])
            assert NOTE not in await chat.locator("#log").inner_text()

            # sign-out forgets the token
            await agent.click("#signout")
            await expect(agent.locator("#login")).to_be_visible()
            assert await agent.evaluate("sessionStorage.getItem('cicbot.agent.token')") is None
        except BaseException:
            for name, page in (("console", agent), ("webchat", chat)):
                await page.screenshot(path=artifacts / f"FAILED-{name}-{variant}.png")
            raise
        finally:
            await desk.close()  # closes the event stream before the server stops
            await home.close()
            # the PostgreSQL fixture truncates per test but not the agents table: leave
            # no agents behind for other tests that count them
            async with rt.sessions() as s, s.begin():
                await s.execute(delete(Agent).where(Agent.id.in_([anna.id, ben.id])))
    assert not errors, errors
    print("screenshots:", *(str(p) for p in shots.values()))
