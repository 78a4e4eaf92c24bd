"""The analytics report over a known history, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import delete, update

from bot.crm import analytics
from bot.desk import auth
from bot.runtime import Runtime
from storage.models import (
    Agent,
    AgentRole,
    Case,
    Contact,
    Conversation,
    Identity,
    SurveyAnswer,
    Touchpoint,
    utcnow,
)
from tests.conftest import ROOT, RecordingChannel, inbound, make_settings

NOW = utcnow().replace(microsecond=0)


def test_stats() -> None:
    assert analytics.stats([]) == {"count": 0, "mean": None, "p50": None, "p90": None}
    st = analytics.stats([float(x) for x in range(1, 11)])
    assert st == {"count": 10, "mean": 5.5, "p50": 6.0, "p90": 10.0}


async def test_report_figures(runtime: Runtime) -> None:
    t0 = NOW - timedelta(days=2)
    async with runtime.sessions() as s, s.begin():
        c = Contact(name="x", attributes={})
        s.add(c)
        await s.flush()
        ident = Identity(contact_id=c.id, channel="telegram", external_id="1")
        s.add(ident)
        await s.flush()

        def conv(channel: str, **kw: object) -> Conversation:
            row = Conversation(
                contact_id=c.id,
                identity_id=ident.id,
                channel=channel,
                thread_key=f"{channel}-{kw.pop('n')}",
                flow_state={},
                **kw,
            )
            s.add(row)
            return row

        bot_only = conv(
            "telegram", n=1, status="closed", created_at=t0, closed_at=t0 + timedelta(minutes=10)
        )
        with_agent = conv(
            "slack",
            n=2,
            status="closed",
            created_at=t0,
            assignee="3",
            closed_at=t0 + timedelta(hours=2),
        )
        await s.flush()

        def tp(cv: Conversation, secs: int, direction: str, kind: str, actor: str) -> None:
            s.add(
                Touchpoint(
                    contact_id=c.id,
                    conversation_id=cv.id,
                    channel=cv.channel,
                    direction=direction,
                    kind=kind,
                    actor=actor,
                    payload={},
                    created_at=t0 + timedelta(seconds=secs),
                )
            )

        tp(bot_only, 0, "in", "message", "customer")
        tp(bot_only, 2, "out", "message", "bot")
        tp(with_agent, 0, "in", "message", "customer")
        tp(with_agent, 4, "out", "message", "bot")
        tp(with_agent, 5, "internal", "escalated", "bot")
        tp(with_agent, 65, "out", "message", "agent:3")
        s.add(
            Touchpoint(
                contact_id=c.id,
                channel="crm",
                direction="internal",
                kind="lifecycle_changed",
                actor="system",
                created_at=t0,
                payload={"old": "lost", "new": "active"},
            )
        )
        s.add(
            Touchpoint(
                contact_id=c.id,
                channel="telegram",
                direction="in",
                kind="message",
                actor="customer",
                payload={},
                created_at=NOW - timedelta(days=90),
            )
        )
        for i, (cat, sev, resolved_h, due_h) in enumerate(
            [("delivery", "high", 30, 24), ("delivery", "low", 10, 72), ("billing", "low", None, 1)]
        ):
            s.add(
                Case(
                    contact_id=c.id,
                    category=cat,
                    description="d",
                    severity=sev,
                    reference=f"C-{i}",
                    created_at=t0,
                    status="resolved" if resolved_h else "new",
                    resolved_at=t0 + timedelta(hours=resolved_h) if resolved_h else None,
                    sla_due_at=t0 + timedelta(hours=due_h),
                )
            )
        for r in ("5", "4", "1"):
            s.add(
                SurveyAnswer(
                    contact_id=c.id, survey="csat", question="rating", answer=r, created_at=t0
                )
            )
        for reason, offer in (("price", "yes"), ("price", "no"), ("quality", "no")):
            s.add(
                SurveyAnswer(
                    contact_id=c.id,
                    survey="winback",
                    question="reason",
                    answer=reason,
                    created_at=t0,
                )
            )
            s.add(
                SurveyAnswer(
                    contact_id=c.id, survey="winback", question="offer", answer=offer, created_at=t0
                )
            )
    async with runtime.sessions() as s:
        r = await analytics.report(s, since=NOW - timedelta(days=7), until=NOW)
    assert r["channels"]["telegram"] == {"in": 1, "out": 1, "internal": 0}
    assert r["channels"]["slack"] == {"in": 1, "out": 2, "internal": 1}
    assert r["volume"] == [
        {"day": t0.date().isoformat(), "channel": "slack", "messages": 1},
        {"day": t0.date().isoformat(), "channel": "telegram", "messages": 1},
    ]
    assert r["first_response_seconds"]["bot"]["p50"] in (2.0, 4.0)
    assert r["first_response_seconds"]["bot"]["count"] == 2
    assert r["first_response_seconds"]["agent"] == {
        "count": 1,
        "mean": 60.0,
        "p50": 60.0,
        "p90": 60.0,
    }
    assert r["resolution_seconds"]["conversations_bot"]["mean"] == 600.0
    assert r["resolution_seconds"]["conversations_agent"]["mean"] == 7200.0
    assert r["resolution_seconds"]["cases"]["count"] == 2
    assert r["complaints"] == {
        "total": 3,
        "by_category": {"delivery": 2, "billing": 1},
        "by_severity": {"low": 2, "high": 1},
    }
    assert r["sla"] == {"cases": 3, "breached": 2, "open_breached": 1, "breach_rate": 0.6667}
    assert r["csat"] == {
        "responses": 3,
        "average": 3.33,
        "distribution": {"1": 1, "2": 0, "3": 0, "4": 1, "5": 1},
    }
    assert r["winback"] == {
        "respondents": 3,
        "reasons": {"price": 2, "quality": 1},
        "offers_accepted": 1,
        "recovery_rate": 0.3333,
        "reactivated_contacts": 1,
    }
    assert r["self_service"] == {"conversations": 2, "without_human": 1, "deflection_rate": 0.5}


async def test_report_over_real_conversations(runtime: Runtime) -> None:
    for t in ("hello", "human"):
        await runtime.engine.handle(inbound(t, user="a"))
    await runtime.engine.handle(inbound("hello", user="b"))
    async with runtime.sessions() as s:
        r = await analytics.report(s)
    assert r["self_service"]["conversations"] == 2
    assert r["self_service"]["without_human"] == 1
    assert r["first_response_seconds"]["bot"]["count"] == 2


async def test_agent_resolved_bot_resolved_and_reopened(runtime: Runtime) -> None:
    """Issue 20, finding 7: resolving cleared the assignee, so every conversation an agent
    resolved was counted as the bot's alone. Now: by the desk's own operations."""
    async with runtime.sessions() as s, s.begin():
        anna, _ = await auth.create_agent(s, "Anna", AgentRole.AGENT)
    desk = runtime.desk

    async def resolved_by_anna(user: str) -> int:
        await runtime.engine.handle(inbound("hello", user=user))
        conv = (await runtime.engine.handle(inbound("human", user=user))).conversation_id
        assert conv is not None
        await desk.claim(anna, conv)
        await desk.reply(anna, conv, "Ich kümmere mich darum.")
        await desk.resolve(anna, conv)
        return conv

    await resolved_by_anna("a")
    reopened = await resolved_by_anna("c")
    follow_up = await runtime.engine.handle(inbound("Der Ersatz ist noch nicht da.", user="c"))
    assert follow_up.conversation_id == reopened and follow_up.status == "agent"
    await desk.resolve(anna, reopened)
    # the bot answered "b" alone; its conversation was closed without a person
    bot_conv = (await runtime.engine.handle(inbound("hello", user="b"))).conversation_id
    async with runtime.sessions() as s, s.begin():
        row = await s.get(Conversation, bot_conv)
        assert row is not None
        row.status, row.closed_at = "closed", utcnow()

    async with runtime.sessions() as s:
        r = await analytics.report(s)
    assert r["resolutions"] == {"bot": 1, "agent": 2, "reopened": 1, "reopen_rate": 0.5}
    assert r["resolution_seconds"]["conversations_agent"]["count"] == 2
    assert r["resolution_seconds"]["conversations_bot"]["count"] == 1
    assert r["self_service"]["without_human"] == 1

    # a conversation an agent resolved before the assignee was kept counts as the agent's
    async with runtime.sessions() as s, s.begin():
        await s.execute(update(Conversation).values(assignee=None))
    async with runtime.sessions() as s:
        r = await analytics.report(s)
    assert r["resolutions"]["agent"] == 2 and r["resolutions"]["bot"] == 1
    async with runtime.sessions() as s, s.begin():  # PostgreSQL keeps the agents table
        await s.execute(delete(Agent).where(Agent.id == anna.id))


def test_cicbot_report_counts_agent_resolved_conversations(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cicbot report`: a conversation an agent resolved is in "resolved with an agent",
    not in the bot's row (issue 20, finding 7)."""
    from typer.testing import CliRunner

    from bot.cli.app import app

    async def history() -> None:  # the command runs its own event loop: not inside one
        rt = Runtime(make_settings(sqlite_url), channels=[])
        rt.channels["test"] = RecordingChannel()
        await rt.start(dispatch=False)
        try:
            async with rt.sessions() as s, s.begin():
                anna, _ = await auth.create_agent(s, "Anna", AgentRole.AGENT)
            for text in ("hello", "human"):
                conv = (await rt.engine.handle(inbound(text, user="r"))).conversation_id
            assert conv is not None
            await rt.desk.claim(anna, conv)
            await rt.desk.resolve(anna, conv)
            await rt.engine.handle(inbound("one more thing", user="r"))  # reopens
            await rt.desk.resolve(anna, conv)
        finally:
            await rt.stop()

    asyncio.run(history())
    monkeypatch.setenv("CICBOT_CONFIG", str(ROOT / "config.yaml"))
    monkeypatch.setenv("CICBOT_DATABASE__URL", sqlite_url)
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["report"])
    out = result.output
    assert result.exit_code == 0, out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 2}
    assert rows["resolved with an agent"].split("│")[2].strip() == "1"
    assert rows["resolved by the bot alone"].split("│")[2].strip() == "0"
    assert "1 of 1 (100.0 %)" in rows["reopened after an agent resolved"]
