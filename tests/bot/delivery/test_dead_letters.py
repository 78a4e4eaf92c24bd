"""Poison messages: a message that makes a flow raise is kept as a dead letter, the customer
gets an apology and a human, and their later messages work."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner

from bot.cli import app as cli
from bot.cli import crm as crm_cli
from bot.desk import auth
from bot.runtime import Runtime
from flows import dialogue
from storage.models import (
    AgentRole,
    Conversation,
    ConversationStatus,
    DeadLetter,
    InboxStatus,
    InboxUpdate,
    Touchpoint,
)
from tests.bot.delivery.test_inbox import parse
from tests.conftest import RecordingChannel, inbound, make_settings, recorder
from tests.server import serve

POISON = "make the flow explode"


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flows raise on one particular text, as a bug would on an unexpected input."""
    real = dialogue.decide

    def decide(status: str, state: dict[str, Any], inp: Any, ctx: Any) -> Any:
        if inp.text == POISON:
            raise KeyError("step")
        return real(status, state, inp, ctx)

    monkeypatch.setattr(dialogue, "decide", decide)


async def letters(rt: Runtime) -> list[DeadLetter]:
    async with rt.sessions() as s:
        return list((await s.execute(select(DeadLetter).order_by(DeadLetter.id))).scalars())


@pytest.mark.usefixtures("poisoned")
async def test_flow_error_becomes_dead_letter_apology_and_human(runtime: Runtime) -> None:
    await runtime.engine.handle(inbound("complaint", user="ann"))
    msg = inbound(POISON, user="ann")
    result = await runtime.engine.handle(msg)

    assert result.status == ConversationStatus.QUEUED
    (letter,) = await letters(runtime)
    assert letter.source == "engine" and letter.channel == "test"
    assert letter.reference == msg.platform_message_id
    assert letter.error.startswith("KeyError") and "decide" in (letter.detail or "")
    assert letter.payload["text"] == POISON and letter.contact_id == result.contact_id

    await runtime.dispatcher.drain()
    texts = recorder(runtime).texts("ann")
    assert "something went wrong on our side" in texts[-1]
    async with runtime.sessions() as s:
        conv = await s.get(Conversation, result.conversation_id)
        assert conv is not None and conv.flow_state == {} and conv.queued_at is not None
        kinds = list(
            (
                await s.execute(
                    select(Touchpoint.kind, Touchpoint.text)
                    .where(Touchpoint.contact_id == result.contact_id)
                    .order_by(Touchpoint.id)
                )
            ).all()
        )
    # the poison message itself is in the history, once, followed by the escalation
    assert [k for k in kinds if k[1] == POISON] == [("message", POISON)]
    assert ("escalated", None) in kinds

    # the same message delivered again is a duplicate, not a second dead letter
    again = await runtime.engine.handle(msg)
    assert again.duplicate and len(await letters(runtime)) == 1


@pytest.mark.usefixtures("poisoned")
async def test_later_messages_work_after_an_agent_resolves(runtime: Runtime) -> None:
    first = await runtime.engine.handle(inbound(POISON, user="bob", locale="de"))
    await runtime.dispatcher.drain()
    assert "Fehler aufgetreten" in recorder(runtime).texts("bob")[-1]
    # waiting for a person, the customer can still write; it reaches the queue
    waiting = await runtime.engine.handle(inbound("hallo?", user="bob"))
    assert waiting.status == ConversationStatus.QUEUED
    async with runtime.sessions() as s, s.begin():
        agent, _ = await auth.create_agent(s, "Eva")
    assert first.conversation_id is not None
    await runtime.desk.claim(agent, first.conversation_id)
    await runtime.desk.resolve(agent, first.conversation_id)
    # the next message is handled as usual: it reopens the conversation for Eva, who
    # resolved it (issue 20), and once she hands it back the bot answers again
    after = await runtime.engine.handle(inbound("menu", user="bob"))
    assert after.status == ConversationStatus.AGENT and "Eva" in after.replies[0]
    await runtime.desk.hand_back(agent, first.conversation_id)
    again = await runtime.engine.handle(inbound("menu", user="bob"))
    assert again.status == ConversationStatus.BOT and again.replies
    assert len(await letters(runtime)) == 1


@pytest.mark.usefixtures("poisoned")
async def test_inbox_row_of_a_poison_message_is_done_not_retried(runtime: Runtime) -> None:
    runtime.inbox.register("test", parse)
    await runtime.inbox.accept("test", "1", "cy", {"id": 1, "user": "cy", "text": POISON})
    await runtime.inbox.accept("test", "2", "cy", {"id": 2, "user": "cy", "text": "thanks"})
    await runtime.inbox.drain()
    async with runtime.sessions() as s:
        rows = list((await s.execute(select(InboxUpdate).order_by(InboxUpdate.id))).scalars())
        touchpoints = await s.scalar(
            select(func.count()).select_from(Touchpoint).where(Touchpoint.direction == "in")
        )
    assert [(r.status, r.attempts) for r in rows] == [(InboxStatus.DONE, 1)] * 2
    assert touchpoints == 2
    assert len(await letters(runtime)) == 1


async def test_an_update_the_inbox_gives_up_on_is_a_dead_letter(runtime: Runtime) -> None:
    runtime.inbox.register("test", parse)
    await runtime.inbox.accept("test", "9", "dd", {"id": 9, "kind": "broken"})
    await runtime.inbox.drain()
    (letter,) = await letters(runtime)
    assert letter.source == "inbox" and letter.reference is not None
    assert letter.reference.startswith("inbox:") and "reject" in letter.error


@pytest.mark.usefixtures("poisoned")
async def test_supervisors_read_dead_letters_in_the_api(db_url: str) -> None:
    rt = Runtime(make_settings(db_url), channels=[])
    rt.channels["test"] = RecordingChannel()
    async with serve(rt) as (url, runtime):
        async with runtime.sessions() as s, s.begin():
            _, agent = await auth.create_agent(s, "Ann", AgentRole.AGENT)
            _, supervisor = await auth.create_agent(s, "Sue", AgentRole.SUPERVISOR)
        await runtime.engine.handle(inbound(POISON, user="dee"))
        async with httpx.AsyncClient(base_url=f"{url}/api/v1") as c:
            r = await c.get("/dead-letters", headers={"Authorization": f"Bearer {agent}"})
            assert r.status_code == 403
            auth_header = {"Authorization": f"Bearer {supervisor}"}
            (item,) = (await c.get("/dead-letters", headers=auth_header)).json()["items"]
            assert item["source"] == "engine" and item["error"].startswith("KeyError")
            assert "detail" not in item and "payload" not in item
            full = (await c.get(f"/dead-letters/{item['id']}", headers=auth_header)).json()
            assert full["payload"]["text"] == POISON and "Traceback" in full["detail"]
            assert (await c.get("/dead-letters/999", headers=auth_header)).status_code == 404
            r = await c.get("/dead-letters?source=other", headers=auth_header)
            assert r.status_code == 422


def test_cli_lists_dead_letters(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.db import run_in_transaction

    async def seed(s: AsyncSession) -> None:
        s.add(DeadLetter(source="inbox", channel="telegram", error="ParseError: bad update"))

    run_in_transaction(sqlite_url, seed)
    monkeypatch.setenv("CICBOT_DATABASE__URL", sqlite_url)
    monkeypatch.setattr(crm_cli.out, "width", 200)  # no wrapping in the table
    result = CliRunner().invoke(cli.app, ["dead-letters", "--source", "inbox"])
    assert result.exit_code == 0, result.output
    assert "ParseError: bad update" in result.output and "telegram" in result.output
