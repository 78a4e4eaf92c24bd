"""The supervisor view of the agent console in a real browser: on an empty database it
says "no data yet"; with a known mix (web chat and Telegram this week, e-mail three weeks
ago, two complaints, CSAT and win-back answers, a self-service answer) every figure in its
data tables equals GET /api/v1/analytics for the same period, and every chart is drawn by
Chart.js. A plain agent sees no supervisor tab and the API answers 403.

Runs the real app under uvicorn (on SQLite and PostgreSQL) and real headless Chromium;
screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from bot.desk import auth
from bot.runtime import Runtime
from storage import queries
from storage.models import (
    Agent,
    AgentRole,
    Case,
    CaseStatus,
    Contact,
    ConversationStatus,
    Direction,
    Identity,
    SurveyAnswer,
    utcnow,
)
from tests.conftest import make_settings
from tests.server import serve

if not os.environ.get("CI"):  # in CI a missing Playwright is an error, not a skip
    pytest.importorskip("playwright", reason="Playwright is not installed (uv sync)")
from playwright.async_api import Page, expect

from tests.browser.test_agent_console import watch_errors

expect.set_options(timeout=10_000)
Message = tuple[float, Direction, str, str]  # seconds after the start, direction, kind, actor


async def conversation(
    rt: Runtime,
    name: str,
    channel: str,
    start: datetime,
    messages: list[Message],
    *,
    closed_after: float | None = None,
    assignee: str | None = None,
) -> tuple[int, int]:
    """One contact with one conversation on `channel`; returns (contact id, conversation id)."""
    async with rt.sessions() as s, s.begin():
        contact = Contact(name=name, locale="de", created_at=start - timedelta(days=100))
        s.add(contact)
        await s.flush()
        identity = Identity(contact_id=contact.id, channel=channel, external_id=f"{name}@{channel}")
        s.add(identity)
        await s.flush()
        conv = await queries.create_conversation(
            s, contact.id, identity.id, channel, identity.external_id
        )
        conv.created_at, conv.assignee = start, assignee
        if closed_after is not None:
            conv.status = ConversationStatus.CLOSED
            conv.closed_at = start + timedelta(seconds=closed_after)
        for after, direction, kind, actor in messages:
            queries.add_touchpoint(
                s,
                contact_id=contact.id,
                conversation_id=conv.id,
                channel=channel,
                direction=direction,
                kind=kind,
                actor=actor,
                text=f"{kind} from {actor}",
                payload={"question": "Lieferzeit?", "answered": True}
                if kind == "selfservice"
                else {},
                created_at=start + timedelta(seconds=after),
            )
        return contact.id, conv.id


async def seed(rt: Runtime, agent_id: int) -> None:
    """Web chat answered by self-service (2 days ago), Telegram escalated to an agent
    (yesterday), e-mail answered by the bot (20 days ago, outside the 7-day period); a
    delivery complaint overdue and open, a billing one resolved in time; CSAT 5, 4, 2;
    win-back: price (offer accepted) and service (declined)."""
    now, agent = utcnow(), f"agent:{agent_id}"
    web, _ = await conversation(
        rt,
        "Web Kundin",
        "webchat",
        now - timedelta(days=2),
        [
            (0, Direction.IN, "message", "customer"),
            (1, Direction.INTERNAL, "selfservice", "bot"),
            (2, Direction.OUT, "message", "bot"),
            (40, Direction.IN, "message", "customer"),
            (41, Direction.OUT, "message", "bot"),
        ],
        closed_after=300,
    )
    tg, tg_conv = await conversation(
        rt,
        "Telegram Kunde",
        "telegram",
        now - timedelta(days=1),
        [
            (0, Direction.IN, "message", "customer"),
            (1, Direction.OUT, "message", "bot"),
            (60, Direction.INTERNAL, "escalated", "bot"),
            (180, Direction.OUT, "message", agent),
            (240, Direction.IN, "message", "customer"),
        ],
        closed_after=3600,
        assignee=agent,
    )
    await conversation(
        rt,
        "Mail Kunde",
        "email",
        now - timedelta(days=20),
        [(0, Direction.IN, "message", "customer"), (30, Direction.OUT, "message", "bot")],
    )
    day = now - timedelta(days=1)
    async with rt.sessions() as s, s.begin():
        s.add_all(
            [
                Case(
                    reference="C-SV-000001",
                    contact_id=tg,
                    conversation_id=tg_conv,
                    category="delivery",
                    description="Paket nicht angekommen",
                    severity="high",
                    created_at=day,
                    sla_due_at=day + timedelta(hours=1),
                ),
                Case(
                    reference="C-SV-000002",
                    contact_id=web,
                    category="billing",
                    description="Rechnung doppelt",
                    severity="low",
                    status=CaseStatus.RESOLVED,
                    created_at=day,
                    resolved_at=day + timedelta(minutes=30),
                    sla_due_at=day + timedelta(hours=8),
                ),
            ]
        )
        answers = [("csat", "rating", r) for r in ("5", "4", "2")] + [
            ("winback", "reason", "price"),
            ("winback", "offer", "yes"),
            ("winback", "reason", "service"),
            ("winback", "offer", "no"),
        ]
        for survey, question, answer in answers:
            s.add(
                SurveyAnswer(
                    contact_id=web,
                    survey=survey,
                    question=question,
                    answer=answer,
                    created_at=day,
                )
            )


def _value(raw: str | None) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        return raw


def expected_tables(r: dict[str, Any]) -> dict[str, list[list[Any]]]:
    """What each chart's data table must hold (the `data-value`s, row by row), from the
    API's JSON; label cells without a value are None."""

    def stats(st: dict[str, Any]) -> list[Any]:
        return [None, st["count"], st["mean"], st["p50"], st["p90"]]

    channels = sorted({v["channel"] for v in r["volume"]})
    days: dict[str, dict[str, int]] = {}
    for v in r["volume"]:
        days.setdefault(v["day"], {})[v["channel"]] = v["messages"]
    rank = ["low", "medium", "high", "critical"]
    w, sla, csat = r["winback"], r["sla"], r["csat"]
    tables: dict[str, list[list[Any]]] = {
        "volume": [
            [d, *(days[d].get(c, 0) for c in channels), sum(days[d].values())] for d in sorted(days)
        ],
        "channels": [[c, m["in"], m["out"], m["internal"]] for c, m in r["channels"].items()],
        "first_response": [stats(r["first_response_seconds"][k]) for k in ("bot", "agent")],
        "resolution": [
            stats(r["resolution_seconds"][k])
            for k in ("conversations_bot", "conversations_agent", "cases")
        ],
        "complaints_category": [[k, v] for k, v in r["complaints"]["by_category"].items()],
        "complaints_severity": [
            [k, v]
            for k, v in sorted(
                r["complaints"]["by_severity"].items(), key=lambda i: rank.index(i[0])
            )
        ],
        "sla": [
            [None, sla["cases"]],
            [None, sla["breached"]],
            [None, sla["open_breached"]],
            [None, sla["breach_rate"]],
        ],
        "csat": [[int(k), v] for k, v in csat["distribution"].items()] + [[None, csat["average"]]],
        "winback": [[k, v] for k, v in w["reasons"].items()]
        + [
            [None, w["respondents"]],
            [None, w["offers_accepted"]],
            [None, w["recovery_rate"]],
            [None, w["reactivated_contacts"]],
        ],
    }
    return {
        k: [[_value(None if x is None else str(x)) for x in row] for row in v]
        for k, v in tables.items()
    }


