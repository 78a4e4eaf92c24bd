"""The CRM part of the REST API, `/api/v1` (docs/crm.md): merge contacts (supervisors,
audited), imports and recomputations (supervisors), analytics (supervisors), addresses
locked for email links (supervisors), GDPR export, erasure and retention (admins).
Errors are the API's JSON errors."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError

from bot.conversation import linking as identity_link
from bot.crm import analytics, gdpr, importer, lifecycle, retention, value
from bot.crm.history import MergeError, merge_contacts
from bot.delivery import dead_letters
from bot.desk.service import actor
from bot.web.api import Admin, ApiError, BearerRoute, Supervisor, runtime_of
from storage.models import utcnow

router = APIRouter(prefix="/api/v1", tags=["crm"], route_class=BearerRoute)
MAX_IMPORT_BYTES = 64 << 20


class Merge(BaseModel):
    other_id: int = Field(description="The contact merged into the one in the path.")
    reason: str = Field(min_length=1, max_length=500)


class Retention(BaseModel):
    days: int | None = Field(default=None, ge=1)


class LinkLock(BaseModel):
    id: int
    email: str
    failures: int
    locked_at: str | None


class LinkLocks(BaseModel):
    items: list[LinkLock]
    total: int


class Done(BaseModel):
    ok: bool


class Purged(BaseModel):
    retention_days: int
    purged: dict[str, int] = Field(description="rows each step touched, by step")


@router.post("/contacts/{contact_id}/merge")
async def merge(
    request: Request, contact_id: int, body: Merge, agent: Supervisor
) -> dict[str, Any]:
    """Merge contact `other_id` into this one: identities, history, cases, consents and
    orders move over; an audit touchpoint records who merged and why. Supervisors only:
    a wrong merge shows one person's history to another."""
    try:
        async with runtime_of(request).sessions() as s, s.begin():
            return await merge_contacts(
                s, contact_id, body.other_id, actor=actor(agent), reason=body.reason
            )
    except MergeError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    except IntegrityError:
        raise ApiError(
            409, "conflict", "the contacts' records conflict; nothing was merged"
        ) from None


@router.get("/link-locks")
async def link_locks(request: Request, agent: Supervisor) -> LinkLocks:
    """Email addresses locked for linking after too many wrong one-time codes."""
    async with runtime_of(request).sessions() as s:
        rows = await identity_link.locked_addresses(s)
    items = [
        LinkLock(
            id=r.id,
            email=r.email,
            failures=r.failures,
            locked_at=r.locked_at.isoformat() if r.locked_at else None,
        )
        for r in rows
    ]
    return LinkLocks(items=items, total=len(items))


@router.delete("/link-locks/{lock_id}")
async def unlock_link(request: Request, lock_id: int, agent: Supervisor) -> Done:
    """Unlock an address once a person has checked it is the customer's (by phone, in the
    shop): linking it works again, the count of wrong codes starts afresh."""
    async with runtime_of(request).sessions() as s, s.begin():
        if not await identity_link.unlock(s, lock_id=lock_id, actor=actor(agent)):
            raise ApiError(404, "not_found", f"no locked address {lock_id}")
    return Done(ok=True)


@router.get("/contacts/{contact_id}/export")
async def export(request: Request, contact_id: int, agent: Admin) -> dict[str, Any]:
    """GDPR art. 15: everything stored about the contact."""
    try:
        async with runtime_of(request).sessions() as s:
            return await gdpr.export(s, contact_id)
    except gdpr.GdprError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


@router.post("/contacts/{contact_id}/erase")
async def erase(request: Request, contact_id: int, agent: Admin) -> dict[str, Any]:
    """GDPR art. 17: delete or anonymize the contact's personal data; aggregates stay."""
    try:
        async with runtime_of(request).sessions() as s, s.begin():
            return await gdpr.erase(s, contact_id, actor=actor(agent))
    except gdpr.GdprError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None


@router.post("/gdpr/retention")
async def retention_purge(request: Request, body: Retention, agent: Admin) -> Purged:
    """The retention period over every table with personal data (docs/security.md); how
    many rows each step touched."""
    rt = runtime_of(request)
    days = body.days or rt.settings.crm.retention_days
    async with rt.sessions() as s, s.begin():
        purged = await retention.purge(s, days)
    return Purged(retention_days=days, purged=purged)


