"""kill -9 with customers in flight, and with a poison update being handled: `cicbot serve`
as a subprocess (tests/reliability/harness.py), on SQLite and on PostgreSQL.

* A Slack customer's update is being handled (users.info hangs) and a Telegram customer's
  reply is being sent (sendMessage hangs) when the process is killed. Leases are 60 s here
  (the old default): the restarted process takes both rows at once, because it knows the
  process that held them is gone (a new boot id; SQLite has one process, PostgreSQL tells
  by the dead process's advisory lock), and both customers are answered within 5 s of the
  restart.
* A rich-text bomb (shape bounds lifted, a long time budget: its validation runs for
  minutes) is being validated when the process is killed. The restarted process is healthy
  at once; the row, found orphaned once more than `inbox_max_crashes` allows, is parked as
  dead instead of being handed to the validator again; other customers are answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.channels.test_telegram_bounded import EVE, bomb
from tests.reliability.harness import (
    SLACK_PATH,
    TG_PATH,
    TG_SECRET,
    ServerProcess,
    database,
    server_env,
    slack_dm,
)
from tests.standins.slack_api import SlackStandIn, sign
from tests.standins.telegram_api import TelegramStandIn

ANSWERED_WITHIN = 5.0  # seconds after the restarted server answers /healthz


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated database of its own (the servers under test do not migrate)."""
    name = "sqlite_url" if request.param == "sqlite" else "fresh_pg"
    yield request.getfixturevalue(name)


async def rows(db: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def until(check: Any, timeout: float, what: str) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := await check()):
            await asyncio.sleep(0.1)
    assert found, what
    return found


async def post_telegram(client: httpx.AsyncClient, base: str, update: dict[str, Any]) -> int:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TG_SECRET}
    return (await client.post(base + TG_PATH, json=update, headers=headers)).status_code


async def post_slack(client: httpx.AsyncClient, base: str, envelope: dict[str, Any]) -> int:
    body = json.dumps(envelope).encode()
    headers = {"Content-Type": "application/json", **sign(body)}
    return (await client.post(base + SLACK_PATH, content=body, headers=headers)).status_code


async def test_in_flight_customers_answered_within_5s_of_a_restart(
    url: str, tg: TelegramStandIn, slack: SlackStandIn, logs: Path
) -> None:
    env = server_env(url, tg, slack) | {"CICBOT_DISPATCHER__LEASE_SECONDS": "60"}
    server = ServerProcess(env, logs / "serve.log")
    db = database(url)
    sam, tom = "U0RSAM0001", 640_000_001
    slack.add_user(sam, "Sam Slack", locale="en-US")
    server.start()
    try:
        await server.wait_ready()
        async with httpx.AsyncClient(timeout=10) as client:
            slack.stall("users.info", 120)  # Sam's update hangs in the worker
            tg.stall("sendMessage", 120, chat_id=tom)  # Tom's reply hangs on its way out
            event = slack.user_message(sam, slack_dm(sam), "where is my parcel?")
            assert await post_slack(client, server.base, slack.envelope(event)) == 200
            assert await post_telegram(client, server.base, tg.push_text(tom, "hello")) == 200
        await until(
            lambda: rows(
                db, "SELECT id FROM inbox WHERE status = 'processing' AND channel = 'slack'"
            ),
            60,
            "Sam's update in the worker",
        )
        await until(
            lambda: rows(
                db,
                "SELECT id FROM outbox WHERE status = 'sending' AND recipient_id = :r",
                r=str(tom),
            ),
            60,
            "Tom's reply being sent",
        )
        server.kill9()
        held = await rows(db, "SELECT leased_by FROM inbox WHERE status = 'processing'")
        assert held and held[0][0]  # the dead process's boot id
        server.start()
        took = await server.wait_ready()
        restarted = time.monotonic()

        async def both_answered() -> bool:
            return bool(slack.bot_messages(slack_dm(sam)) and tg.sent_messages(tom))

        await until(both_answered, ANSWERED_WITHIN + 30, "both customers answered")
        answered = time.monotonic() - restarted
        print(f"restart took {took:.1f}s; both answered {answered:.2f}s after it")
        assert answered < ANSWERED_WITHIN
        assert "due again at once" in server.log()
    finally:
        server.stop()
        await db.dispose()


async def test_killed_while_a_poison_update_is_handled_restarts_healthy(
    url: str, tg: TelegramStandIn, slack: SlackStandIn, logs: Path
) -> None:
    env = server_env(url, tg, slack) | {
        "CICBOT_TELEGRAM__MAX_RICH_TEXT_COST": str(10**9),  # the bomb reaches aiogram
        "CICBOT_TELEGRAM__PARSE_BUDGET_SECONDS": "60",
        "CICBOT_DISPATCHER__INBOX_MAX_CRASHES": "1",
    }
    server = ServerProcess(env, logs / "serve.log")
    db = database(url)
    server.start()
    try:
        await server.wait_ready()
        async with httpx.AsyncClient(timeout=10) as client:
            # the validating workers are up: the bomb goes to aiogram, not the raw reader
            warm = tg.push_text(EVE + 1, "warm up")
            assert await post_telegram(client, server.base, warm) == 200
            await tg.wait_for_messages(1, EVE + 1, timeout=120)
            await asyncio.sleep(2)
            assert await post_telegram(client, server.base, bomb(6, 10_000)) == 200
            await until(
                lambda: rows(
                    db,
                    "SELECT id FROM inbox WHERE status = 'processing' AND partition_key = :p",
                    p=str(EVE),
                ),
                60,
                "the bomb being validated",
            )
            await asyncio.sleep(1)
            server.kill9()
            server.start()
            await server.wait_ready()
            restarted = time.monotonic()
            health = await client.get(server.base + "/healthz")
            assert health.status_code == 200
            dead = await until(
                lambda: rows(
                    db,
                    "SELECT error FROM inbox WHERE status = 'dead' AND partition_key = :p",
                    p=str(EVE),
                ),
                ANSWERED_WITHIN + 30,
                "the bomb parked",
            )
            parked = time.monotonic() - restarted
            assert "process stopped while handling this update" in dead[0][0]
            letters = await rows(db, "SELECT reference FROM dead_letters")
            assert len(letters) == 1
            # another customer is answered as usual
            assert await post_telegram(client, server.base, tg.push_text(EVE + 2, "hi")) == 200
            await tg.wait_for_messages(1, EVE + 2, timeout=30)
            answered = time.monotonic() - restarted
        print(
            f"bomb parked {parked:.2f}s, the next customer answered {answered:.2f}s after restart"
        )
        assert parked < ANSWERED_WITHIN
    finally:
        server.stop()
        await db.dispose()
