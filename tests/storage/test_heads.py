"""`queries.heads`: the claims' pick of each partition's oldest unfinished row, read from a
window of the oldest unfinished rows, falls back to every partition's head when the window
cannot answer; checked against the definition, on both databases."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from storage import queries
from storage.models import OutboxMessage, OutboxStatus, utcnow
from tests.conftest import _truncate

LIMIT = 8
WINDOW = queries.WINDOW_IN_FLIGHT + queries.WINDOW_PER_CLAIM * LIMIT  # 544 rows


def rows(recipients: Iterable[str]) -> list[dict[str, Any]]:
    now = utcnow() - timedelta(seconds=1)
    return [
        {
            "channel": "telegram",
            "recipient_id": r,
            "thread_key": r,
            "body": {"text": "hi"},
            "status": OutboxStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for r in recipients
    ]


async def claim_and_definition(
    url: str, *, partition: str | None = None
) -> tuple[list[int], list[int]]:
    """The ids the dispatcher's claim would take, and the same by the definition."""
    engine = create_async_engine(url)
    now = utcnow()
    try:
        async with engine.connect() as conn:
            dialect = conn.dialect.name
            heads = queries.heads(
                dialect,
                "outbox",
                "recipient_id",
                ["telegram"],
                now=now,
                limit=LIMIT,
                partition=partition,
            )
            q = select(OutboxMessage.id).where(*queries.claimable(dialect, "outbox", heads, now))
            got = list((await conn.execute(q.order_by(OutboxMessage.id).limit(LIMIT))).scalars())
            every = (await conn.execute(select(OutboxMessage))).all()
    finally:
        await engine.dispose()
    oldest: dict[str, Any] = {}
    for r in sorted(every, key=lambda r: r.id):
        if r.status in (OutboxStatus.PENDING, OutboxStatus.SENDING):
            oldest.setdefault(r.recipient_id, r)
    claimable = sorted(
        r.id
        for r in oldest.values()
        if (partition is None or r.recipient_id == partition)
        and (
            (r.status == OutboxStatus.PENDING and r.next_attempt_at <= now)
            or (r.status == OutboxStatus.SENDING and r.leased_until < now)
        )
    )
    return got, claimable[:LIMIT]


async def fill(url: str, recipients: list[str]) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(OutboxMessage), rows(recipients))
    finally:
        await engine.dispose()


async def change(url: str, *where: Any, **values: Any) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(update(OutboxMessage).where(*where).values(**values))
    finally:
        await engine.dispose()


async def test_many_recipients_are_answered_from_the_window(db_url: str) -> None:
    await fill(db_url, [f"r{i}" for i in range(200)] + ["r3", "r5"])
    await change(db_url, OutboxMessage.recipient_id == "r1", status=OutboxStatus.SENT)
    got, want = await claim_and_definition(db_url)
    assert got == want and len(got) == LIMIT
    assert await claim_and_definition(db_url, partition="r5") == ([6], [6])


async def test_a_busy_recipient_filling_the_window_does_not_hide_the_others(db_url: str) -> None:
    # its head is being sent (leased): the window holds none that may be claimed
    busy = WINDOW + 10
    await fill(db_url, ["busy"] * busy + [f"r{i}" for i in range(20)])
    later = utcnow() + timedelta(minutes=5)
    await change(db_url, OutboxMessage.id == 1, status=OutboxStatus.SENDING, leased_until=later)
    got, want = await claim_and_definition(db_url)
    assert got == want == list(range(busy + 1, busy + 1 + LIMIT))
    # its lease runs out: it is the oldest again, and its next rows still wait behind it
    await change(db_url, OutboxMessage.id == 1, leased_until=utcnow() - timedelta(seconds=1))
    got, want = await claim_and_definition(db_url)
    assert got == want == [1, *range(busy + 1, busy + LIMIT)]


@pytest.mark.postgres
async def test_a_second_worker_claims_the_next_heads(pg_url: str) -> None:
    """Two claims at once (FOR UPDATE SKIP LOCKED): the second takes the next heads, not
    none (the window offered only as many heads as one claim takes)."""
    await _truncate(pg_url)
    await fill(pg_url, [f"r{i}" for i in range(100)])
    engine = create_async_engine(pg_url)
    now = utcnow()

    def claim() -> Any:
        heads = queries.heads(
            "postgresql", "outbox", "recipient_id", ["telegram"], now=now, limit=LIMIT
        )
        q = select(OutboxMessage.id).where(*queries.claimable("postgresql", "outbox", heads, now))
        return q.order_by(OutboxMessage.id).limit(LIMIT).with_for_update(skip_locked=True)

    try:
        async with engine.connect() as a, engine.connect() as b:
            first = list((await a.execute(claim())).scalars())
            second = list((await b.execute(claim())).scalars())
            await a.rollback()
            await b.rollback()
    finally:
        await engine.dispose()
    assert first == list(range(1, 1 + LIMIT))
    assert second == list(range(1 + LIMIT, 1 + 2 * LIMIT))


