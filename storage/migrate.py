"""Alembic, driven from code: `cicbot db upgrade` and the auto-migration at start."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r"^revision(?::[^=]*)?=\s*[\"']([\w-]+)[\"']", re.M)
_DOWN = re.compile(r"^down_revision(?::[^=]*)?=(.*)$", re.M)


def alembic_config(url: str) -> Config:
    from alembic.config import Config  # alembic is imported when a command migrates

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`. Blocking; from async code use `upgrade_async`."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    # env.py runs its own event loop, so migrations run in a worker thread
    await asyncio.to_thread(upgrade, url, revision)


def current_head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def heads() -> set[str]:
    """The newest revisions."""
    every, parents = _revisions()
    return every - parents


def known() -> set[str]:
    """Every revision this code has."""
    return _revisions()[0]


def _revisions() -> tuple[set[str], set[str]]:
    """(revisions, those with a child), read from the migration files' text: without
    importing them and alembic (every `cicbot` command checks the database)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        found = _REVISION.search(text)
        if found:
            revisions.add(found[1])
        down = _DOWN.search(text)
        if down:
            parents.update(re.findall(r"[\"']([\w-]+)[\"']", down[1]))
    return revisions, parents


async def applied(url: str) -> set[str] | None:
    """The revisions the database is at; None when it was never migrated."""
    from sqlalchemy import inspect, text

    from storage.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda c: inspect(c).has_table("alembic_version")):
                return None
            rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
            return {str(r[0]) for r in rows}
    finally:
        await engine.dispose()
