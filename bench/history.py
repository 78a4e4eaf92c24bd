"""Contact-history benchmark: one contact's timeline among many touchpoints, and the
analytics report over all of them.

    .venv/bin/python bench/history.py [--db sqlite|postgres] [--touchpoints N]
                                      [--contacts N] [--target N] [--runs N] [--json FILE]

A fresh database (SQLite: a temporary file; PostgreSQL: a new database on CICBOT_TEST_PG,
dropped afterwards) is migrated, then filled with bulk INSERT … SELECT (a recursive CTE on
SQLite, generate_series on PostgreSQL): `--contacts` contacts with one identity and one
conversation each, `--touchpoints` touchpoints over a year spread across them and four
channels, `--target` of them belonging to contact 1, cases for 5 % of the contacts.
Measured: the timeline API's query (bot.crm.history.timeline_page: the count and the newest
50, newest first) for contact 1 — unfiltered, filtered by channel, filtered by kind, and
the 10th page — p50 / p99 over `--runs` runs each; and the time of one analytics report
(bot.crm.analytics.report) over the whole year. Bounded: about a minute for 1M on SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bot.crm import analytics
from bot.crm.history import timeline_page
from storage import scratch
from storage.db import create_engine, session_factory
from storage.migrate import upgrade_async
from storage.models import utcnow

PG_ADMIN = os.environ.get("CICBOT_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")

SQLITE_FILL = [
    """WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :contacts)
    INSERT INTO contacts (id, name, locale, lifecycle_phase, attributes, created_at, updated_at)
    SELECT x, 'Customer ' || x, 'de', 'active', '{}', datetime('now', '-400 days'),
           datetime('now') FROM n""",
    """INSERT INTO identities (id, contact_id, channel, external_id, reachable, created_at)
    SELECT id, id, 'telegram', 'tg-' || id, 1, created_at FROM contacts""",
    """INSERT INTO conversations (id, contact_id, identity_id, channel, thread_key, status,
        flow_state, priority, created_at, updated_at, closed_at)
    SELECT id, id, id, 'telegram', 'tg-' || id, 'closed', '{}', 0,
           datetime('now', '-365 days'), datetime('now'), datetime('now', '-1 days')
    FROM contacts""",
    """WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < :touchpoints)
    INSERT INTO touchpoints (contact_id, conversation_id, channel, direction, kind, text,
        payload, actor, created_at)
    SELECT c, c,
        CASE x % 4 WHEN 0 THEN 'telegram' WHEN 1 THEN 'slack' WHEN 2 THEN 'email'
             ELSE 'webchat' END,
        CASE x % 3 WHEN 0 THEN 'in' WHEN 1 THEN 'out' ELSE 'internal' END,
        CASE x % 3 WHEN 2 THEN 'escalated' ELSE 'message' END,
        'message number ' || x, '{}',
        CASE x % 3 WHEN 0 THEN 'customer' WHEN 1 THEN
            CASE WHEN x % 7 = 1 THEN 'agent:1' ELSE 'bot' END ELSE 'bot' END,
        datetime('now', '-' || ((:touchpoints - x) * 31536 / :touchpoints) || ' seconds',
                 '-' || ((:touchpoints - x) * 365 / :touchpoints) || ' days')
    FROM (SELECT x, CASE WHEN x <= :target THEN 1
                         ELSE 2 + ((x / 3) * 7919) % (:contacts - 1) END AS c FROM n)""",
    """INSERT INTO cases (reference, contact_id, conversation_id, category, description,
        severity, status, priority, sla_due_at, created_at, updated_at, resolved_at)
    SELECT 'C-B-' || id, id, id, CASE id % 3 WHEN 0 THEN 'delivery' WHEN 1 THEN 'billing'
        ELSE 'product' END, 'd', CASE id % 2 WHEN 0 THEN 'low' ELSE 'high' END, 'resolved', 0,
        datetime('now', '-100 days'), datetime('now', '-101 days'), datetime('now'),
        datetime('now', '-99 days')
    FROM contacts WHERE id % 20 = 0""",
]

PG_FILL = [
    """INSERT INTO contacts (id, name, locale, lifecycle_phase, attributes, created_at,
        updated_at)
    SELECT x, 'Customer ' || x, 'de', 'active', '{}', now() - interval '400 days', now()
    FROM generate_series(1, :contacts) x""",
    """INSERT INTO identities (id, contact_id, channel, external_id, reachable, created_at)
    SELECT id, id, 'telegram', 'tg-' || id, true, created_at FROM contacts""",
    """INSERT INTO conversations (id, contact_id, identity_id, channel, thread_key, status,
        flow_state, priority, created_at, updated_at, closed_at)
    SELECT id, id, id, 'telegram', 'tg-' || id, 'closed', '{}', 0,
        now() - interval '365 days', now(), now() - interval '1 day' FROM contacts""",
    """INSERT INTO touchpoints (contact_id, conversation_id, channel, direction, kind, text,
        payload, actor, created_at)
    SELECT c, c,
        (ARRAY['telegram', 'slack', 'email', 'webchat'])[x % 4 + 1],
        (ARRAY['in', 'out', 'internal'])[x % 3 + 1],
        CASE x % 3 WHEN 2 THEN 'escalated' ELSE 'message' END,
        'message number ' || x, '{}',
        CASE x % 3 WHEN 0 THEN 'customer' WHEN 1 THEN
            CASE WHEN x % 7 = 1 THEN 'agent:1' ELSE 'bot' END ELSE 'bot' END,
        now() - ((:touchpoints - x)::float8 / :touchpoints) * interval '365 days'
    FROM (SELECT x, CASE WHEN x <= :target THEN 1
                         ELSE 2 + ((x / 3)::bigint * 7919) % (:contacts - 1) END AS c
          FROM generate_series(1, :touchpoints) x) g""",
    """INSERT INTO cases (reference, contact_id, conversation_id, category, description,
        severity, status, priority, sla_due_at, created_at, updated_at, resolved_at)
    SELECT 'C-B-' || id, id, id, (ARRAY['delivery', 'billing', 'product'])[id % 3 + 1], 'd',
        (ARRAY['low', 'high'])[id % 2 + 1], 'resolved', 0, now() - interval '100 days',
        now() - interval '101 days', now(), now() - interval '99 days'
    FROM contacts WHERE id % 20 = 0""",
    "SELECT setval('contacts_id_seq', (SELECT max(id) FROM contacts))",
    "ANALYZE",
]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def bench(url: str, kind: str, args: argparse.Namespace) -> dict[str, Any]:
    await upgrade_async(url)
    engine = create_engine(url)
    params = {"contacts": args.contacts, "touchpoints": args.touchpoints, "target": args.target}
    t0 = time.perf_counter()
    async with engine.begin() as conn:
        for sql in SQLITE_FILL if kind == "sqlite" else PG_FILL:
            used = {k: v for k, v in params.items() if f":{k}" in sql}
            await conn.execute(text(sql), used)
    if kind == "sqlite":
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
    fill = time.perf_counter() - t0
    print(f"{kind}: filled {args.touchpoints:,} touchpoints in {fill:.1f} s", flush=True)
    sessions = session_factory(engine)
    result: dict[str, Any] = {
        "db": kind,
        "touchpoints": args.touchpoints,
        "contacts": args.contacts,
        "target_touchpoints": args.target,
        "fill_seconds": round(fill, 1),
        "timeline_ms": {},
    }
    cases = {
        "newest 50": {},
        "channel=email": {"channel": "email"},
        "kind=escalated": {"kind": "escalated"},
        "page 10": {"offset": 450},
    }
    for label, kw in cases.items():
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            async with sessions() as s:
                rows, total = await timeline_page(s, 1, limit=50, **kw)  # type: ignore[arg-type]
            times.append((time.perf_counter() - t) * 1000)
            assert rows and total
        result["timeline_ms"][label] = {
            "p50": round(statistics.median(times), 2),
            "p99": round(pct(times, 0.99), 2),
        }
        print(
            f"  timeline {label:15} p50 {statistics.median(times):7.2f} ms  "
            f"p99 {pct(times, 0.99):7.2f} ms",
            flush=True,
        )
    t = time.perf_counter()
    async with sessions() as s:
        report = await analytics.report(s, since=utcnow() - timedelta(days=400))
    result["analytics_seconds"] = round(time.perf_counter() - t, 2)
    result["analytics_conversations"] = report["self_service"]["conversations"]
    print(
        f"  analytics report over all: {result['analytics_seconds']:.2f} s "
        f"({report['self_service']['conversations']:,} conversations)",
        flush=True,
    )
    await engine.dispose()
    return result


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--touchpoints", type=int, default=1_000_000)
    ap.add_argument("--contacts", type=int, default=100_000)
    ap.add_argument("--target", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.db == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            result = await bench(f"sqlite+aiosqlite:///{tmp}/bench.db", "sqlite", args)
    else:
        async with scratch.database(PG_ADMIN, "cicbot_bench") as url:
            result = await bench(url, "postgres", args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
