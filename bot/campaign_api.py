"""Campaign routes of the agent API, `/api/v1/campaigns` (docs/campaigns.md).

Reading needs any agent; defining and running needs a supervisor. A run started here
goes on in the background; follow it with GET .../status.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Query, Request

from bot.api import AnyAgent, ApiError, BearerRoute, Supervisor, runtime_of
from bot.campaign_config import CampaignSettings
from bot.campaigns import Campaigns

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"], route_class=BearerRoute)
_background: set[asyncio.Task[Any]] = set()


def _campaigns(request: Request) -> Campaigns:
    return runtime_of(request).campaigns


async def _known(c: Campaigns, name: str) -> None:
    if name not in await c.all():
        raise ApiError(404, "not_found", f"no campaign {name!r}")


@router.get("")
async def list_campaigns(request: Request, agent: AnyAgent) -> dict[str, Any]:
    found = await _campaigns(request).all()
    return {"items": [c.definition() for c in found.values()]}


@router.put("/{name}")
async def define(
    request: Request, name: str, body: CampaignSettings, agent: Supervisor
) -> dict[str, Any]:
    """Create or replace a campaign (a built-in or config.yaml one is overridden)."""
    if body.name != name:
        raise ApiError(422, "invalid_request", "the name in the path and the body differ")
    rt = runtime_of(request)
    await rt.campaigns.save(body)
    if rt.scheduler is not None:
        await rt.scheduler.refresh()
    return body.definition()


@router.get("/{name}/preview")
async def preview(
    request: Request, name: str, agent: AnyAgent, sample: int = Query(10, ge=0, le=100)
) -> dict[str, Any]:
    c = _campaigns(request)
    await _known(c, name)
    return await c.preview(name, sample)


@router.post("/{name}/run", status_code=202)
async def run(
    request: Request,
    name: str,
    agent: Supervisor,
    dry_run: bool = False,
    key: str | None = Query(None, max_length=100),
) -> dict[str, Any]:
    """A dry run answers at once with what would happen; a real run is started in the
    background (202) and reported by GET /{name}/status."""
    c = _campaigns(request)
    await _known(c, name)
    if dry_run:
        return (await c.run(name, dry_run=True)).as_dict()
    task = asyncio.create_task(c.run(name, run_key=key))
    _background.add(task)
    task.add_done_callback(_done)
    return {"campaign": name, "started": True}


def _done(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("campaign run failed", exc_info=task.exception())


@router.get("/{name}/status")
async def status(request: Request, name: str, agent: AnyAgent) -> dict[str, Any]:
    c = _campaigns(request)
    await _known(c, name)
    return await c.status(name)