class _BadRows(Exception):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} bad row(s)")
        self.errors = errors


async def _import(request: Request, kind: str) -> Any:
    rt = runtime_of(request)
    if int(request.headers.get("content-length") or 0) > MAX_IMPORT_BYTES:
        raise ApiError(413, "too_large", f"at most {MAX_IMPORT_BYTES} bytes")
    data = await request.body()
    if len(data) > MAX_IMPORT_BYTES:
        raise ApiError(413, "too_large", f"at most {MAX_IMPORT_BYTES} bytes")
    fn = importer.import_contacts if kind == "contacts" else importer.import_orders
    try:
        async with rt.sessions() as s, s.begin():
            report = await fn(s, data)
            if not report.ok:
                raise _BadRows(report.as_dict()["errors"])  # rolls back: nothing half-imported
            result = report.as_dict()
            if kind == "orders":
                result["value"] = await value.recompute(s, rt.settings.crm)
                result["lifecycle"] = await lifecycle.run(
                    s, rt.settings.crm, contact_ids=report.contact_ids
                )
    except importer.ImportFileError as exc:
        raise ApiError(422, "invalid_file", str(exc)) from None
    except _BadRows as bad:
        message = f"{len(bad.errors)} bad row(s); nothing was imported"
        return JSONResponse(
            {"error": {"code": "invalid_rows", "message": message, "rows": bad.errors}},
            status_code=422,
        )
    return result


@router.post("/import/contacts", max_body_size=MAX_IMPORT_BYTES)
async def import_contacts(request: Request, agent: Supervisor) -> Any:
    """The body is the CSV file (see `cicbot import contacts`). All rows or none: a bad row
    answers 422 with every bad row's line and reason."""
    return await _import(request, "contacts")


@router.post("/import/orders", max_body_size=MAX_IMPORT_BYTES)
async def import_orders(request: Request, agent: Supervisor) -> Any:
    """The body is the CSV file (see `cicbot import orders`); value and lifecycle are
    recomputed afterwards, in the same transaction."""
    return await _import(request, "orders")


@router.post("/crm/value")
async def recompute_value(request: Request, agent: Supervisor) -> dict[str, Any]:
    rt = runtime_of(request)
    async with rt.sessions() as s, s.begin():
        return await value.recompute(s, rt.settings.crm)


@router.post("/crm/lifecycle")
async def run_lifecycle(request: Request, agent: Supervisor) -> dict[str, Any]:
    rt = runtime_of(request)
    async with rt.sessions() as s, s.begin():
        return await lifecycle.run(s, rt.settings.crm)


@router.get("/analytics")
async def report(
    request: Request,
    agent: Supervisor,
    days: Annotated[int, Query(ge=1, le=3660)] = 30,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Channel mix and volume, first response and resolution times, complaints, SLA
    breaches, CSAT, win-back, self-service deflection; `since`/`until` (ISO, UTC when
    naive) or the last `days`."""
    from datetime import UTC

    until = (until.replace(tzinfo=until.tzinfo or UTC)) if until else utcnow()
    since = (since.replace(tzinfo=since.tzinfo or UTC)) if since else until - timedelta(days=days)
    if since >= until:
        raise ApiError(422, "invalid_request", "since must be before until")
    async with runtime_of(request).sessions() as s:
        return await analytics.report(s, since=since, until=until)


@router.get("/dead-letters")
async def list_dead_letters(
    request: Request,
    agent: Supervisor,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    source: Annotated[str | None, Query(pattern="^(engine|inbox)$")] = None,
) -> dict[str, Any]:
    """Messages whose flow raised (`engine`) and raw updates the inbox gave up on (`inbox`),
    newest first."""
    async with runtime_of(request).sessions() as s:
        return {"items": await dead_letters.recent(s, limit=limit, source=source)}


@router.get("/dead-letters/{letter_id}")
async def get_dead_letter(request: Request, letter_id: int, agent: Supervisor) -> dict[str, Any]:
    """One dead letter with its traceback and the message it kept."""
    async with runtime_of(request).sessions() as s:
        found = await dead_letters.one(s, letter_id)
    if found is None:
        raise ApiError(404, "not_found", f"dead letter {letter_id} not found")
    return found
