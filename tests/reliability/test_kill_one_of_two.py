"""kill -9 of one of two workers under load: two `cicbot serve` processes on one PostgreSQL
database take webhooks from 30 Telegram chats and 20 Slack users, each update sent to
either at random; one is killed at a random moment and not started again. The platforms'
redelivery goes on to the worker that is left (as a load balancer in front of both would
send it), which must take over what the dead one held: its inbox rows and its outbox rows
come free when their leases run out.

What must hold afterwards, as for one worker's kill (tests/reliability/test_kill.py):
every update answered 200 is in the history exactly once; every reply due reached the
stand-ins; none twice, except in the documented window (a send the platform accepted just
before the kill, its row still `sending`: at most a customer's rows `sending` right after
the kill, counted over both workers, an upper bound).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.reliability.harness import (
    Load,
    ServerProcess,
    Update,
    check,
    in_flight,
    server_env,
    settle,
)
from tests.standins.slack_api import SlackStandIn
from tests.standins.telegram_api import TelegramStandIn

pytestmark = pytest.mark.postgres


async def test_kill_9_one_of_two_workers_under_load(
    fresh_pg: str, db: AsyncEngine, tg: TelegramStandIn, slack: SlackStandIn, logs: Path
) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    env = server_env(fresh_pg, tg, slack)
    workers = [ServerProcess(env, logs / f"worker{i}.log") for i in (0, 1)]
    for w in workers:
        w.start()
    try:
        await asyncio.gather(*(w.wait_ready() for w in workers))
        live = [w.base for w in workers]

        def target(_: Update) -> str:
            return rng.choice(live)

        load = Load(tg, slack, tag=f"kill2{seed}", telegram=30, slack_users=20, messages=3)
        total = len(load.updates)
        sending = asyncio.create_task(load.run(target))
        kill_after = rng.randint(total // 5, total // 2)  # acknowledged updates
        async with asyncio.timeout(120):
            while sum(u.acked_at is not None for u in load.updates) < kill_after:
                await asyncio.sleep(0.01)
        victim = rng.choice(workers)
        victim.kill9()
        window = await in_flight(db)
        acked_at_kill = sum(u.acked_at is not None for u in load.updates)
        # the platform's next attempts reach the worker that is left; attempts in flight
        # to the dead one fail (refused, reset) and are made again
        live.remove(victim.base)
        survivor = next(w for w in workers if w is not victim)
        await sending
        await settle(db)
        outcome = await check(db, load)
    finally:
        for w in workers:
            w.stop()

    about = (
        f"seed {seed}, killed after {acked_at_kill}/{total} acks, in flight {window}; "
        f"parked {outcome.parked}"
    )
    assert acked_at_kill < total, about  # the kill did land under load
    assert outcome.acknowledged == total, about
    assert outcome.missing_from_history == [], about
    assert outcome.twice_in_history == [], about
    assert outcome.in_history == total, about
    assert outcome.replies_due >= len(load.customers), about
    assert outcome.not_sent == 0, about  # the dead worker's leased rows were taken over
    assert outcome.missing == {}, about
    for customer, extra in outcome.doubled.items():
        assert extra <= window.get(customer, 0), f"{customer} got {extra} twice; {about}"
    assert "Traceback" not in survivor.log(), survivor.log_tail()
