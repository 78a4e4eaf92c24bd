"""Campaigns through the API and the `cicbot campaigns` command line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bot.channel.messages import InboundMessage
from bot.cli.app import app as cli_app
from bot.desk import auth
from bot.runtime import Runtime
from bot.web.app import create_app
from storage.models import AgentRole
from tests.conftest import RecordingChannel, inbound, make_settings

DEFINITION = {
    "name": "reactivate",
    "flow": "winback_survey",
    "purpose": "service",
    "audience": {"lifecycle_phase": ["active"]},
    "quiet_hours": None,
    "rate_per_second": 1000,
}


@pytest.fixture
async def api(sqlite_url: str) -> AsyncIterator[tuple[Runtime, dict[AgentRole, httpx.AsyncClient]]]:
    rt = Runtime(make_settings(sqlite_url), channels=[])
    rt.channels["test"] = RecordingChannel()
    await rt.start(dispatch=False)
    clients = {}
    async with rt.sessions() as s, s.begin():
        for role in (AgentRole.AGENT, AgentRole.SUPERVISOR):
            _, token = await auth.create_agent(s, role.title(), role)
            clients[role] = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(rt)),
                base_url="http://t/api/v1",
                headers={"Authorization": f"Bearer {token}"},
            )
    yield rt, clients
    for c in clients.values():
        await c.aclose()
    await rt.stop()


async def test_define_preview_run_and_status_through_the_api(
    api: tuple[Runtime, dict[AgentRole, httpx.AsyncClient]],
) -> None:
    rt, clients = api
    agent, boss = clients[AgentRole.AGENT], clients[AgentRole.SUPERVISOR]
    for user in ("x", "y"):
        await rt.engine.handle(inbound("hello", user=user))
    assert (await agent.put("/campaigns/reactivate", json=DEFINITION)).status_code == 403
    r = await boss.put("/campaigns/reactivate", json=DEFINITION)
    assert r.status_code == 200 and r.json()["flow"] == "winback"
    bad = await boss.put("/campaigns/bad", json={**DEFINITION, "name": "bad", "flow": "nope"})
    assert bad.status_code == 422
    names = [c["name"] for c in (await agent.get("/campaigns")).json()["items"]]
    assert {"csat", "winback", "reactivate"} <= set(names)
    assert (await agent.get("/campaigns/reactivate/preview")).json()["audience"] == 2
    assert (await agent.get("/campaigns/nothing/preview")).status_code == 404
    dry = (await boss.post("/campaigns/reactivate/run", params={"dry_run": True})).json()
    assert dry["outcomes"] == {"would_send": 2}
    assert (await boss.post("/campaigns/reactivate/run", params={"key": "k"})).status_code == 202
    for _ in range(100):
        status = (await agent.get("/campaigns/reactivate/status")).json()
        if status["sent"] == 2:
            break
        await asyncio.sleep(0.02)
    assert status["sent"] == 2 and status["runs"][0]["run_key"] == "k"


def test_the_command_line(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def seed() -> None:
        rt = Runtime(make_settings(sqlite_url), channels=[])
        await rt.start(dispatch=False)
        try:
            for user in ("p", "q", "r"):
                msg = inbound("hello", user=user)
                await rt.engine.handle(InboundMessage(**{**msg.__dict__, "channel": "webchat"}))
            from bot.campaigns.definitions import CampaignSettings

            await rt.campaigns.save(CampaignSettings.model_validate(DEFINITION))
        finally:
            await rt.stop()

    asyncio.run(seed())
    monkeypatch.setenv("CICBOT_DATABASE__URL", sqlite_url)
    monkeypatch.setenv("CICBOT_DATABASE__AUTO_MIGRATE", "false")
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["campaigns", "list"])
    assert listed.exit_code == 0 and "reactivate" in listed.output and "csat" in listed.output
    as_json = json.loads(runner.invoke(cli_app, ["campaigns", "list", "--json"]).stdout)
    reminder = next(c for c in as_json if c["name"] == "reminder")
    assert reminder["flow"] is None and reminder["trigger"]["after"] == "flow_abandoned"
    shown = runner.invoke(cli_app, ["campaigns", "preview", "reactivate"])
    assert shown.exit_code == 0 and "reactivate: 3 contacts" in shown.output
    dry = runner.invoke(cli_app, ["campaigns", "run", "reactivate", "--dry-run", "--json"])
    assert dry.exit_code == 0 and json.loads(dry.stdout)["outcomes"] == {"would_send": 3}
    done = runner.invoke(cli_app, ["campaigns", "run", "reactivate", "--key", "k1"])
    assert done.exit_code == 0 and "sent: 3" in done.output
    again = runner.invoke(cli_app, ["campaigns", "run", "reactivate", "--key", "k1"])
    assert again.exit_code == 0 and "sent" not in again.output
    status = runner.invoke(cli_app, ["campaigns", "status", "reactivate", "--json"])
    assert json.loads(status.stdout)["sent"] == 3
    text = runner.invoke(cli_app, ["campaigns", "status", "reactivate"], env={"COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    # the figures add up, and each run says when it ran
    assert "targeted" in text.output and "sent" in text.output and "k1" in text.output
    [run_row] = [line for line in text.output.splitlines() if " k1 " in line]
    assert "done" in run_row and run_row.count(" 3 ") >= 2  # targeted 3, sent 3
    missing = runner.invoke(cli_app, ["campaigns", "status", "nope"])
    assert missing.exit_code == 1 and "no campaign 'nope'" in missing.output


async def test_put_takes_the_name_from_the_path_and_answers_are_typed(
    api: tuple[Runtime, dict[AgentRole, httpx.AsyncClient]],
) -> None:
    """Regression (issue 21): PUT /campaigns/{name} needed the name again in the body, and
    the OpenAPI schema described every answer as an untyped object."""
    _, clients = api
    boss = clients[AgentRole.SUPERVISOR]
    body = {k: v for k, v in DEFINITION.items() if k != "name"}
    r = await boss.put("/campaigns/quiet-one", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "quiet-one" and r.json()["flow"] == "winback"
    other = await boss.put("/campaigns/quiet-one", json={**body, "name": "other"})
    assert other.status_code == 422
    bad = await boss.put("/campaigns/quiet-one", json={**body, "flow": "nope"})
    assert bad.status_code == 422
    preview = (await boss.get("/campaigns/quiet-one/preview")).json()
    assert set(preview) >= {"audience", "would_send", "outcomes", "channels", "sample"}

    schema = (await boss.get("http://t/openapi.json")).json()
    paths = schema["paths"]

    def answer(path: str, method: str) -> dict[str, object]:
        ok = next(v for k, v in paths[path][method]["responses"].items() if k.startswith("2"))
        content: dict[str, object] = ok["content"]["application/json"]["schema"]
        return content

    for path, method, model in (
        ("/api/v1/campaigns", "get", "CampaignList"),
        ("/api/v1/campaigns/{name}", "put", "CampaignSettings"),
        ("/api/v1/campaigns/{name}/preview", "get", "Preview"),
        ("/api/v1/campaigns/{name}/status", "get", "Status"),
        ("/api/v1/link-locks", "get", "LinkLocks"),
        ("/api/v1/link-locks/{lock_id}", "delete", "Done"),
        ("/api/v1/gdpr/retention", "post", "Purged"),
    ):
        assert answer(path, method) == {"$ref": f"#/components/schemas/{model}"}, path
    run = answer("/api/v1/campaigns/{name}/run", "post")
    assert {"$ref": "#/components/schemas/RunStarted"} in run["anyOf"]  # type: ignore[operator]
    status = schema["components"]["schemas"]["Status"]["properties"]
    assert {"targeted", "pending", "sent", "runs"} <= set(status)
    put_body = paths["/api/v1/campaigns/{name}"]["put"]["requestBody"]["content"]
    body_schema = schema["components"]["schemas"]["CampaignBody"]
    assert put_body["application/json"]["schema"]["$ref"].endswith("CampaignBody")
    assert "name" not in body_schema.get("required", [])
