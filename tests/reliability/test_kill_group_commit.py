"""kill -9 inside a group commit: `cicbot serve` (PostgreSQL) is killed while one of its
transactions handles several inbox rows at once (bot/delivery/group.py: each row in a
savepoint, one commit for all), then started again.

The moment is found from outside: PostgreSQL shows the server's session inside a
transaction whose last statement wrote the turns' replies (the group commit writes all its
rows' in one INSERT near its end, then its touchpoints, flow states and done marks in one
statement, storage/group_end.py; a group runs without savepoints unless one of its rows
fails, so a SAVEPOINT is no mark, and with 60 customers at once a group holds several).
A kill that lands after the transaction committed proves nothing, and the next group is
tried once the restarted process has handled the rows the kill orphaned (it takes those
one at a time, each alone: bot/delivery/inbox.py), so that the next kill lands in a group
again, not in one of those.
That transaction must be rolled back by the kill, all of it (its xid's status is
read afterwards), and the rows are handled again after the restart: every acknowledged
update in the history exactly once, every reply sent, none twice beyond the documented
window (a send that reached the platform just before the kill).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.reliability.harness import Load, ServerProcess, check, in_flight, server_env, settle
from tests.standins.slack_api import SlackStandIn
from tests.standins.telegram_api import TelegramStandIn

pytestmark = pytest.mark.postgres
ATTEMPTS = 5  # kills, until one lands inside a group's transaction

IN_GROUP = text(
    "SELECT backend_xid::text FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND state IN ('idle in transaction', 'active') AND query LIKE 'INSERT INTO outbox%' "
    "AND backend_xid IS NOT NULL LIMIT 1"
)

HELD = text("SELECT DISTINCT leased_by FROM inbox WHERE status = 'processing'")
ORPHANS = text("SELECT count(*) FROM inbox WHERE status = 'processing' AND leased_by = ANY(:dead)")


async def test_kill_9_inside_a_group_commit(
    fresh_pg: str, db: AsyncEngine, tg: TelegramStandIn, slack: SlackStandIn, logs: Path
) -> None:
    server = ServerProcess(server_env(fresh_pg, tg, slack), logs / "serve.log")
    server.start()
    try:
        await server.wait_ready()
        load = Load(tg, slack, tag=f"group{int(time.time())}", telegram=60, slack_users=0)
        total = len(load.updates)
        sending = asyncio.create_task(load.run(lambda _: server.base))
        # the INSERT is seen from outside, the kill lands a moment later: a group that
        # committed meanwhile proves nothing, so the next group is tried (the load goes on)
        tries: list[str] = []
        window: dict[str, int] = {}
        status = xid = None
        while status != "aborted" and len(tries) < ATTEMPTS:
            xid = None
            async with db.connect() as conn, asyncio.timeout(120):
                while xid is None:  # polled as fast as the database answers
                    xid = (await conn.execute(IN_GROUP)).scalar()
                    await conn.rollback()
            server.kill9()
            async with db.connect() as conn:  # the rows the dead process held
                dead = (await conn.execute(HELD)).scalars().all()
            for customer, n in (await in_flight(db)).items():  # each kill's send window
                window[customer] = window.get(customer, 0) + n
            acked_at_kill = sum(u.acked_at is not None for u in load.updates)
            async with db.connect() as conn:
                # 32-bit xid of a fresh cluster (epoch 0): its full id is the same number
                status = (
                    await conn.execute(
                        text("SELECT pg_xact_status(CAST(:x AS xid8))"), {"x": int(xid)}
                    )
                ).scalar()
            tries.append(f"{xid} {status} after {acked_at_kill}/{total} acks")
            server.start()
            await server.wait_ready()
            if status != "aborted":  # before the next try: the orphans handled, alone
                async with db.connect() as conn, asyncio.timeout(120):
                    while (await conn.execute(ORPHANS, {"dead": dead})).scalar():
                        await conn.rollback()
                        await asyncio.sleep(0.05)
        await sending
        await settle(db)
        outcome = await check(db, load)
    finally:
        server.stop()

    about = f"killed in transactions: {'; '.join(tries)}; parked {outcome.parked}"
    assert status == "aborted", about  # the group's work vanished whole
    assert outcome.acknowledged == total, about
    assert outcome.missing_from_history == [], about
    assert outcome.twice_in_history == [], about
    assert outcome.in_history == total, about
    assert outcome.not_sent == 0, about
    assert outcome.missing == {}, about
    for customer, extra in outcome.doubled.items():
        assert extra <= window.get(customer, 0), f"{customer} got {extra} twice; {about}"
