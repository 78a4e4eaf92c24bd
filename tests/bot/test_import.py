"""CSV imports on SQLite and PostgreSQL: all or nothing, idempotent, line-numbered errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot import importer
from bot.runtime import Runtime
from storage import queries
from storage.models import Contact, Order
from tests.conftest import ROOT

CONTACTS = """external_id,name,email,phone,locale,tier
K-1,Anna Muster,anna@example.com,+49 30 1234567,de,gold
K-2,"Bob, the Builder",bob@example.com,,en,
K-3,Chris,,,,
"""
ORDERS = """order_id;customer_id;amount;ordered_at;currency
O-1;K-1;1.234,50;2026-01-15;EUR
O-2;K-1;19.99;2026-03-01T10:00:00+01:00;
O-3;K-2;5;2026-02-01;eur
"""


async def _count(rt: Runtime, model: type) -> int:
    async with rt.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model)) or 0)


async def test_contacts_and_orders_import_idempotently(runtime: Runtime) -> None:
    seen: list[tuple[int, int]] = []
    async with runtime.sessions() as s, s.begin():
        report = await importer.import_contacts(
            s, CONTACTS, progress=lambda n, total: seen.append((n, total))
        )
    assert report.ok and (report.created, report.updated) == (3, 0), report.as_dict()
    assert seen[-1] == (3, 3)
    async with runtime.sessions() as s:
        anna = await queries.find_contact(s, "crm:K-1")
        assert anna is not None
        assert (anna.name, anna.email, anna.phone, anna.locale) == (
            "Anna Muster",
            "anna@example.com",
            "+49 30 1234567",
            "de",
        )
        assert anna.attributes == {"tier": "gold"}
        bob = await queries.find_contact(s, "crm:K-2")
        assert bob is not None and bob.name == "Bob, the Builder"
    async with runtime.sessions() as s, s.begin():
        again = await importer.import_contacts(s, CONTACTS.replace("Chris", "Chris P."))
    assert (again.created, again.updated, again.unchanged) == (0, 1, 2)
    assert await _count(runtime, Contact) == 3
    for _ in range(2):
        async with runtime.sessions() as s, s.begin():
            orders = await importer.import_orders(s, ORDERS)
        assert orders.ok, orders.as_dict()
    assert (orders.created, orders.unchanged) == (0, 3)
    async with runtime.sessions() as s:
        rows = (await s.execute(select(Order).order_by(Order.external_id))).scalars().all()
    assert [(o.external_id, o.amount_cents, o.currency) for o in rows] == [
        ("O-1", 123450, "EUR"),
        ("O-2", 1999, "EUR"),
        ("O-3", 500, "EUR"),
    ]
    assert rows[1].ordered_at.hour == 9  # +01:00 stored as UTC


async def test_bad_rows_are_reported_and_nothing_is_imported(runtime: Runtime) -> None:
    bad = (
        "external_id,name,email,phone,locale\n"
        "K-1,Anna,anna@example.com,,de\n"
        ",No Id,,,\n"
        "K-3,Bad Mail,not-an-email,,\n"
        '"K-4","Multi\nline",,,\n'
        "K-1,Twice,,,\n"
        "K-6,Phone,,call me,\n"
        "K-7,Lang,,,fr\n"
        "K-8,Too,many,,,values\n"
    )
    async with runtime.sessions() as s, s.begin():
        report = await importer.import_contacts(s, bad)
    assert [(e.line, e.reason.split(" ")[0]) for e in report.errors] == [
        (3, "external_id"),
        (4, "email"),
        (7, "external_id"),
        (8, "phone"),
        (9, "locale"),
        (10, "more"),
    ]
    assert "already on line 2" in report.errors[2].reason
    assert await _count(runtime, Contact) == 0
    async with runtime.sessions() as s, s.begin():
        await importer.import_contacts(s, CONTACTS)
    orders = (
        "order_id,customer_id,amount,ordered_at,status\n"
        "O-1,K-1,10,2026-01-01,\n"
        "O-2,K-404,10,2026-01-01,\n"
        "O-3,K-1,ten,2026-01-01,\n"
        "O-4,K-1,10,yesterday,\n"
        "O-1,K-1,10,2026-01-01,\n"
        "O-6,K-1,10,2026-01-01,lost\n"
        "O-7,K-1,-5,2026-01-01,\n"
    )
    async with runtime.sessions() as s, s.begin():
        report = await importer.import_orders(s, orders)
    assert [e.line for e in report.errors] == [3, 4, 5, 6, 7, 8]
    assert "K-404" in report.errors[0].reason and "import contacts first" in report.errors[0].reason
    assert await _count(runtime, Order) == 0


def test_file_level_errors() -> None:
    with pytest.raises(importer.ImportFileError, match="missing column"):
        importer.read_rows("name,email\nA,a@b.cd\n", ["external_id"])
    with pytest.raises(importer.ImportFileError, match="empty"):
        importer.read_rows("", ["external_id"])
    with pytest.raises(importer.ImportFileError, match="UTF-8"):
        importer.read_rows(b"external_id\n\xff\xfe\n", ["external_id"])
    assert importer.read_rows(b"\xef\xbb\xbfexternal_id\n\nK-1\n", ["external_id"]) == [
        (3, {"external_id": "K-1"})
    ]


@pytest.mark.parametrize(
    ("text", "cents"),
    [("12.34", 1234), ("12,34", 1234), ("1.234,56", 123456), ("1,234.56", 123456), ("7", 700)],
)
def test_amounts(text: str, cents: int) -> None:
    assert importer.parse_amount(text) == cents


def test_cli_import_gdpr_report(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commands in-process (Typer's runner) on SQLite."""
    from typer.testing import CliRunner

    from bot.cli import app

    monkeypatch.setenv("CICBOT_CONFIG", str(ROOT / "config.yaml"))
    monkeypatch.setenv("CICBOT_DATABASE__URL", sqlite_url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    (tmp_path / "c.csv").write_text(CONTACTS)
    (tmp_path / "o.csv").write_text(ORDERS)
    (tmp_path / "bad.csv").write_text(ORDERS + "O-9;K-404;1;2026-01-01;\n")
    r = runner.invoke(app, ["import", "contacts", str(tmp_path / "c.csv")])
    assert r.exit_code == 0, r.output
    assert "3 rows: 3 created" in r.output
    r = runner.invoke(app, ["import", "orders", str(tmp_path / "bad.csv")])
    assert r.exit_code == 1
    assert "bad.csv:5: customer_id 'K-404'" in r.output and "nothing was imported" in r.output
    r = runner.invoke(app, ["import", "orders", str(tmp_path / "o.csv")])
    assert r.exit_code == 0 and "3 created" in r.output and "segment_A" in r.output, r.output
    r = runner.invoke(app, ["import", "orders", str(tmp_path / "missing.csv")])
    assert r.exit_code == 2
    r = runner.invoke(
        app, ["contacts", "show", "crm:K-1", "--kind", "message", "--limit", "5", "--newest-first"]
    )
    assert r.exit_code == 0 and "Anna Muster" in r.output and "segment=A" in r.output
    r = runner.invoke(app, ["gdpr", "export", "crm:K-1", "--out", str(tmp_path / "x.json")])
    assert r.exit_code == 0
    doc = json.loads((tmp_path / "x.json").read_text())
    assert doc["profile"]["email"] == "anna@example.com" and len(doc["orders"]) == 2
    r = runner.invoke(app, ["gdpr", "erase", "crm:K-1", "--yes"])
    assert r.exit_code == 0 and "erased" in r.output
    r = runner.invoke(app, ["gdpr", "export", "crm:K-1"])
    assert r.exit_code == 1  # the identity is gone with the erasure
    r = runner.invoke(app, ["gdpr", "retention", "--days", "30"])
    assert r.exit_code == 0 and "touchpoints: " in r.output and "inbox: " in r.output
    r = runner.invoke(app, ["report"])
    assert r.exit_code == 0 and "Channel mix" in r.output and "self-service deflection" in r.output
    r = runner.invoke(app, ["report", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["complaints"]["total"] == 0
    r = runner.invoke(app, ["crm", "merge", "2", "3", "--reason", "same shop account"])
    assert r.exit_code == 0 and '"merged_contact_id": 3' in r.output
    r = runner.invoke(app, ["crm", "lifecycle"])
    assert r.exit_code == 0
