"""`cicbot import|gdpr|crm|report ...`: the contact history made useful (docs/crm.md)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.cli import common

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from bot.config import Settings

T = TypeVar("T")

import_app = typer.Typer(help="Import contacts and orders from CSV files.", no_args_is_help=True)
gdpr_app = typer.Typer(help="Privacy: export, erase, retention.", no_args_is_help=True)
crm_app = typer.Typer(help="Customer value, lifecycle, merging contacts.", no_args_is_help=True)
link_app = typer.Typer(
    help="Verified email links: addresses locked after too many wrong codes.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    return common.load()


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(message, markup=False, highlight=False, emoji=False)
    return typer.Exit(code)


def run_in_session(settings: Settings, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `fn` in one transaction against the configured database."""
    from storage.db import run_in_transaction

    return run_in_transaction(common.ready(settings), fn)


class _Rollback(Exception):
    def __init__(self, result: Any) -> None:
        self.result = result


def _import(kind: str, path: Path) -> None:
    from bot.crm import importer, lifecycle, value

    settings = _settings()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc}", 2) from None
    progress = Progress(
        TextColumn(f"importing {kind}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = progress.add_task(kind, total=None)

    def tick(n: int, total: int) -> None:
        progress.update(task, completed=n, total=total)

    async def work(s: AsyncSession) -> Any:
        fn = importer.import_contacts if kind == "contacts" else importer.import_orders
        report = await fn(s, data, progress=tick)
        if not report.ok:
            raise _Rollback(report)  # nothing half-imported
        if kind == "orders":
            report_value = await value.recompute(s, settings.crm)
            changes = await lifecycle.run(s, settings.crm, contact_ids=report.contact_ids)
            return report, report_value, changes
        return report, None, None

    try:
        with progress:
            report, value_result, changes = run_in_session(settings, work)
    except importer.ImportFileError as exc:
        raise _fail(f"{path}: {exc}", 2) from None
    except _Rollback as rb:
        for e in rb.result.errors:
            err.print(f"{path}:{e.line}: {e.reason}", markup=False, highlight=False, emoji=False)
        raise _fail(f"{len(rb.result.errors)} bad row(s); nothing was imported") from None
    out.print(
        f"{report.rows} rows: {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged",
        highlight=False,
    )
    if value_result is not None:
        out.print(f"customer value recomputed: {json.dumps(value_result)}", markup=False)
        out.print(f"lifecycle changes: {json.dumps(changes)}", markup=False)


@import_app.command("contacts")
def import_contacts(
    file: Annotated[Path, typer.Argument(help="CSV: external_id, name, email, phone, locale, …")],
) -> None:
    """Import contacts (idempotent by external_id; all rows or none)."""
    _import("contacts", file)


@import_app.command("orders")
def import_orders(
    file: Annotated[Path, typer.Argument(help="CSV: order_id, customer_id, amount, ordered_at")],
) -> None:
    """Import orders (idempotent by order_id; all rows or none), then recompute value and
    lifecycle."""
    _import("orders", file)


def _contact_id(s: AsyncSession, ref: str) -> Awaitable[Any]:
    from storage import queries

    return queries.find_contact(s, ref)


@gdpr_app.command("export")
def gdpr_export(
    ref: Annotated[str, typer.Argument(help="contact id or channel:external_id")],
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file.")] = None,
) -> None:
    """Everything stored about a contact as one JSON document (GDPR art. 15)."""
    from bot.crm import gdpr

    async def work(s: AsyncSession) -> Any:
        contact = await _contact_id(s, ref)
        return None if contact is None else await gdpr.export(s, contact.id)

    doc = run_in_session(_settings(), work)
    if doc is None:
        raise _fail(f"no contact {ref}")
    text = json.dumps(doc, ensure_ascii=False, indent=2)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
        out.print(f"written to {output}", markup=False)
    else:
        print(text)


@gdpr_app.command("erase")
def gdpr_erase(
    ref: Annotated[str, typer.Argument(help="contact id or channel:external_id")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    actor: Annotated[str, typer.Option(help="Who asked for it (recorded).")] = "cli",
) -> None:
    """Delete or anonymize a contact's personal data (GDPR art. 17); aggregates stay."""
    from bot.crm import gdpr

    if not yes and not typer.confirm(f"Erase every personal value of contact {ref}?"):
        raise typer.Exit(1)

    async def work(s: AsyncSession) -> Any:
        contact = await _contact_id(s, ref)
        return None if contact is None else await gdpr.erase(s, contact.id, actor=actor)

    result = run_in_session(_settings(), work)
    if result is None:
        raise _fail(f"no contact {ref}")
    out.print(
        f"contact {result['contact_id']} erased: {json.dumps(result['counts'])}", markup=False
    )


@gdpr_app.command("retention")
def gdpr_retention(
    days: Annotated[int | None, typer.Option(help="Default: crm.retention_days.")] = None,
) -> None:
    """Apply the retention period to every table with personal data (docs/security.md)."""
    from bot.crm import retention

    settings = _settings()
    counts = run_in_session(
        settings, lambda s: retention.purge(s, days or settings.crm.retention_days)
    )
    out.print(f"retention {days or settings.crm.retention_days} days, rows touched:")
    for step, n in counts.items():
        out.print(f"  {step}: {n}", highlight=False)


@crm_app.command("value")
def crm_value() -> None:
    """Recompute RFM, lifetime value, segments A/B/C and value × need classes."""
    from bot.crm import value

    settings = _settings()
    result = run_in_session(settings, lambda s: value.recompute(s, settings.crm))
    out.print(json.dumps(result), markup=False)


@crm_app.command("lifecycle")
def crm_lifecycle() -> None:
    """Apply the lifecycle transitions (active → at_risk → lost, back to active)."""
    from bot.crm import lifecycle

    settings = _settings()
    result = run_in_session(settings, lambda s: lifecycle.run(s, settings.crm))
    out.print(json.dumps(result), markup=False)


@crm_app.command("merge")
def crm_merge(
    keep: Annotated[int, typer.Argument(help="The contact id that stays.")],
    other: Annotated[int, typer.Argument(help="The contact id merged into it.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit touchpoint).")],
    actor: Annotated[str, typer.Option(help="Who decided (recorded).")] = "cli",
) -> None:
    """Merge two contacts: identities, history, cases, consents, orders are kept."""
    from sqlalchemy.exc import IntegrityError

    from bot.crm.history import MergeError, merge_contacts

    try:
        result = run_in_session(
            _settings(), lambda s: merge_contacts(s, keep, other, actor=actor, reason=reason)
        )
    except MergeError as exc:
        raise _fail(str(exc)) from None
    except IntegrityError as exc:
        raise _fail(f"the contacts' records conflict; nothing was merged: {exc.orig}") from None
    out.print(json.dumps(result), markup=False)


@link_app.command("locks")
def link_locks() -> None:
    """Addresses locked for linking after too many wrong one-time codes."""
    from bot.conversation.linking import locked_addresses

    rows = run_in_session(_settings(), locked_addresses)
    table = Table("id", "address", "wrong codes", "locked since")
    for r in rows:
        since = r.locked_at.isoformat()[:19] if r.locked_at else ""
        table.add_row(str(r.id), escape(r.email), str(r.failures), since)
    out.print(table if rows else "no locked addresses")


@link_app.command("unlock")
def link_unlock(
    address: Annotated[str, typer.Argument(help="The locked email address.")],
    actor: Annotated[str, typer.Option(help="Who checked it (logged).")] = "cli",
) -> None:
    """Unlock an address once a person has checked it is the customer's."""
    from bot.conversation.linking import unlock

    if not run_in_session(_settings(), lambda s: unlock(s, address, actor=actor)):
        raise _fail(f"{address} is not locked")
    out.print(f"{escape(address)} unlocked", highlight=False)


def report(
    days: Annotated[int, typer.Option(help="The last N days.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
) -> None:
    """Customer-service figures: channels, response and resolution times, complaints, SLA,
    CSAT, win-back, self-service deflection."""
    from bot.crm import analytics
    from storage.models import utcnow

    now = utcnow()
    r = run_in_session(
        _settings(), lambda s: analytics.report(s, since=now - timedelta(days=days), until=now)
    )
    if as_json:
        print(json.dumps(r, indent=2))
        return
    print_report(r)


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def duration(seconds: float | None) -> str:
    """A duration as people read it: 45 s, 3 min 20 s, 2 h 05 min, 3 d 4 h."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def percent(rate: float | None) -> str:
    """A share as the agent console shows it: 64.3 %."""
    return "-" if rate is None else f"{rate * 100:.1f} %"


def print_report(r: dict[str, Any]) -> None:
    p = r["period"]
    out.print(f"[bold]Report[/bold] {p['since'][:16]} – {p['until'][:16]} UTC")
    t = Table("channel", "in", "out", "internal", title="Channel mix")
    for ch, d in r["channels"].items():
        if d["in"] or d["out"]:  # not the CRM's own records (imports, lifecycle changes)
            t.add_row(ch, str(d["in"]), str(d["out"]), str(d["internal"]))
    out.print(t)
    t = Table("day", "channel", "messages", title="Volume (customer messages)")
    for row in r["volume"][-31:]:
        t.add_row(row["day"], row["channel"], str(row["messages"]))
    out.print(t)
    t = Table("measure", "count", "mean", "median", "p90", title="Response and resolution")
    for label, st in (
        ("first response, bot", r["first_response_seconds"]["bot"]),
        ("first response, agent", r["first_response_seconds"]["agent"]),
        ("resolved by the bot alone", r["resolution_seconds"]["conversations_bot"]),
        ("resolved with an agent", r["resolution_seconds"]["conversations_agent"]),
        ("resolution, cases", r["resolution_seconds"]["cases"]),
    ):
        t.add_row(
            label, str(st["count"]), duration(st["mean"]), duration(st["p50"]), duration(st["p90"])
        )
    out.print(t)
    c = r["complaints"]
    t = Table("category", "cases", title=f"Complaints ({c['total']})")
    for k, v in c["by_category"].items():
        t.add_row(k, str(v))
    for k, v in c["by_severity"].items():
        t.add_row(f"severity {k}", str(v))
    out.print(t)
    t = Table("figure", "value", title="Service level, satisfaction, recovery, self-service")
    sla, csat, wb, ss = r["sla"], r["csat"], r["winback"], r["self_service"]
    rows = [
        ("SLA breached", f"{sla['breached']} of {sla['cases']} ({percent(sla['breach_rate'])})"),
        ("SLA breached, still open", str(sla["open_breached"])),
        ("CSAT average", f"{_fmt(csat['average'])} ({csat['responses']} answers)"),
        ("CSAT 1..5", " ".join(f"{k}:{v}" for k, v in csat["distribution"].items())),
        ("win-back reasons", ", ".join(f"{k}:{v}" for k, v in wb["reasons"].items()) or "-"),
        (
            "win-back recovery rate",
            f"{percent(wb['recovery_rate'])} ({wb['offers_accepted']} offers accepted)",
        ),
        ("reactivated contacts", str(wb["reactivated_contacts"])),
        (
            "reopened after an agent resolved",
            f"{r['resolutions']['reopened']} of {r['resolutions']['agent']}"
            f" ({percent(r['resolutions']['reopen_rate'])})",
        ),
        (
            "self-service deflection",
            f"{percent(ss['deflection_rate'])} of {ss['conversations']} conversations",
        ),
    ]
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


def dead_letters_list(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    source: Annotated[str | None, typer.Option(help="engine or inbox")] = None,
) -> None:
    """Messages whose flow raised and raw updates the inbox gave up on, newest first."""
    from bot.delivery import dead_letters

    rows = run_in_session(_settings(), lambda s: dead_letters.recent(s, limit=limit, source=source))
    table = Table("id", "when", "source", "channel", "contact", "error")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["created_at"][:19],
            r["source"],
            r["channel"],
            str(r["contact_id"] or ""),
            escape(r["error"][:120]),
        )
    out.print(table if rows else "no dead letters")


def register(app: typer.Typer) -> None:
    app.command("dead-letters")(dead_letters_list)
    app.add_typer(import_app, name="import")
    app.add_typer(gdpr_app, name="gdpr")
    app.add_typer(crm_app, name="crm")
    app.add_typer(link_app, name="link")
    app.command("report")(report)
