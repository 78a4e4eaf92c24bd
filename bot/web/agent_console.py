"""The agents' web console at `/agent`: one static page, its scripts and its style sheet.

The page signs in with an agent's API token (kept in the tab's sessionStorage) and works
entirely through the REST API under `/api/v1`; live updates come from `/api/v1/events`.
All assets, the vendored Chart.js of the supervisor view included, are served from this
package (no build step, no CDN), with a Content Security Policy that allows only this
origin's scripts and requires Trusted Types, so a stray `innerHTML` with customer text
would throw instead of becoming markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from sqlalchemy import select

from bot.desk.service import NotFound
from bot.web.api import AnyAgent, runtime_of
from flows.catalog import LOCALES
from storage.models import Agent

STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "console.html"
ASSETS = {  # path under static/ → media type
    # the page loads the scripts in this order (console.html, all `defer`): Chart.js, the
    # texts, the supervisor view, the inbox (search, canned replies), then the desk that
    # uses those before it
    "console-texts.js": "text/javascript; charset=utf-8",
    "console-supervisor.js": "text/javascript; charset=utf-8",
    "console-inbox.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    # Chart.js for the supervisor view (static/vendor/README.md: version, licence)
    "vendor/chart.umd.min.js": "text/javascript; charset=utf-8",
}
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

router = APIRouter(tags=["agent console"])


@router.get("/agent", include_in_schema=False)
async def console_page() -> HTMLResponse:
    """The console itself; never cached, so a deployment is picked up on reload."""
    return HTMLResponse(
        PAGE.read_text("utf-8"), headers={"Cache-Control": "no-store", **SECURITY_HEADERS}
    )


@router.get("/agent/", include_in_schema=False)
async def console_slash() -> RedirectResponse:
    return RedirectResponse("/agent", status_code=308)


@router.get("/agent/static/{name:path}", include_in_schema=False)
async def console_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:  # only the listed files: no path is ever built from the request
        raise NotFound(f"no console asset {name!r}")
    return FileResponse(
        STATIC / name,
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/agent/api/colleagues")
async def colleagues(request: Request, agent: AnyAgent) -> dict[str, Any]:
    """Agents' ids and names, for any signed-in agent: the console names who wrote what
    in a timeline and offers the active ones as transfer targets (`/api/v1/agents`, with
    e-mail addresses and Slack ids, stays for supervisors)."""
    async with runtime_of(request).sessions() as s:
        rows = (await s.execute(select(Agent).order_by(Agent.name, Agent.id))).scalars()
        items = [{"id": a.id, "name": a.name, "role": a.role, "active": a.active} for a in rows]
    return {"items": items, "total": len(items), "limit": len(items), "offset": 0}


@router.get("/agent/api/labels")
async def labels(request: Request, agent: AnyAgent) -> dict[str, dict[str, str]]:
    """Labels the flows define for codes the console shows, in both languages, from the
    flows' catalog: why a conversation was escalated (`reasons.<code>`), so a new flow's
    reason reads right without editing the console."""
    catalog = runtime_of(request).engine.catalog
    return {
        locale: {f"reason.{code}": text for code, text in catalog.group(locale, "reasons").items()}
        for locale in LOCALES
    }
