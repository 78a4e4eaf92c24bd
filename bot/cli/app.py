"""The `cicbot` command line."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bot.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from storage.models import Case

T = TypeVar("T")

app = typer.Typer(
    help="cicbot: the omnichannel customer interaction center bot.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
contacts_app = typer.Typer(help="Contacts and their history.", no_args_is_help=True)
cases_app = typer.Typer(help="Complaint cases.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(contacts_app, name="contacts")
app.add_typer(cases_app, name="cases")
agents_app = typer.Typer(help="Agents, their API tokens and passwords.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
out = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _logging(level: str, log_format: str = "text") -> None:
    """Rich text for a terminal, or JSON lines; redacted either way (bot/ops/logs.py)."""
    from bot.ops import logs

    if log_format == "json":
        handler = logs.json_handler(sys.stderr)
    else:
        handler = RichHandler(console=err, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    logs.install(handler, level)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (server.port).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    log_format: Annotated[
        str | None, typer.Option(help="text or json: one JSON object a line (server.log_format).")
    ] = None,
) -> None:
    """Serve the web chat, webhooks and API (FastAPI + uvicorn)."""
    import uvicorn

    from bot.runtime import Runtime
    from bot.web.app import create_app

    settings = _settings()
    fmt = log_format or settings.server.log_format
    if fmt not in ("text", "json"):
        err.print("[red]error:[/red] --log-format must be text or json", markup=True)
        raise typer.Exit(2)
    _logging(log_level, fmt)
    runtime = Runtime(settings)
    h, p = host or settings.server.host, port or settings.server.port
    logging.getLogger("cicbot").info(
        "channels: %s; web chat on http://%s:%s/", ", ".join(sorted(runtime.channels)), h, p
    )
    # live event streams of open agent consoles would otherwise hold shutdown forever
    uvicorn.run(
        create_app(runtime),
        timeout_graceful_shutdown=5,
        host=h,
        port=p,
        log_level=log_level,
        ws_max_size=1 << 20,
        # X-Forwarded-* are believed in the app, from server.trusted_proxies only
        proxy_headers=False,
        log_config=None,  # uvicorn's loggers, access log included, go through ours (redacted)
    )


@app.command()
def chat(
    user: Annotated[str, typer.Option(help="The customer's name on the console channel.")] = "you",
    lang: Annotated[str | None, typer.Option(help="Language hint: de or en.")] = None,
) -> None:
    """Chat with the bot in the terminal; scriptable: lines on stdin, replies on stdout."""
    from bot.runtime import Runtime
    from channels.console.adapter import chat as run_chat

    settings = _settings()
    _logging("warning")

    async def main() -> None:
        runtime = Runtime(settings, channels=["console"], exclude=())
        await runtime.start(dispatch=False)
        try:
            await run_chat(runtime, user, lang, sys.stdin)
        finally:
            await runtime.stop()

    asyncio.run(main())


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the Alembic migrations (creates the database if needed)."""
    from storage.migrate import upgrade

    settings = _settings()
    upgrade(settings.database.url, revision)
    out.print(f"database at revision {revision}")


