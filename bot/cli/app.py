"""The `cicbot` command line."""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bot.cli import common
from bot.cli import help as help_pages

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from bot.config import Settings
    from storage.models import Case

# every module a command needs is imported inside that command: `cicbot --help` imports
# typer and rich only, a listing the database layer, never aiogram or scikit-learn unless
# the command uses them (bench/cli_startup.py)

T = TypeVar("T")

app = typer.Typer(
    help="cicbot: the omnichannel customer interaction center bot.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"cicbot {version('cicbot')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("cicbot (not installed)")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """cicbot: the omnichannel customer interaction center bot."""


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


def _settings(*, knowledge_base: bool = False) -> Settings:
    return common.load(knowledge_base=knowledge_base)


def _logging(level: str, log_format: str = "text", settings: Settings | None = None) -> None:
    """Rich text for a terminal, one line a record in a file, or JSON lines; redacted either
    way (bot/ops/logs.py), the configured secrets (the channels' too) wherever they appear."""
    from rich.logging import RichHandler

    from bot.ops import logs

    if log_format == "json":
        handler = logs.json_handler(sys.stderr)
    elif sys.stderr.isatty():
        handler = RichHandler(console=err, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:  # a file or a pipe: one record a line, never wrapped at 80 columns as Rich would
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"
            )
        )
    logs.install(handler, level, logs.secret_values(settings) if settings is not None else ())


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

    from storage.lock import AlreadyServed, sqlite_lock

    settings = _settings(knowledge_base=True)
    fmt = log_format or settings.server.log_format
    if fmt not in ("text", "json"):
        common.fail("--log-format must be text or json")
    h, p = host or settings.server.host, port or settings.server.port
    # the port and the database are taken before anything starts: a second instance stops
    # here with one line, instead of starting its workers and the scheduler first
    sock = _listen(h, p)
    _logging(log_level, fmt, settings)
    log = logging.getLogger("cicbot")
    url = common.ready(settings, say=log.info)
    lock = sqlite_lock(url)
    if lock is not None:
        try:
            lock.acquire()
        except AlreadyServed as exc:
            common.fail(str(exc), 1)
    from bot.config import notices
    from bot.runtime import Runtime
    from bot.web.app import create_app

    for notice in notices(settings):
        log.warning("%s", notice)
    runtime = Runtime(settings)
    log.info("channels: %s; web chat on http://%s:%s/", ", ".join(sorted(runtime.channels)), h, p)
    log.info("agent console on http://%s:%s/agent, API documentation on /docs", h, p)
    if not _agents_exist(url):
        log.warning(
            "no agent yet: create one with `cicbot agents add NAME --role admin`, "
            "then sign in at /agent with the token it prints"
        )
    # live event streams of open agent consoles would otherwise hold shutdown forever
    config = uvicorn.Config(
        create_app(runtime),
        timeout_graceful_shutdown=5,
        log_level=log_level,
        ws_max_size=1 << 20,
        # X-Forwarded-* are believed in the app, from server.trusted_proxies only
        proxy_headers=False,
        log_config=None,  # uvicorn's loggers, access log included, go through ours (redacted)
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        if lock is not None:
            lock.release()


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now (uvicorn listens on it)."""
    try:
        # the family as uvicorn chooses it: IPv6 for an address with a colon, else IPv4
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        common.fail(f"cannot listen on {host}:{port}: {exc.strerror} (server.host, --host)")
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of a restart
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = (
            "another cicbot or another program listens there: stop it, or choose another "
            "port (--port, server.port)"
            if exc.errno == errno.EADDRINUSE
            else "check server.host and --host"
        )
        common.fail(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}", 1)
    sock.set_inheritable(True)
    return sock


def _agents_exist(url: str) -> bool:
    from sqlalchemy import func, select

    from storage.db import run_in_transaction
    from storage.models import Agent

    async def count(s: AsyncSession) -> int:
        return int((await s.execute(select(func.count()).select_from(Agent))).scalar_one())

    return run_in_transaction(url, count) > 0


@app.command()
def chat(
    user: Annotated[str, typer.Option(help="The customer's name on the console channel.")] = "you",
    lang: Annotated[str | None, typer.Option(help="Language hint: de or en.")] = None,
) -> None:
    """Chat with the bot in the terminal; scriptable: lines on stdin, replies on stdout."""
    from bot.channel import Terminal
    from bot.runtime import Runtime

    settings = _settings(knowledge_base=True)
    common.ready(settings)  # migrated, or one line saying what to run
    _logging("warning", settings=settings)

    async def main() -> None:
        # the terminal chat is the `console` channel's entry point like any other channel
        runtime = Runtime(settings, channels=["console"], exclude=())
        terminal = runtime.channels.get("console")
        if not isinstance(terminal, Terminal):
            raise RuntimeError("the console channel is not installed (entry point cicbot.channels)")
        await runtime.start(dispatch=False)
        try:
            await terminal.chat(user, lang, sys.stdin)
        finally:
            await runtime.stop()

    import asyncio

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

    return run_in_transaction(common.ready(_settings()), coro_fn)


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
help_pages.tidy(app)  # after every command is registered
