"""Helpers for the Slack channel tests: settings pointing at the stand-in, the real app under
a real uvicorn on 127.0.0.1 (tests/server.py), and waiting until the work is done."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select

from bot.config import Settings
from bot.runtime import Runtime
from channels.slack.adapter import EVENTS_PATH, SlackChannel
from channels.slack.settings import SlackSettings
from storage.models import (
    Touchpoint,
)
from tests.conftest import make_settings
from tests.conftest import settled as idle
from tests.server import serve
from tests.standins.slack_api import BOT_TOKEN, SIGNING_SECRET, SlackStandIn

AGENT_CHANNEL = "C07AGENTS1"
SHARED = "C07SHARED1"  # a customer channel (Slack Connect)
OTHER = "C07GENERAL"  # a channel the bot is in but that is not a customer channel
JAMES, JAMES_DM = "U07JAMES01", "D07JAMES01"
ANNA = "U07ANNA001"
ERIKA, MAX = "U07ERIKA01", "U07MAXAG01"  # agents


def slack_settings(db_url: str, slack: SlackStandIn, **options: Any) -> Settings:
    """Test settings with Slack on, pointed at the stand-in. Per-channel shaping is loosened
    so conversations are not paced at 1 message/s (the shaping tests set their own)."""
    values: dict[str, Any] = {
        "bot_token": BOT_TOKEN,
        "signing_secret": SIGNING_SECRET,
        "api_base": slack.api_base,
        "agent_channel": AGENT_CHANNEL,
        "customer_channels": [SHARED],
        "channel_rate_per_second": 50.0,
        "channel_burst": 10,
        "request_timeout": 5,
    }
    values.update(options)
    extra = values.pop("settings", {})
    return make_settings(db_url, slack=SlackSettings(**values), **extra)


def cast(slack: SlackStandIn) -> None:
    slack.add_user(JAMES, "James Walker", locale="en-GB", email="james@example.com")
    slack.add_user(ANNA, "Anna Schmidt", locale="de-DE", email="anna@example.de", team="T0EXTERNAL")
    slack.add_user(ERIKA, "Erika Muster", email="erika@cic.example")
    slack.add_user(MAX, "Max Agent")


@asynccontextmanager
async def serving(
    settings: Settings, slack: SlackStandIn, channels: Sequence[str] = ("slack",)
) -> AsyncIterator[Runtime]:
    """The application under uvicorn; the stand-in delivers to its events URL."""
    runtime = Runtime(settings, channels=list(channels))
    async with serve(runtime) as (base, rt):
        slack.app_url = base + EVENTS_PATH
        yield rt


def channel(runtime: Runtime) -> SlackChannel:
    ch = runtime.channels["slack"]
    assert isinstance(ch, SlackChannel)
    return ch


async def settled(runtime: Runtime, timeout: float = 10) -> None:
    """Wait until every inbox row is processed and the outbox has nothing left to send."""
    await idle(runtime, timeout)


async def rows(runtime: Runtime, model: Any) -> list[Any]:
    async with runtime.sessions() as s:
        return list((await s.execute(select(model).order_by(model.id))).scalars())


async def touchpoints(runtime: Runtime) -> list[Touchpoint]:
    rows_: list[Touchpoint] = await rows(runtime, Touchpoint)
    return rows_


def buttons(message: dict[str, Any]) -> list[str]:
    """The values (or action ids) of a message's buttons."""
    return [
        e.get("value") or e.get("action_id", "")
        for b in message.get("blocks", [])
        if b.get("type") == "actions"
        for e in b.get("elements", [])
    ]


def block_text(message: dict[str, Any]) -> str:
    """Everything a person reads on a message: its blocks' texts, or its text."""
    parts: list[str] = []
    for b in message.get("blocks", []):
        for t in [b.get("text"), *b.get("fields", []), *b.get("elements", [])]:
            if isinstance(t, dict) and isinstance(t.get("text"), str):
                parts.append(t["text"])
            elif isinstance(t, dict) and isinstance(t.get("text"), dict):
                parts.append(t["text"].get("text", ""))
    return "\n".join(parts) or str(message.get("text", ""))
