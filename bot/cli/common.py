"""What every `cicbot` command shares: the configuration, a ready database, one-line errors.

Kept light (typer and rich only at import): `cicbot --help` imports every command module,
so a module imports what its command needs inside the command (bench/cli_startup.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from bot.config import Settings

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """`error: <message>` on stderr, exit `code`; the message is plain text, never markup."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load(*, knowledge_base: bool = False) -> Settings:
    """The configuration; with the knowledge base's files read for the commands that answer
    customers (serve, chat, a campaign run that sends)."""
    from bot.config import ConfigError, load_settings

    try:
        return load_settings(knowledge_base=knowledge_base)
    except ConfigError as exc:
        fail(str(exc))


def database_name(url: str) -> str:
    """The database as an operator knows it: the SQLite file, or the URL without password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return parsed.render_as_string(hide_password=True)


def ready(settings: Settings, say: Callable[[str], object] | None = None) -> str:
    """The database URL, its schema current: migrated now when `database.auto_migrate`
    allows, else one line saying what to run (never a traceback about missing tables).
    `say`: where the note of a migration goes (default: stderr; `serve`: its log)."""
    import asyncio

    from storage.migrate import applied, heads, known, upgrade

    url = settings.database.url
    try:
        current = asyncio.run(applied(url))
    except Exception as exc:  # a database that cannot be opened: say which, in one line
        fail(f"cannot open the database {database_name(url)}: {_first_line(exc)}", 1)
    wanted = heads()
    if current == wanted:
        return url
    at = ", ".join(sorted(current)) if current else "none (not migrated)"
    if current and not current <= known():
        fail(
            f"the database {database_name(url)} is at revision {at}, newer than this cicbot "
            f"knows ({', '.join(sorted(wanted))}): run the cicbot version that migrated it",
            1,
        )
    if not settings.database.auto_migrate:
        fail(
            f"the database {database_name(url)} is at revision {at}, this cicbot needs "
            f"{', '.join(sorted(wanted))}: run `cicbot db upgrade` "
            "(database.auto_migrate is false)",
            1,
        )
    note = (
        f"migrating the database {database_name(url)} from revision {at} "
        f"to {', '.join(sorted(wanted))} (database.auto_migrate)"
    )
    if say is not None:
        say(note)
    else:
        err.print(note, markup=False, highlight=False, soft_wrap=True)
    upgrade(url)
    return url


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