TABLES_JS = """() => Object.fromEntries([...document.querySelectorAll('#sv-charts .chart-card')]
  .map(card => [card.dataset.chart, [...card.querySelectorAll('tbody tr')]
    .map(tr => [...tr.children].map(c => c.dataset.value ?? null))]))"""
CHARTS_JS = """() => [...document.querySelectorAll('#sv-charts canvas')].map(c => {
  const chart = Chart.getChart(c);
  return {card: c.closest('.chart-card').dataset.chart, chart: !!chart,
          type: chart ? chart.config.type : null, width: c.width, height: c.height};
})"""
AXIS_JS = """(id) => {
  const chart = Chart.getChart(document.querySelector(`[data-chart=${id}] canvas`));
  const axis = chart.options.indexAxis === "y" ? chart.scales.y : chart.scales.x;
  return {labels: chart.data.labels, rotation: axis.labelRotation,
          minBar: chart.data.datasets.map(d => d.minBarLength ?? 0)};
}"""
KPIS_JS = """() => Object.fromEntries([...document.querySelectorAll('#sv-kpis .kpi')]
  .map(k => [k.dataset.kpi, k.querySelector('.kpi-value').dataset.value]))"""


async def check_period(page: Page, http: httpx.AsyncClient, days: int) -> dict[str, Any]:
    """Pick the period, wait for it, compare every table and headline with the API."""
    await page.click(f"#sv-days button[data-days='{days}']")
    await expect(page.locator(f"#sv-days button[data-days='{days}']")).to_have_attribute(
        "aria-pressed", "true"
    )
    await expect(page.locator("#supervisor")).not_to_have_attribute("aria-busy", "true")
    await expect(page.locator("#sv-body")).to_be_visible()
    r = (await http.get("/api/v1/analytics", params={"days": days})).raise_for_status().json()
    shown = await page.evaluate(TABLES_JS)
    got = {k: [[_value(x) for x in row] for row in rows] for k, rows in shown.items()}
    assert got == expected_tables(r)
    ss = r["self_service"]
    kpis = {k: _value(v) for k, v in (await page.evaluate(KPIS_JS)).items()}
    assert kpis == {
        "deflection": ss["deflection_rate"],
        "conversations": ss["conversations"],
        "csat": r["csat"]["average"],
        "sla": r["sla"]["breach_rate"],
        "recovery": r["winback"]["recovery_rate"],
    }
    charts = await page.evaluate(CHARTS_JS)
    assert [c["card"] for c in charts] == list(expected_tables(r))  # every card has a chart
    assert all(c["chart"] and c["width"] > 0 and c["height"] > 0 for c in charts), charts
    return r


