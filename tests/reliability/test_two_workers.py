"""Two `cicbot serve` processes on one PostgreSQL database, the load split across them at
random, and a quarter of the updates delivered to both at the same time (a redelivery
landing on the other worker). Both run their dispatcher, inbox worker and scheduler.

Afterwards: every update is in the history once, every outbox row was claimed once and
sent once (no reply doubled at the stand-ins), one scheduler leads (it holds the advisory
lock; the other worker does not), and a claim raced on both workers is won by one agent.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bot.campaigns.scheduler import LOCK_ID
from bot.desk import auth
from storage.models import AgentRole
from tests.reliability.harness import Load, ServerProcess, Update, check, server_env, settle
from tests.standins.slack_api import SlackStandIn
from tests.standins.telegram_api import TelegramStandIn

pytestmark = pytest.mark.postgres
LEADS = "scheduler: this worker leads"


async def test_two_workers_share_one_database(
    fresh_pg: str, db: AsyncEngine, tg: TelegramStandIn, slack: SlackStandIn, logs: Path
) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    env = server_env(fresh_pg, tg, slack, scheduler=True)
    workers = [ServerProcess(env, logs / f"worker{i}.log") for i in (0, 1)]
    for w in workers:
        w.start()
    try:
        await asyncio.gather(*(w.wait_ready() for w in workers))
        bases = [w.base for w in workers]

        def other(update: Update) -> str | None:
            return rng.choice(bases) if rng.random() < 0.25 else None

        load = Load(tg, slack, tag=f"two{seed}", telegram=20, slack_users=10, messages=3)
        load.twin = other
        await load.run(lambda _: rng.choice(bases))
        await settle(db)
        outcome = await check(db, load)
        claims = await race_claims(db, workers, load)
        await settle(db)
        after_claims = await check(db, load)
        async with db.connect() as conn:
            claimed_again = await conn.scalar(
                text("SELECT count(*) FROM outbox WHERE attempts > 1")
            )
            lock_holders = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND objid = :k AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"k": LOCK_ID},
            )
    finally:
        for w in workers:
            w.stop()

    twins = sum(1 for u in load.updates for a in u.answers if a.startswith("twin"))
    assert twins > 0, seed
    assert outcome.in_history == len(load.updates), (seed, outcome)
    assert outcome.twice_in_history == [], seed
    assert outcome.replies_due >= len(load.customers), outcome
    assert outcome.not_sent == 0 and after_claims.not_sent == 0, after_claims
    assert outcome.missing == {} and after_claims.missing == {}, after_claims
    assert outcome.doubled == {} and after_claims.doubled == {}, after_claims
    assert claimed_again == 0  # each outbox row was claimed by one worker, once
    assert lock_holders == 1
    assert sorted(LEADS in w.log() for w in workers) == [False, True]
    for winners, losers in claims:
        assert (winners, losers) == (1, 1), claims


async def race_claims(
    db: AsyncEngine, workers: list[ServerProcess], load: Load
) -> list[tuple[int, int]]:
    """Two agents, one on each worker, claim the same conversation at once: (200s, 409s)."""
    async with AsyncSession(db) as s, s.begin():
        tokens = [(await auth.create_agent(s, f"Agent {i}", AgentRole.AGENT))[1] for i in (0, 1)]
    async with db.connect() as conn:
        conversations = list(
            (
                await conn.execute(
                    text("SELECT id FROM conversations WHERE status IN ('bot', 'queued') LIMIT 5")
                )
            ).scalars()
        )
    assert conversations
    results = []
    async with httpx.AsyncClient(timeout=10) as client:
        for conv in conversations:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{w.base}/api/v1/conversations/{conv}/claim",
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    for w, token in zip(workers, tokens, strict=True)
                )
            )
            codes = sorted(a.status_code for a in answers)
            results.append((codes.count(200), codes.count(409)))
    return results
