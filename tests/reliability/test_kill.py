"""kill -9 under load: `cicbot serve` (a subprocess, PostgreSQL) is killed at a random
moment while 30 Telegram chats and 20 Slack users write to it, started again, and the
platforms' redelivery goes on (whatever was not answered 200 is sent again).

What must hold afterwards:

* every update answered 200 is in the history (touchpoints) exactly once: it was committed
  to the inbox before the 200, and the inbox worker's engine call is deduplicated on the
  platform's message id when a row processed before the kill is processed again;
* every reply that was due (an outbox row of these customers) reached the stand-ins, and
  the outbox has nothing left unsent;
* no reply reached a stand-in twice, except in the documented window: the platform
  accepted a send and the process died before the row was recorded as sent. Such a row is
  still `sending` in the database right after the kill; when its lease runs out after the
  restart it is sent again. So the replies doubled to a customer are at most that
  customer's rows `sending` at the moment of the kill (read right after it, when nothing
  can change them any more).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.reliability.harness import Load, ServerProcess, check, in_flight, server_env, settle
from tests.standins.slack_api import SlackStandIn
from tests.standins.telegram_api import TelegramStandIn

pytestmark = pytest.mark.postgres


async def test_kill_9_under_load(
    fresh_pg: str, db: AsyncEngine, tg: TelegramStandIn, slack: SlackStandIn, logs: Path
) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    server = ServerProcess(server_env(fresh_pg, tg, slack), logs / "serve.log")
    server.start()
    try:
        first_start = await server.wait_ready()
        load = Load(tg, slack, tag=f"kill{seed}", telegram=30, slack_users=20, messages=3)
        total = len(load.updates)
        sending = asyncio.create_task(load.run(lambda _: server.base))
        kill_after = rng.randint(total // 5, total // 2)  # acknowledged updates
        async with asyncio.timeout(120):
            while sum(u.acked_at is not None for u in load.updates) < kill_after:
                await asyncio.sleep(0.01)
        server.kill9()
        window = await in_flight(db)  # frozen now: the only process is dead
        acked_at_kill = sum(u.acked_at is not None for u in load.updates)
        server.start()
        restart = await server.wait_ready()
        t0 = time.monotonic()
        await sending
        t1 = time.monotonic()
        await settle(db)
        t2 = time.monotonic()
        outcome = await check(db, load)
        print(
            f"start {first_start:.1f}s, restart {restart:.1f}s, rest of the load "
            f"{t1 - t0:.1f}s, settled in {t2 - t1:.1f}s; {outcome}"
        )
    finally:
        server.stop()

    about = (
        f"seed {seed}, killed after {acked_at_kill}/{total} acks, in flight {window}; "
        f"parked {outcome.parked}"
    )
    assert acked_at_kill < total, about  # the kill did land under load
    refused = sum(n for u in load.updates for a, n in u.answers.items() if a != "200")
    assert refused > 0, about  # and updates were redelivered
    assert outcome.acknowledged == total, about
    assert outcome.missing_from_history == [], about
    assert outcome.twice_in_history == [], about
    assert outcome.in_history == total, about
    assert outcome.replies_due >= len(load.customers), about  # one each at least
    assert outcome.not_sent == 0, about
    assert outcome.missing == {}, about
    for customer, extra in outcome.doubled.items():
        assert extra <= window.get(customer, 0), f"{customer} got {extra} twice; {about}"
    assert "Traceback" not in server.log().split("Started server process")[-1], server.log_tail()
