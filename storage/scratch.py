"""Throw-away PostgreSQL databases for tests and benchmarks: created on a server through
its admin URL, dropped afterwards (even with connections still open)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def admin(admin_url: str, sql: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE need that)."""
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def create(admin_url: str, prefix: str) -> str:
    """A new, empty database named `prefix_<random>`: its URL (the admin URL's server)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await admin(admin_url, f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


async def drop(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    await admin(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@asynccontextmanager
async def database(admin_url: str, prefix: str) -> AsyncIterator[str]:
    url = await create(admin_url, prefix)
    try:
        yield url
    finally:
        await drop(admin_url, url)