async def test_supervisor_view(
    db_url: str, browser: Any, artifacts: Path, request: pytest.FixtureRequest
) -> None:
    variant = request.node.callspec.params.get("db_url", "db")
    errors: list[str] = []
    async with serve(make_settings(db_url)) as (base, rt):
        async with rt.sessions() as s, s.begin():
            sina, sv_token = await auth.create_agent(s, "Sina Schmidt", AgentRole.SUPERVISOR)
            paul, agent_token = await auth.create_agent(s, "Paul Probst", AgentRole.AGENT)
        ctx = await browser.new_context(
            locale="de-DE", viewport={"width": 1440, "height": 1000}, reduced_motion="reduce"
        )
        bearer = {"Authorization": f"Bearer {sv_token}"}
        try:
            async with httpx.AsyncClient(base_url=base, headers=bearer) as http:
                page = await ctx.new_page()
                watch_errors(page, errors)
                await page.goto(f"{base}/agent")
                await page.locator("#token-box").evaluate("box => { box.open = true; }")
                await page.fill("#token", sv_token)
                await page.press("#token", "Enter")
                await expect(page.locator("#me-name")).to_have_text("Sina Schmidt")

                # nothing recorded yet: a clear "no data yet", no charts
                await page.click("#tab-supervisor")
                await expect(page.locator("#sv-empty")).to_be_visible()
                await expect(page.locator("#sv-empty")).to_have_text(
                    "Für diesen Zeitraum gibt es noch keine Daten."
                )
                await expect(page.locator("#sv-body")).to_be_hidden()
                await expect(page.locator(".lists")).to_be_hidden()
                await page.screenshot(path=artifacts / f"supervisor-view-empty-{variant}.png")

                await seed(rt, sina.id)
                week = await check_period(page, http, 7)
                assert set(week["channels"]) == {"webchat", "telegram"}
                assert week["self_service"]["deflection_rate"] == 0.5
                month = await check_period(page, http, 30)
                assert set(month["channels"]) == {"email", "telegram", "webchat"}
                assert month["complaints"]["by_severity"] == {"high": 1, "low": 1}
                assert month["csat"]["distribution"] == {"1": 0, "2": 1, "3": 0, "4": 1, "5": 1}
                # issue 20, finding 7: the charts read well. Severity in words of the
                # agent's language; resolution labels on short lines, not rotated or
                # overlapping; the bot's seconds next to agents' hour still a visible bar
                severity = await page.evaluate(AXIS_JS, "complaints_severity")
                assert severity["labels"] == ["Gering", "Hoch"]
                for chart in ("resolution", "first_response"):
                    axis = await page.evaluate(AXIS_JS, chart)
                    assert axis["rotation"] == 0, axis
                    assert all(len(line) <= 16 for label in axis["labels"] for line in label[:-1])
                    assert all(m > 0 for m in axis["minBar"]), axis
                resolution = await page.evaluate(AXIS_JS, "resolution")
                assert resolution["labels"][0][:2] == ["Vom Bot gelöst", "Median 5 min"]
                assert month["resolutions"] == {
                    "bot": 1,
                    "agent": 1,
                    "reopened": 0,
                    "reopen_rate": 0.0,
                }
                kpi = page.locator("[data-kpi=deflection] .kpi-value")
                await expect(kpi).to_have_text("66,7 %")  # German number format
                await expect(page.locator("[data-chart=csat] .chart-note")).to_contain_text(
                    "Durchschnitt 3,7 von 5 aus 3 Antworten"
                )
                await page.locator("[data-chart=volume] details summary").click()
                await page.set_viewport_size({"width": 1440, "height": 2000})  # every chart
                await page.screenshot(path=artifacts / f"supervisor-view-{variant}.png")
                await page.set_viewport_size({"width": 1440, "height": 1000})

                # back to the conversations; a reload with #/supervisor opens the view again
                await page.click("#tab-desk")
                await expect(page.locator("#supervisor")).to_be_hidden()
                await expect(page.locator(".pane-main")).to_be_visible()
                assert await page.evaluate(CHARTS_JS) == []  # destroyed with the view
                for reload in (False, True):
                    if reload:
                        await page.reload()
                    else:
                        await page.goto(f"{base}/agent#/supervisor")
                    await expect(page.locator("#tab-supervisor")).to_have_attribute(
                        "aria-pressed", "true"
                    )
                    await expect(page.locator("[data-chart=csat] canvas")).to_be_visible()
                    drawn = await page.evaluate(CHARTS_JS)
                    assert len(drawn) == 9 and all(c["chart"] for c in drawn), drawn

                # a plain agent: no tab, not even by the address, and the API says 403
                other = await ctx.new_page()
                watch_errors(other, errors)
                await other.goto(f"{base}/agent#/supervisor")
                await other.locator("#token-box").evaluate("box => { box.open = true; }")
                await other.fill("#token", agent_token)
                await other.press("#token", "Enter")
                await expect(other.locator("#me-name")).to_have_text("Paul Probst")
                await expect(other.locator("#tab-supervisor")).to_be_hidden()
                await expect(other.locator("#supervisor")).to_be_hidden()
                await expect(other.locator(".pane-main")).to_be_visible()
                denied = await http.get(
                    "/api/v1/analytics", headers={"Authorization": f"Bearer {agent_token}"}
                )
                assert denied.status_code == 403
                assert denied.json()["error"]["code"] == "forbidden"
        except BaseException:
            for n, p in enumerate(ctx.pages):
                await p.screenshot(path=artifacts / f"FAILED-supervisor-{n}-{variant}.png")
            raise
        finally:
            await ctx.close()
            async with rt.sessions() as s, s.begin():  # agents are not truncated per test
                await s.execute(delete(Agent).where(Agent.id.in_([sina.id, paul.id])))
    assert not errors, errors