async def test_rows_waiting_for_a_retry_do_not_starve_the_rows_behind_them(db_url: str) -> None:
    waiting = WINDOW + 10  # all but the last 10 waiting for a retry
    await fill(db_url, [f"r{i}" for i in range(waiting + 100)])
    later = utcnow() + timedelta(minutes=5)
    await change(db_url, OutboxMessage.id <= waiting, next_attempt_at=later)
    got, want = await claim_and_definition(db_url)
    assert got == want == list(range(waiting + 1, waiting + 1 + LIMIT))


def work(path: Path, recipients: int, *, limit: int = 64, in_flight: int = 0) -> int:
    """SQLite virtual-machine steps of one claim's pick among `recipients` waiting ones,
    the oldest `in_flight` of them being sent (leased)."""
    url = f"sqlite+aiosqlite:///{path}"
    asyncio.run(fill(url, [f"r{i}" for i in range(recipients)]))
    later = utcnow() + timedelta(minutes=5)
    where = OutboxMessage.id <= in_flight
    asyncio.run(change(url, where, status=OutboxStatus.SENDING, leased_until=later))
    heads = queries.heads(
        "sqlite", "outbox", "recipient_id", ["telegram"], now=utcnow(), limit=limit
    )
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            raw.set_progress_handler(count, 100)
            ids = conn.execute(heads).scalars().all()
            raw.set_progress_handler(None, 0)
    finally:
        engine.dispose()
    assert len(ids) >= limit
    return steps


@pytest.mark.parametrize(
    ("limit", "in_flight"),
    [
        (64, 0),  # the GROUP BY over every recipient's oldest row took ~70 times the steps
        # a worker with 256 rows in flight (the oldest, leased) and a few free slots: its
        # window must reach past them, or every claim reads every recipient's oldest row
        (4, 256),
    ],
)
def test_the_pick_does_not_grow_with_the_recipients_waiting(
    tmp_path: Path, sqlite_template: Path, limit: int, in_flight: int
) -> None:
    paths = tmp_path / "few.db", tmp_path / "many.db"
    for path in paths:
        shutil.copy(sqlite_template, path)
    few = work(paths[0], 300, limit=limit, in_flight=in_flight)
    many = work(paths[1], 20_000, limit=limit, in_flight=in_flight)
    assert many < 2 * few, (few, many)


@pytest.mark.postgres
async def test_each_head_is_probed_in_the_partitions_index_on_postgresql(pg_url: str) -> None:
    """A small analysed outbox (300 recipients, each a sent and an unsent row): asked for a
    partition's min(id), PostgreSQL read the id index from its start, filtering by
    recipient, for each row of the window (a claim 10 ms against 2, bench/claim.py); the
    probe is written so that only the partition index (ix_outbox_unfinished) serves it."""
    await _truncate(pg_url)
    sent = [{**r, "status": OutboxStatus.SENT} for r in rows(f"r{i}" for i in range(300))]
    engine = create_async_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(OutboxMessage), sent)
    finally:
        await engine.dispose()
    await fill(pg_url, [f"r{i}" for i in range(300)])
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("ANALYZE outbox")
            heads = queries.heads(
                "postgresql", "outbox", "recipient_id", ["telegram"], now=utcnow(), limit=64
            )
            q = select(OutboxMessage.id).where(
                *queries.claimable("postgresql", "outbox", heads, utcnow())
            )
            compiled = q.compile(engine.sync_engine, compile_kwargs={"literal_binds": True})
            plan = (await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}")).scalar()
    finally:
        await engine.dispose()
    scans: list[tuple[str, str]] = []  # (index, node type) of the probes

    def walk(node: dict[str, Any]) -> None:
        if node.get("Alias") == "p":
            scans.append((node.get("Index Name", ""), node.get("Node Type", "")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    assert scans and all(index == "ix_outbox_unfinished" for index, _ in scans), scans
