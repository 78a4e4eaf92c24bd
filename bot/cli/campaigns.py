"""`cicbot campaigns ...`: list, preview, run and follow campaigns (docs/campaigns.md).

`run` queues the messages in the outbox of the configured database; the dispatcher of
`cicbot serve` sends them at the channels' rate limits.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.cli import common

if TYPE_CHECKING:
    from bot.campaigns.runs import Campaigns

campaigns_app = typer.Typer(help="Campaigns: list, preview, run, status.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _with_campaigns(fn: Callable[[Campaigns], Awaitable[T]], *, deliver: bool = False) -> T:
    """Run `fn` on the campaign service of the configured database and channels. Only a
    run that sends (`deliver`) builds the whole runtime (engine, knowledge base, the
    channels' adapters); listing, previews, dry runs and figures need the database and the
    names of the configured channels, for the channel policy."""
    import asyncio

    from bot.config import channels_on

    settings = common.load(knowledge_base=deliver)
    url = common.ready(settings)
    channels = channels_on(settings)

    async def main() -> T:
        if deliver:
            from bot.runtime import Runtime

            runtime = Runtime(settings, channels=channels)
            try:
                return await fn(runtime.campaigns)
            finally:
                await runtime.db.dispose()
        from bot.campaigns.runs import Campaigns
        from storage.db import create_engine, session_factory

        db = create_engine(url)
        c = settings.campaigns
        try:
            return await fn(
                Campaigns(
                    session_factory(db),
                    None,
                    c.definitions,
                    channels=lambda: channels,
                    timezone=settings.company.timezone,
                    builtin=c.builtin,
                    reminder_after_hours=c.reminder_after_hours,
                    concurrency=c.concurrency,
                )
            )
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except LookupError as exc:
        common.fail(str(exc.args[0]), 1)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


@campaigns_app.command("list")
def list_campaigns(as_json: JsonOption = False) -> None:
    """Every campaign: built in, from config.yaml, and defined through the API."""

    async def load(c: Campaigns) -> list[dict[str, Any]]:
        return [x.definition() for x in (await c.all()).values()]

    rows = _with_campaigns(load)
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "purpose", "flow", "trigger", "enabled", "description")
    for r in rows:
        trig = r["trigger"] or {}
        when = (
            trig.get("cron")
            or trig.get("at")
            or (f"{trig['after']} +{trig['days']}d" if trig.get("after") else "by hand")
        )
        table.add_row(
            r["name"],
            r["purpose"],
            r["flow"] or "(the open one)",  # a reminder re-asks whatever flow is running
            str(when),
            str(r["enabled"]),
            r["description"],
        )
    out.print(table)


@campaigns_app.command()
def preview(
    name: str,
    sample: Annotated[int, typer.Option(help="How many contacts to show.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """The audience now and what a run would do to it (the dry run's checks), with a sample."""

    async def go(c: Campaigns) -> dict[str, Any]:
        return await c.preview(name, sample)

    data = _with_campaigns(go)
    if as_json:
        _print_json(data)
        return
    out.print(
        f"{escape(name)}: {data['audience']} contacts in the audience now; "
        f"a run would send to {data['would_send']}",
        highlight=False,
    )
    for outcome, n in data["outcomes"].items():
        if outcome != "would_send":
            out.print(f"  {outcome.replace(':', ': ')}  {n}", highlight=False)
    if data["outcomes"].get("skipped:unreachable"):
        out.print(
            f"  (unreachable: on none of the campaign's channels that are configured here: "
            f"{', '.join(data['channels']) or 'none'})",
            highlight=False,
        )
    for row in data["sample"]:
        out.print(
            f"  {row['id']}  {escape(str(row['name'] or ''))}  {row['lifecycle_phase']}"
            f"  → {row['outcome'].replace(':', ': ')}",
            highlight=False,
        )


@campaigns_app.command()
def run(
    name: str,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check everyone; send nothing.")
    ] = False,
    key: Annotated[
        str | None, typer.Option(help="Resume the run with this key (see `status`).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run a campaign now (or resume a run with --key), with a progress bar."""

    async def go(c: Campaigns) -> dict[str, Any]:
        with Progress(
            TextColumn(f"{escape(name)}{' (dry run)' if dry_run else ''}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as bar:
            task = bar.add_task(name, total=None)

            def step(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = await c.run(name, run_key=key, dry_run=dry_run, progress=step)
        return report.as_dict()

    data = _with_campaigns(go, deliver=not dry_run)
    if as_json:
        _print_json(data)
        return
    out.print(
        f"{name}: {data['targeted']} targeted{' (dry run)' if dry_run else ''}, "
        f"run {data['run_key']}"
    )
    for outcome, n in data["outcomes"].items():
        out.print(f"  {outcome}: {n}")


@campaigns_app.command()
def status(name: str, as_json: JsonOption = False) -> None:
    """Figures: targeted, skipped by reason, sent, failed, responded, completed, converted."""

    async def go(c: Campaigns) -> dict[str, Any]:
        return await c.status(name)

    data = _with_campaigns(go)
    if as_json:
        _print_json(data)
        return
    from bot.campaigns.figures import RESUME_MINUTES

    # targeted = sent + skipped + deferred + pending (bot/campaigns/figures.py)
    table = Table("figure", "count")
    table.add_row("targeted", str(data["targeted"]))
    table.add_row("  sent", str(data["sent"]))
    for reason, n in sorted(data["skipped"].items()):
        table.add_row(f"  skipped: {reason}", str(n))
    for reason, n in sorted(data["deferred"].items()):
        table.add_row(f"  deferred: {reason}", str(n))
    if data["pending"]:
        table.add_row("  pending (run not finished)", str(data["pending"]))
    for key in ("failed", "responded", "completed", "converted"):
        table.add_row(f"{key} (of sent)", str(data[key]))
    out.print(table)
    runs = Table(
        "run",
        "status",
        "started (UTC)",
        "finished (UTC)",
        "targeted",
        "sent",
        "skipped",
        "deferred",
        "pending",
    )
    for r in data["runs"]:
        runs.add_row(
            r["run_key"],
            r["status"],
            _when(r["started_at"]),
            _when(r["finished_at"]),
            *(str(r[k]) for k in ("targeted", "sent", "skipped", "deferred", "pending")),
        )
    out.print(runs)
    for r in data["runs"]:
        if r["retry_until"] and (r["deferred"] or r["pending"]):
            out.print(
                f"run {escape(r['run_key'])}: {r['deferred'] + r['pending']} contacts still to "
                f"reach; `cicbot serve` tries again every {RESUME_MINUTES} minutes until "
                f"{_when(r['retry_until'])} UTC, or now: "
                f"cicbot campaigns run {escape(name)} --key {escape(r['run_key'])}",
                highlight=False,
                soft_wrap=True,
            )


def _when(iso: str | None) -> str:
    return iso.replace("T", " ")[:16] if iso else ""
