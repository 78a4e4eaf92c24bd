"""kill -9 under load, the long run: tests/reliability/test_kill.py with more messages and
several kills.

    .venv/bin/python bench/chaos.py [--messages 2000] [--kills 3] [--telegram 120]
                                    [--slack 80] [--seed N]

`cicbot serve` runs as a subprocess on a fresh PostgreSQL database (created on the server
CICBOT_TEST_PG names, dropped afterwards); the Telegram and Slack stand-ins run in this
process. The customers send their messages in order, each redelivered until answered 200;
the server is killed with SIGKILL at random moments and started again at once.

Printed: messages acknowledged and found in the history (exactly once), replies due,
delivered and doubled (and the bound on doubles: the sends in flight at the kills), and per
restart the time from the kill until the next message was acknowledged again (median).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
sys.path.insert(0, str(ROOT))

from storage.migrate import upgrade  # noqa: E402
from tests.conftest import PG_ADMIN_URL, _pg_admin  # noqa: E402
from tests.reliability.harness import (  # noqa: E402
    Load,
    ServerProcess,
    check,
    database,
    in_flight,
    server_env,
    settle,
)
from tests.standins.slack_api import SlackStandIn  # noqa: E402
from tests.standins.telegram_api import TelegramStandIn  # noqa: E402


async def chaos(args: argparse.Namespace, db_url: str, logs: Path) -> int:
    rng = random.Random(args.seed)
    customers = args.telegram + args.slack
    per_customer = max(1, -(-args.messages // customers))
    db = database(db_url)
    async with TelegramStandIn() as tg, SlackStandIn() as slack:
        server = ServerProcess(server_env(db_url, tg, slack), logs / "serve.log")
        server.start()
        try:
            first = await server.wait_ready()
            print(f"started in {first:.1f}s; {customers} customers × {per_customer} messages")
            load = Load(
                tg,
                slack,
                tag=f"chaos{args.seed}",
                telegram=args.telegram,
                slack_users=args.slack,
                messages=per_customer,
                pause=0.2,
            )
            total = len(load.updates)
            started = time.monotonic()
            sending = asyncio.create_task(load.run(lambda _: server.base, timeout=3600))
            recoveries: list[float] = []
            window = 0
            for k in range(args.kills):
                share = (k + rng.uniform(0.3, 0.9)) / (args.kills + 1)
                while sum(u.acked_at is not None for u in load.updates) < share * total:
                    await asyncio.sleep(0.05)
                    if sending.done():
                        break
                server.kill9()
                killed = time.monotonic()
                in_flight_now = sum((await in_flight(db)).values())
                window += in_flight_now
                acked = sum(u.acked_at is not None for u in load.updates)
                server.start()
                await server.wait_ready()
                while not any(u.acked_at and u.acked_at > killed for u in load.updates):
                    await asyncio.sleep(0.05)
                    if sending.done():
                        break
                recoveries.append(time.monotonic() - killed)
                print(
                    f"kill {k + 1}: after {acked}/{total} acks, {in_flight_now} sends in "
                    f"flight; acknowledging again after {recoveries[-1]:.1f}s"
                )
            await sending
            await settle(db, timeout=600)
            took = time.monotonic() - started
            outcome = await check(db, load)
        finally:
            server.stop()
            await db.dispose()
    doubled = sum(outcome.doubled.values())
    redelivered = sum(u.attempts - 1 for u in load.updates)
    print(f"messages sent:           {total} in {took:.0f}s ({redelivered} redeliveries)")
    print(f"acknowledged (200):      {outcome.acknowledged}")
    print(f"in history exactly once: {outcome.in_history}")
    print(
        f"missing / twice:         {len(outcome.missing_from_history)} / "
        f"{len(outcome.twice_in_history)}"
    )
    print(f"replies due:             {outcome.replies_due} (not sent: {outcome.not_sent})")
    print(f"replies delivered:       {outcome.delivered}")
    print(f"replies missing:         {sum(outcome.missing.values())}")
    print(f"replies doubled:         {doubled} (bound: {window} sends in flight at the kills)")
    if recoveries:
        print(
            f"recovery after a kill:   median {statistics.median(recoveries):.1f}s "
            f"(min {min(recoveries):.1f}s, max {max(recoveries):.1f}s)"
        )
    ok = (
        outcome.in_history == outcome.acknowledged == total
        and not outcome.missing
        and outcome.not_sent == 0
        and doubled <= window
    )
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--telegram", type=int, default=120, help="Telegram customers")
    parser.add_argument("--slack", type=int, default=80, help="Slack customers")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    if not 1 <= args.messages <= 100_000 or not 0 <= args.kills <= 50:
        parser.error("--messages 1..100000, --kills 0..50")
    print(f"seed {args.seed}")
    name = f"cicbot_chaos_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(f"CREATE DATABASE {name}"))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        with tempfile.TemporaryDirectory(prefix="cicbot-chaos-") as logs:
            return asyncio.run(chaos(args, url, Path(logs)))
    finally:
        asyncio.run(_pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


if __name__ == "__main__":
    sys.exit(main())
