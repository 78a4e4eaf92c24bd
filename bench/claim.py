"""Claim benchmark: the dispatcher's pick of each recipient's oldest unsent row, as the
number of recipients waiting grows, on SQLite and PostgreSQL.

    .venv/bin/python bench/claim.py [--db URL] [--sizes 300,10000,100000] [--repeats 15]

Fills the outbox (bulk INSERT) with one unsent row for each of N recipients, after as many
sent rows (history), then times the claim's statement (64 rows, FOR UPDATE SKIP LOCKED on
PostgreSQL, rolled back) with today's pick (`storage.queries.heads`: a window of the
oldest unsent rows) and with the pick it replaced (every recipient's oldest row, a GROUP
BY over all unsent rows; written out below). Then one busy recipient with 99,000 rows
ahead of 1,000 others, its first row being sent: the window holds nothing to claim and
falls back to the GROUP BY. PostgreSQL: --db is the admin URL; a database of the bench's
own is created there and dropped after (statistics gathered with ANALYZE, as autovacuum
would). Prints the median and p90 per claim in ms and the ratio old / new.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import column, delete, insert, select, text, update  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from storage import queries, scratch  # noqa: E402
from storage.migrate import upgrade_async  # noqa: E402
from storage.models import OutboxMessage, OutboxStatus, utcnow  # noqa: E402

LIMIT = 64  # the dispatcher's claim_size with its default concurrency


def group_by_heads(dialect: str) -> Any:
    """The pick before the window: every recipient's oldest unsent row."""
    hint = " INDEXED BY ix_outbox_unfinished" if dialect == "sqlite" else ""
    return text(
        f"SELECT min(id) FROM outbox{hint} WHERE status IN ('pending', 'sending') "
        "AND channel IN ('telegram') GROUP BY channel, recipient_id"
    ).columns(column("id"))


def claim(dialect: str, heads: Any, now: Any, old: bool) -> Any:
    """The dispatcher's claim; the old pick left the due check to it (on PostgreSQL it
    still checks the row itself, re-checked when a row is locked)."""
    if old:
        q = select(OutboxMessage).where(OutboxMessage.id.in_(heads), queries.due_now("outbox", now))
    else:  # as bot/delivery/dispatcher.py
        q = select(OutboxMessage).where(*queries.claimable(dialect, "outbox", heads, now))
    q = q.order_by(OutboxMessage.id).limit(LIMIT)
    return q.with_for_update(skip_locked=True) if dialect == "postgresql" else q


def rows(recipients: list[str], status: OutboxStatus) -> list[dict[str, Any]]:
    then = utcnow() - timedelta(seconds=5)
    return [
        {
            "channel": "telegram",
            "recipient_id": r,
            "thread_key": r,
            "body": {"text": "hi"},
            "status": status,
            "attempts": 0,
            "next_attempt_at": then,
            "created_at": then,
        }
        for r in recipients
    ]


async def fill(engine: AsyncEngine, recipients: list[str]) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(OutboxMessage))
        for status, names in ((OutboxStatus.SENT, recipients), (OutboxStatus.PENDING, recipients)):
            for start in range(0, len(names), 10_000):
                await conn.execute(
                    insert(OutboxMessage), rows(names[start : start + 10_000], status)
                )
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execute(text("COMMIT"))
            await conn.execute(text("ANALYZE outbox"))


async def timed(engine: AsyncEngine, old: bool, repeats: int) -> tuple[float, float]:
    dialect = engine.dialect.name
    times = []
    for _ in range(repeats + 1):  # the first one warms the caches
        now = utcnow()
        heads = (
            group_by_heads(dialect)
            if old
            else queries.heads(
                dialect, "outbox", "recipient_id", ["telegram"], now=now, limit=LIMIT
            )
        )
        async with engine.connect() as conn:
            started = time.perf_counter()
            got = (await conn.execute(claim(dialect, heads, now, old))).all()
            times.append((time.perf_counter() - started) * 1000)
            await conn.rollback()
        assert len(got) == LIMIT or (old is False and len(got) <= LIMIT)
    times = times[1:]
    return statistics.median(times), sorted(times)[int(0.9 * (len(times) - 1))]


async def bench(url: str, label: str, sizes: list[int], repeats: int) -> None:
    await upgrade_async(url)
    engine = create_async_engine(url)
    try:
        cases: list[tuple[str, list[str]]] = [
            (f"{n:,} recipients", [f"r{i}" for i in range(n)]) for n in sizes
        ]
        cases.append(
            ("1 busy (99,000) + 1,000", ["busy"] * 99_000 + [f"r{i}" for i in range(1_000)])
        )
        for name, recipients in cases:
            await fill(engine, recipients)
            if name.startswith("1 busy"):  # its head is being sent: the window has nothing due
                async with engine.begin() as conn:
                    first = await conn.scalar(
                        select(OutboxMessage.id)
                        .where(OutboxMessage.status == OutboxStatus.PENDING)
                        .order_by(OutboxMessage.id)
                        .limit(1)
                    )
                    await conn.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id == first)
                        .values(
                            status=OutboxStatus.SENDING, leased_until=utcnow() + timedelta(hours=1)
                        )
                    )
            old = await timed(engine, True, repeats)
            new = await timed(engine, False, repeats)
            print(
                f"| {label} | {name} | {old[0]:.2f} / {old[1]:.2f} | {new[0]:.2f} / {new[1]:.2f} "
                f"| {old[0] / new[0]:.1f}x |",
                flush=True,
            )
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--sizes", default="300,10000,100000")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        "| database | waiting | GROUP BY pick ms p50 / p90 | window pick ms p50 / p90 | old / new |"
    )
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        await bench(f"sqlite+aiosqlite:///{tmp}/claim.db", "SQLite", sizes, args.repeats)
    if args.db:
        url = await scratch.create(args.db, "cicbot_claim")
        try:
            await bench(url, "PostgreSQL", sizes, args.repeats)
        finally:
            await scratch.drop(args.db, url)


if __name__ == "__main__":
    asyncio.run(main())
