"""Campaign benchmark: N recipients through the Telegram stand-in, on 127.0.0.1 only.

    .venv/bin/python bench/campaign.py [--recipients 10000] [--limit 300] [--db URL]
                                       [--concurrency 4] [--drain-only] [--workers N]

Seeds N contacts with a reachable Telegram identity (bulk insert, SQLite in a temporary
directory unless --db names another database; a PostgreSQL URL, e.g.
postgresql+asyncpg://postgres@127.0.0.1:5432/test, is the admin connection: the bench
creates a database of its own there and drops it after), defines a one-message campaign
(the consent question), then runs it in this process while the runtime's dispatcher sends
the outbox through the Telegram channel to the stand-in (tests/standins/telegram_api.py).
cicbot's Telegram shaping is set to --limit messages/s for the bot; the stand-in answers
429 above the same limit (a 1-second sliding window), so a 429 means our shaping let
through more than the platform allows. --drain-only queues the whole campaign with the
dispatcher stopped, then times the dispatcher alone. --workers N (PostgreSQL only) sends
with N `cicbot serve` processes on the same database instead of this process's dispatcher
(the campaign still runs here, its dispatcher not started); the platform's limit is the
bot's, so each worker shapes to --limit / N (--worker-rate to choose otherwise).

Reported: wall time from the run's start to the last message arriving at the stand-in,
against the ideal N / limit (the ratio; 1.0 is the rate limit itself), how many were sent
while the run queued and how fast the rest went, this process's CPU (stand-in included)
and statements per message, 429s provoked (should be 0), duplicates (messages beyond one
per recipient; must be 0), the campaign's own figures and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, insert, select  # noqa: E402

from bot.campaigns.definitions import CampaignSettings  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.runtime import Runtime  # noqa: E402
from storage import scratch  # noqa: E402
from storage.migrate import upgrade_async  # noqa: E402
from storage.models import Contact, Identity  # noqa: E402
from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn  # noqa: E402

CHAT_BASE = 7_000_000_000


async def seed(rt: Runtime, n: int) -> None:
    async with rt.sessions() as s, s.begin():
        for start in range(0, n, 2000):
            rows = [
                {
                    "name": f"Kunde {i}",
                    "locale": "de",
                    "lifecycle_phase": "active",
                    "attributes": {},
                }
                for i in range(start, min(n, start + 2000))
            ]
            await s.execute(insert(Contact), rows)
        ids = (await s.execute(select(Contact.id).order_by(Contact.id))).scalars().all()
        for start in range(0, len(ids), 2000):
            await s.execute(
                insert(Identity),
                [
                    {
                        "contact_id": cid,
                        "channel": "telegram",
                        "external_id": str(CHAT_BASE + cid),
                        "reachable": True,
                    }
                    for cid in ids[start : start + 2000]
                ],
            )


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


WEBHOOK_SECRET = "bench-webhook-secret-0123456789"
WORKER_PORT = 18_700


def spawn_workers(n: int, url: str, api_base: str, rate: float) -> list[subprocess.Popen[bytes]]:
    """N `cicbot serve` processes on the database, sending through the stand-in (their
    logs in the temporary directory, cicbot-bench-worker-<i>.log)."""
    env = {
        **os.environ,
        "CICBOT_DATABASE__URL": url,
        "CICBOT_DATABASE__AUTO_MIGRATE": "false",
        "CICBOT_TELEGRAM__TOKEN": DEFAULT_TOKEN,
        "CICBOT_TELEGRAM__MODE": "webhook",
        "CICBOT_TELEGRAM__WEBHOOK_SECRET": WEBHOOK_SECRET,
        "CICBOT_TELEGRAM__API_BASE": api_base,
        "CICBOT_TELEGRAM__RATE_PER_SECOND": str(rate),
        "CICBOT_CAMPAIGNS__SCHEDULER": "false",
    }
    cicbot = str(Path(sys.executable).parent / "cicbot")
    procs = []
    for i in range(n):
        with open(Path(tempfile.gettempdir()) / f"cicbot-bench-worker-{i}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [cicbot, "serve", "--host", "127.0.0.1", "--port", str(WORKER_PORT + i)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    return procs


async def wait_ready(procs: list[subprocess.Popen[bytes]]) -> None:
    """Until each worker answers /healthz."""
    import httpx

    async with httpx.AsyncClient() as http:
        for i, proc in enumerate(procs):
            for _ in range(600):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {i} exited with {proc.returncode}")
                try:
                    r = await http.get(f"http://127.0.0.1:{WORKER_PORT + i}/healthz")
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"worker {i} did not come up")


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def bench(
    n: int,
    limit: int,
    db: str | None,
    timeout: float,
    concurrency: int,
    drain_only: bool = False,
    workers: int = 0,
    worker_rate: float | None = None,
) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="cicbot-bench-")
    url = db or f"sqlite+aiosqlite:///{tmp.name}/bench.db"
    admin = None
    if url.startswith("postgresql"):
        # a database of its own on that server, dropped afterwards (the URL's is the admin's)
        admin, url = url, await scratch.create(url, "cicbot_campaign")
    try:
        return await measure(n, limit, url, timeout, concurrency, drain_only, workers, worker_rate)
    finally:
        if admin is not None:
            await scratch.drop(admin, url)
        tmp.cleanup()


async def measure(
    n: int,
    limit: int,
    url: str,
    timeout: float,
    concurrency: int,
    drain_only: bool,
    workers: int = 0,
    worker_rate: float | None = None,
) -> dict[str, Any]:
    await upgrade_async(url)
    async with TelegramStandIn() as standin:
        standin.rate_limit(per_chat_per_sec=None, global_per_sec=limit)
        base = load_settings(ROOT / "config.yaml").model_dump()
        base["database"] = {"url": url, "auto_migrate": False}
        base["telegram"] = {
            **base["telegram"],
            "token": DEFAULT_TOKEN,
            "mode": "webhook",
            "webhook_secret": WEBHOOK_SECRET,
            "api_base": standin.base_url,
            "rate_per_second": limit,
        }
        base["campaigns"] = {
            "scheduler": False,
            "builtin": False,
            "definitions": [],
            "concurrency": concurrency,
        }
        from bot.config import Settings

        settings = Settings(**base)
        rt = Runtime(settings, channels=["telegram"])
        await rt.start(dispatch=not workers)
        procs: list[subprocess.Popen[bytes]] = []
        children_before = cpu_seconds(resource.RUSAGE_CHILDREN)
        try:
            await seed(rt, n)
            await rt.campaigns.save(
                CampaignSettings(
                    name="bench",
                    flow="consent",
                    purpose="service",
                    legal_basis="service",
                    audience={"lifecycle_phase": ["active"]},
                    quiet_hours=None,
                    rate_per_second=limit * 2,  # queueing is not the bottleneck
                    frequency_cap=10,
                )
            )
            statements = [0]

            def count(*_: object) -> None:
                statements[0] += 1

            event.listen(rt.db.sync_engine, "before_cursor_execute", count)
            if workers:
                procs = spawn_workers(
                    workers, url, standin.base_url, worker_rate or limit / workers
                )
                await wait_ready(procs)
            if drain_only:
                await rt.dispatcher.stop()  # queued first, sent after: the dispatcher alone
            started = time.monotonic()
            cpu_before = cpu_seconds()
            report = await rt.campaigns.run("bench", run_key="bench")
            queued_cpu = cpu_seconds() - cpu_before
            queued_statements = statements[0]
            sent_when_queued = len(standin.sent_messages())
            if drain_only:
                await rt.dispatcher.start()
            queued = time.monotonic() - started
            deadline = started + timeout
            # counted as they arrive (not the whole list every poll: that cost grew with N,
            # in the process being measured); the end is the last message's arrival
            seen, arrived, last_at = 0, 0, started
            while time.monotonic() < deadline:
                for call in standin.calls[seen:]:
                    if call.method.lower() == "sendmessage":
                        arrived, last_at = arrived + 1, call.at
                seen = len(standin.calls)
                if arrived >= n:
                    break
                await asyncio.sleep(0.05)
            wall = (last_at if arrived >= n else time.monotonic()) - started
            cpu = cpu_seconds() - cpu_before
            per_chat = Counter(p.get("chat_id") for p in standin.sent_messages())
            status = await rt.campaigns.status("bench")
        finally:
            stop_workers(procs)
            await rt.stop()
        workers_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - children_before
        ideal = n / limit
        return {
            "recipients": n,
            "limit_per_second": limit,
            "concurrency": concurrency,
            "workers": workers,  # 0: this process's dispatcher sent
            "delivered": len(per_chat),
            "wall_seconds": round(wall, 2),
            "queue_seconds": round(queued, 2),
            "ideal_seconds": round(ideal, 2),
            "ratio": round(wall / ideal, 2),
            # the dispatcher alone: how fast what was left when queueing ended went out
            "sent_when_queued": sent_when_queued,
            "drain_seconds": round(wall - queued, 2),
            "drain_per_second": round((n - sent_when_queued) / max(wall - queued, 1e-3), 1),
            # this process's CPU (the stand-in included), over the run and its queueing
            "cpu_seconds": round(cpu, 2),
            "cpu_share": round(cpu / wall, 2),
            "cpu_ms_per_message": round(cpu * 1000 / max(n, 1), 2),
            # the worker processes' CPU, start-up included (--workers)
            "workers_cpu_ms_per_message": round(workers_cpu * 1000 / max(n, 1), 2),
            "queue_cpu_ms_per_message": round(queued_cpu * 1000 / max(n, 1), 2),
            # statements (round trips) per message: queueing it, and in all (sending too)
            "queue_statements_per_message": round(queued_statements / max(n, 1), 2),
            "statements_per_message": round(statements[0] / max(n, 1), 2),
            "http_429": standin.count_429,
            "duplicates": sum(c - 1 for c in per_chat.values() if c > 1),
            "outcomes": dict(report.outcomes),
            "figures": {k: status[k] for k in ("sent", "failed", "skipped")},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=300, help="messages/s, bot-wide")
    parser.add_argument("--db", default=None, help="database URL (default: temporary SQLite)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--concurrency", type=int, default=4, help="deliveries in flight (campaigns.concurrency)"
    )
    parser.add_argument(
        "--drain-only",
        action="store_true",
        help="queue the whole campaign first, then time the dispatcher sending it",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="send with N `cicbot serve` processes (PostgreSQL only; 0: this process)",
    )
    parser.add_argument(
        "--worker-rate", type=float, default=None, help="each worker's rate (default limit / N)"
    )
    args = parser.parse_args()
    if args.workers and not (args.db or "").startswith("postgresql"):
        parser.error("--workers needs --db postgresql+asyncpg://...")
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(
        bench(
            args.recipients,
            args.limit,
            args.db,
            args.timeout,
            args.concurrency,
            args.drain_only,
            args.workers,
            args.worker_rate,
        )
    )
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
