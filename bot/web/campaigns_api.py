"""Campaign routes of the agent API, `/api/v1/campaigns` (docs/campaigns.md).

Reading needs any agent; defining and running needs a supervisor. A run started here
goes on in the background; follow it with GET .../status. Every answer has its model in
the OpenAPI schema (/docs), not an untyped object.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from bot.campaigns.definitions import CampaignSettings
from bot.campaigns.runs import Campaigns
from bot.web.api import AnyAgent, ApiError, BearerRoute, Supervisor, runtime_of

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"], route_class=BearerRoute)
_background: set[asyncio.Task[Any]] = set()


class CampaignBody(CampaignSettings):
    """A campaign's definition; the name is the path's (given here too, it must match)."""

    name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")  # type: ignore[assignment]


class CampaignList(BaseModel):
    items: list[CampaignSettings]


class PreviewContact(BaseModel):
    id: int
    name: str | None
    lifecycle_phase: str
    outcome: str = Field(description="what a run would do: would_send, skipped:<reason>, ...")


class Preview(BaseModel):
    campaign: str
    audience: int = Field(description="contacts in the audience now")
    would_send: int = Field(description="of them, those a run would send to now")
    outcomes: dict[str, int] = Field(description="would_send, skipped:<reason>, deferred:<reason>")
    channels: list[str] = Field(description="the configured channels a message can go on")
    sample: list[PreviewContact]


class RunReport(BaseModel):
    campaign: str
    run_id: int | None
    run_key: str | None
    targeted: int
    dry_run: bool
    outcomes: dict[str, int]
    seconds: float


class RunStarted(BaseModel):
    campaign: str
    started: bool


class RunFigures(BaseModel):
    id: int
    run_key: str
    status: str
    targeted: int
    sent: int
    skipped: int
    deferred: int
    pending: int = Field(description="not reached yet: the run is open")
    started_at: str
    finished_at: str | None
    retry_until: str | None = Field(
        description="deferred and pending contacts are tried again every 15 minutes until then"
    )


class Status(BaseModel):
    """targeted = sent + skipped + deferred + pending"""

    campaign: str
    runs: list[RunFigures]
    targeted: int
    pending: int
    skipped: dict[str, int]
    deferred: dict[str, int]
    sent: int
    failed: int
    responded: int
    completed: int
    converted: int


def _campaigns(request: Request) -> Campaigns:
    return runtime_of(request).campaigns


async def _known(c: Campaigns, name: str) -> None:
    if name not in await c.all():
        raise ApiError(404, "not_found", f"no campaign {name!r}")


@router.get("")
async def list_campaigns(request: Request, agent: AnyAgent) -> CampaignList:
    found = await _campaigns(request).all()
    return CampaignList(items=list(found.values()))


@router.put("/{name}")
async def define(
    request: Request, name: str, body: CampaignBody, agent: Supervisor
) -> CampaignSettings:
    """Create or replace a campaign (a built-in or config.yaml one is overridden). The
    body need not repeat the name."""
    if body.name is not None and body.name != name:
        raise ApiError(422, "invalid_request", "the name in the path and the body differ")
    try:
        campaign = CampaignSettings.model_validate({**body.model_dump(), "name": name})
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    rt = runtime_of(request)
    await rt.campaigns.save(campaign)
    if rt.scheduler is not None:
        await rt.scheduler.refresh()
    return campaign


@router.get("/{name}/preview")
async def preview(
    request: Request, name: str, agent: AnyAgent, sample: int = Query(10, ge=0, le=100)
) -> Preview:
    """The audience now and what a run would do to it: the dry run's checks."""
    c = _campaigns(request)
    await _known(c, name)
    return Preview.model_validate(await c.preview(name, sample))


@router.post("/{name}/run", status_code=202)
async def run(
    request: Request,
    name: str,
    agent: Supervisor,
    dry_run: bool = False,
    key: str | None = Query(None, max_length=100),
) -> RunReport | RunStarted:
    """A dry run answers at once with what would happen; a real run is started in the
    background (202) and reported by GET /{name}/status."""
    c = _campaigns(request)
    await _known(c, name)
    if dry_run:
        return RunReport.model_validate((await c.run(name, dry_run=True)).as_dict())
    task = asyncio.create_task(c.run(name, run_key=key))
    _background.add(task)
    task.add_done_callback(_done)
    return RunStarted(campaign=name, started=True)


def _done(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("campaign run failed", exc_info=task.exception())


@router.get("/{name}/status")
async def status(request: Request, name: str, agent: AnyAgent) -> Status:
    c = _campaigns(request)
    await _known(c, name)
    return Status.model_validate(await c.status(name))
