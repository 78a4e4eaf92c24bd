"""`cicbot import contacts|orders FILE.csv` (and the API): all or nothing, idempotent by
external id, every bad row reported with its line number and the reason.

contacts: external_id (required), name, email, phone, locale; any other column goes into
the contact's attributes. The external id becomes the contact's identity on the "crm"
channel (`cicbot contacts show crm:K-1001`).
orders: order_id, customer_id (a contact's external id, from this or an earlier import),
amount (12.34 or 12,34), ordered_at (ISO date or date-time, UTC unless it has an offset);
optional currency (EUR), status (completed, cancelled, returned).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.crm.history import CRM_CHANNEL
from storage import queries
from storage.models import Contact, Identity, Order

Progress = Callable[[int, int], None]
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE_RE = re.compile(r"^\+?[0-9 ()/.-]{5,40}$")
ORDER_STATUS = ("completed", "cancelled", "returned")
CONTACT_FIELDS = ("external_id", "name", "email", "phone", "locale")
ORDER_FIELDS = ("order_id", "customer_id", "amount", "ordered_at", "currency", "status")
CHUNK = 500


@dataclass
class RowError:
    line: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass
class ImportReport:
    kind: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    contact_ids: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ok": self.ok,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "errors": [e.as_dict() for e in self.errors],
        }


class ImportFileError(Exception):
    """The file as a whole is unusable (no header, missing columns, not UTF-8)."""


def read_rows(data: str | bytes, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row; header names are trimmed and lower-cased."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"the file is not UTF-8: {exc}") from None
    data = data.lstrip("\ufeff")
    try:
        dialect: Any = csv.Sniffer().sniff(data[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(data, newline=""), dialect)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise ImportFileError("the file is empty") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ImportFileError(f"line 1: missing column(s): {', '.join(missing)}")
    rows: list[tuple[int, dict[str, str]]] = []
    line = reader.line_num
    try:
        for values in reader:
            start, line = line + 1, reader.line_num
            if not any(v.strip() for v in values):
                continue
            row = {h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(header)}
            if len(values) > len(header):
                row["\x00extra"] = "1"
            rows.append((start, row))
    except csv.Error as exc:
        raise ImportFileError(f"line {reader.line_num}: {exc}") from None
    return rows


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


async def _contacts_by_external(s: AsyncSession, ids: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for part in _chunks(sorted(set(ids))):
        q = select(Identity.external_id, Identity.contact_id).where(
            Identity.channel == CRM_CHANNEL, Identity.external_id.in_(part)
        )
        found.update({e: c for e, c in (await s.execute(q)).all()})
    return found


def _check_contact(row: dict[str, str], max_len: dict[str, int]) -> str | None:
    if "\x00extra" in row:
        return "more values than columns"
    if not row["external_id"]:
        return "external_id is empty"
    for key, n in max_len.items():
        if len(row.get(key, "")) > n:
            return f"{key} is longer than {n} characters"
    email = row.get("email", "")
    if email and not EMAIL_RE.match(email):
        return f"email {email!r} is not an email address"
    phone = row.get("phone", "")
    if phone and not PHONE_RE.match(phone):
        return f"phone {phone!r} is not a phone number"
    locale = row.get("locale", "")
    if locale and locale not in ("de", "en"):
        return f"locale {locale!r} is not de or en"
    return None


async def import_contacts(
    s: AsyncSession, data: str | bytes, *, progress: Progress | None = None
) -> ImportReport:
    """Validate every row first; write only when no row is bad. The caller commits."""
    rows = read_rows(data, ["external_id"])
    report = ImportReport("contacts", rows=len(rows))
    limits = {"external_id": 320, "name": 200, "email": 320, "phone": 40}
    seen: dict[str, int] = {}
    for line, row in rows:
        reason = _check_contact(row, limits)
        if reason is None and row["external_id"] in seen:
            reason = (
                f"external_id {row['external_id']!r} already on line {seen[row['external_id']]}"
            )
        if reason:
            report.errors.append(RowError(line, reason))
        else:
            seen[row["external_id"]] = line
    if report.errors:
        return report
    existing = await _contacts_by_external(s, [r["external_id"] for _, r in rows])
    contacts: dict[int, Contact] = {}
    for part in _chunks([str(c) for c in existing.values()]):
        q = select(Contact).where(Contact.id.in_([int(c) for c in part]))
        contacts.update({c.id: c for c in (await s.execute(q)).scalars().all()})
    for n, (_, row) in enumerate(rows, 1):
        extra = {
            k: v
            for k, v in row.items()
            if k not in CONTACT_FIELDS and v and not k.startswith("\x00")
        }
        values = {k: row.get(k) or None for k in ("name", "email", "phone")}
        cid = existing.get(row["external_id"])
        if cid is None:
            identity = await queries.create_contact_with_identity(
                s,
                CRM_CHANNEL,
                row["external_id"],
                name=values["name"],
                locale=row.get("locale") or "de",
                source="import",
            )
            contact = await s.get(Contact, identity.contact_id)
            assert contact is not None
            contact.email, contact.phone = values["email"], values["phone"]
            contact.attributes = queries.scrub(extra)
            identity.reachable = False  # the crm "channel" sends nothing
            identity.unreachable_reason = "imported record"
            existing[row["external_id"]] = contact.id
            report.created += 1
        else:
            contact = contacts[cid]
            changed = False
            for key, value in values.items():
                if value is not None and getattr(contact, key) != value:
                    setattr(contact, key, queries.scrub(value))
                    changed = True
            if row.get("locale") and contact.locale != row["locale"]:
                contact.locale, changed = row["locale"], True
            merged = {**(contact.attributes or {}), **queries.scrub(extra)}
            if merged != (contact.attributes or {}):
                contact.attributes, changed = merged, True
            report.updated += changed
            report.unchanged += not changed
        report.contact_ids.add(contact.id)
        if progress and (n % 200 == 0 or n == len(rows)):
            progress(n, len(rows))
    await s.flush()
    return report


def parse_amount(text: str) -> int:
    """Cents of "12.34", "12,34", "1.234,56", "1,234.56"."""
    t = text.replace(" ", "").replace("\u00a0", "")
    if "," in t and "." in t:
        t = (
            t.replace(".", "").replace(",", ".")
            if t.rfind(",") > t.rfind(".")
            else t.replace(",", "")
        )
    else:
        t = t.replace(",", ".")
    try:
        value = Decimal(t)
    except InvalidOperation:
        raise ValueError(f"amount {text!r} is not a number") from None
    if not value.is_finite() or value < 0 or value > Decimal("1e12"):
        raise ValueError(f"amount {text!r} is out of range")
    return int((value * 100).quantize(Decimal(1)))


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"ordered_at {text!r} is not an ISO date (2026-03-01 or 2026-03-01T12:00)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


async def import_orders(
    s: AsyncSession, data: str | bytes, *, progress: Progress | None = None
) -> ImportReport:
    rows = read_rows(data, ["order_id", "customer_id", "amount", "ordered_at"])
    report = ImportReport("orders", rows=len(rows))
    customers = await _contacts_by_external(s, [r["customer_id"] for _, r in rows])
    parsed: list[tuple[str, int, int, str, datetime, str]] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        try:
            if "\x00extra" in row:
                raise ValueError("more values than columns")
            oid, cust = row["order_id"], row["customer_id"]
            if not oid or len(oid) > 200:
                raise ValueError("order_id is empty or longer than 200 characters")
            if oid in seen:
                raise ValueError(f"order_id {oid!r} already on line {seen[oid]}")
            if not cust:
                raise ValueError("customer_id is empty")
            if cust not in customers:
                raise ValueError(
                    f"customer_id {cust!r} is not a known contact (import contacts first)"
                )
            cents = parse_amount(row["amount"])
            when = parse_time(row["ordered_at"])
            currency = (row.get("currency") or "EUR").upper()
            if not re.fullmatch(r"[A-Z]{3}", currency):
                raise ValueError(f"currency {currency!r} is not an ISO 4217 code")
            status = (row.get("status") or "completed").lower()
            if status not in ORDER_STATUS:
                raise ValueError(f"status {status!r} is not one of {', '.join(ORDER_STATUS)}")
        except ValueError as exc:
            report.errors.append(RowError(line, str(exc)))
            continue
        seen[oid] = line
        parsed.append((oid, customers[cust], cents, currency, when, status))
    if report.errors:
        return report
    existing: dict[str, Order] = {}
    for part in _chunks([p[0] for p in parsed]):
        q = select(Order).where(Order.external_id.in_(part))
        existing.update({o.external_id: o for o in (await s.execute(q)).scalars().all()})
    for n, (oid, cid, cents, currency, when, status) in enumerate(parsed, 1):
        order = existing.get(oid)
        if order is None:
            s.add(
                Order(
                    external_id=oid,
                    contact_id=cid,
                    amount_cents=cents,
                    currency=currency,
                    ordered_at=when,
                    status=status,
                )
            )
            report.created += 1
        else:
            new = (cid, cents, currency, when, status)
            old = (
                order.contact_id,
                order.amount_cents,
                order.currency,
                order.ordered_at,
                order.status,
            )
            if new != old:
                order.contact_id, order.amount_cents, order.currency = cid, cents, currency
                order.ordered_at, order.status = when, status
                report.updated += 1
            else:
                report.unchanged += 1
        report.contact_ids.add(cid)
        if progress and (n % 200 == 0 or n == len(parsed)):
            progress(n, len(parsed))
    await s.flush()
    return report