def _run(coro_fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run one query function in a transaction against the configured database."""
    from storage.db import run_in_transaction

    return run_in_transaction(_settings().database.url, coro_fn)


@contacts_app.command("show")
def contacts_show(
    ref: Annotated[str, typer.Argument(help="contact id or channel:external_id")],
    channel: Annotated[str | None, typer.Option(help="Only this channel's touchpoints.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only touchpoints of this kind.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N (the newest).")] = None,
    newest_first: Annotated[bool, typer.Option("--newest-first", help="Newest on top.")] = False,
) -> None:
    """A contact's profile, identities and whole timeline, oldest first."""
    from storage import queries

    async def load(s: AsyncSession) -> Any:
        contact = await queries.find_contact(s, ref)
        if contact is None:
            return None
        if channel or kind or limit:
            from bot.crm.history import timeline_page

            rows, _ = await timeline_page(
                s, contact.id, channel=channel, kind=kind, limit=limit or 10**9
            )
            touchpoints = list(rows) if newest_first else list(reversed(rows))
        else:
            touchpoints = list(await queries.timeline(s, contact.id, newest_first=newest_first))
        return (
            contact,
            await queries.identities_of(s, contact.id),
            touchpoints,
            await queries.cases_of_contact(s, contact.id),
        )

    found = _run(load)
    if found is None:
        err.print(f"no contact {ref}", markup=False, emoji=False, highlight=False)
        raise typer.Exit(1)
    contact, identities, touchpoints, cases = found
    # customer data is printed as plain text, never as Rich markup ("[/]" in a message)
    out.print(
        f"[bold]Contact {contact.id}[/bold] {escape(contact.name or '')}"
        f"  locale={contact.locale}  phase={contact.lifecycle_phase}"
        f"  segment={contact.value_segment or '-'}",
        emoji=False,
    )
    for i in identities:
        out.print(
            f"  {i.channel}:{i.external_id}  reachable={i.reachable}", markup=False, emoji=False
        )
    for c in cases:
        out.print(
            f"  case {c.reference}  {c.status}  {c.category}  severity={c.severity}", markup=False
        )
    table = Table("#", "time (UTC)", "channel", "dir", "kind", "actor", "text", show_lines=False)
    for t in touchpoints:
        text = t.text if t.text is not None else _summary(t.payload)
        table.add_row(
            str(t.id),
            t.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            t.channel,
            t.direction,
            t.kind,
            t.actor,
            Text((text or "")[:200]),
        )
    out.print(table)


def _summary(payload: dict) -> str:  # type: ignore[type-arg]
    return ", ".join(f"{k}={v}" for k, v in payload.items() if k != "raw")


@cases_app.command("list")
def cases_list(
    status: Annotated[str | None, typer.Option(help="new, in_progress, resolved, ...")] = None,
    limit: int = 100,
) -> None:
    """Cases, newest first."""
    from storage import queries

    async def load(s: AsyncSession) -> Sequence[Case]:
        return await queries.list_cases(s, status, limit)

    table = Table(
        "reference", "status", "category", "severity", "contact", "SLA due (UTC)", "created (UTC)"
    )
    for c in _run(load):
        table.add_row(
            c.reference,
            c.status,
            c.category,
            c.severity,
            str(c.contact_id),
            c.sla_due_at.strftime("%Y-%m-%d %H:%M") if c.sla_due_at else "",
            c.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@agents_app.command("add")
def agents_add(
    name: str,
    role: Annotated[str, typer.Option(help="agent, supervisor or admin")] = "agent",
    email: Annotated[str | None, typer.Option()] = None,
    slack_user: Annotated[str | None, typer.Option(help="Slack user id")] = None,
) -> None:
    """Create an agent and print its API token (shown only this once)."""
    from bot.desk import auth
    from storage.models import AgentRole

    if role not in {r.value for r in AgentRole}:
        err.print(f"unknown role {role!r}: use agent, supervisor or admin")
        raise typer.Exit(2)

    async def create(s: AsyncSession) -> tuple[int, str]:
        agent, token = await auth.create_agent(
            s, name, AgentRole(role), email=email, slack_user_id=slack_user
        )
        return agent.id, token

    agent_id, token = _run(create)
    out.print(f"agent {agent_id} ({role}) created. Token, shown only now:", highlight=False)
    print(token)


@agents_app.command("list")
def agents_list() -> None:
    """All agents (tokens are never shown again)."""
    from bot.desk import auth

    table = Table("id", "name", "role", "email", "slack user", "active", "last seen (UTC)")
    for a in _run(auth.list_agents):
        table.add_row(
            str(a.id),
            Text(a.name),
            a.role,
            Text(a.email or ""),
            a.slack_user_id or "",
            "yes" if a.active else "revoked",
            a.last_seen_at.strftime("%Y-%m-%d %H:%M") if a.last_seen_at else "",
        )
    out.print(table)


@agents_app.command("password")
def agents_password(
    agent_id: int,
    random: Annotated[
        bool, typer.Option("--random", help="set a random temporary password and print it")
    ] = False,
) -> None:
    """Set or reset an agent's console password (asked twice, never echoed); the agent's
    console sessions end. The agent signs in with their email address."""
    from bot.desk import auth
    from storage.models import Agent

    password = (
        auth.new_password()
        if random
        else typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    )
    try:
        auth.check_password_rules(password)
    except auth.PasswordError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None

    async def reset(s: AsyncSession) -> str | None:
        agent = await s.get(Agent, agent_id)
        if agent is None:
            return f"no agent {agent_id}"
        if not agent.email:
            return f"agent {agent_id} has no email to sign in with (agents add --email)"
        await auth.set_password(s, agent, password)
        return None

    problem = _run(reset)
    if problem:
        err.print(problem)
        raise typer.Exit(1)
    out.print(f"agent {agent_id}: password set, console sessions ended")
    if random:
        out.print("Temporary password, shown only now:", highlight=False)
        print(password)


canned_app = typer.Typer(help="Canned replies for the console (`/code` in the reply box).")
app.add_typer(canned_app, name="canned")


@canned_app.command("set")
def canned_set(
    code: Annotated[str, typer.Argument(help="the short code, e.g. lieferung")],
    text: Annotated[str, typer.Argument(help="the reply's text")],
) -> None:
    """Create a canned reply, or replace the text of the one with this code."""
    from bot.desk import canned

    async def save(s: AsyncSession) -> str:
        return (await canned.save(s, code, text, None)).short_code

    try:
        saved = _run(save)
    except canned.CannedError as exc:
        err.print(str(exc))
        raise typer.Exit(2) from None
    out.print(f"/{saved} saved")


@canned_app.command("list")
def canned_list() -> None:
    """Every canned reply."""
    from bot.desk import canned

    table = Table("code", "text")
    for c in _run(canned.all_replies):
        table.add_row(f"/{c.short_code}", Text(c.text))
    out.print(table)


@canned_app.command("remove")
def canned_remove(code: str) -> None:
    from bot.desk import canned

    async def remove(s: AsyncSession) -> bool:
        return await canned.remove(s, code)

    if not _run(remove):
        err.print(f"no canned reply /{code}")
        raise typer.Exit(1)
    out.print(f"/{code} removed")


@agents_app.command("revoke")
def agents_revoke(agent_id: int) -> None:
    """Deactivate an agent; its token stops working at once."""
    from bot.desk import auth

    async def revoke(s: AsyncSession) -> bool:
        return await auth.revoke(s, agent_id)

    if not _run(revoke):
        err.print(f"no agent {agent_id}")
        raise typer.Exit(1)
    out.print(f"agent {agent_id} revoked")


def _add_kb() -> None:
    from bot.cli.kb import kb_app

    app.add_typer(kb_app, name="kb")


_add_kb()


def _add_crm() -> None:
    from bot.cli.crm import register

    register(app)


_add_crm()


def main() -> None:
    app()


def _add_campaigns() -> None:
    from bot.cli.campaigns import campaigns_app

    app.add_typer(campaigns_app, name="campaigns")


_add_campaigns()
