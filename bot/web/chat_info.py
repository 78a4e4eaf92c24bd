"""What the web chat page shows before and around the conversation (issue 20, findings 2,
4, 5): the company's name as its title, the welcome view and pre-chat form texts in both
languages (from the catalogs, flows/locales), and whether the team is there: on duty and
agents online, or when it is back. The page asks again every minute.

Public (the chat page has no sign-in) and so deliberately coarse: no names, no counts
beyond "someone is online".
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bot.conversation import presence
from bot.conversation.actions import DATE_FORMATS
from bot.web.api import runtime_of
from flows.catalog import LOCALES

router = APIRouter(tags=["web chat"])
TEXTS = (
    "welcome",
    "prechat",
    "name",
    "email",
    "start",
    "team_online",
    "assistant_only",
    "closed",
    "agent",
    "bot",
)


@router.get("/chat/info", include_in_schema=False)
async def chat_info(request: Request) -> JSONResponse:
    rt = runtime_of(request)
    settings, now = rt.settings, rt.engine.clock()
    async with rt.sessions() as s:
        there = await presence.availability(s, settings.business_hours, now)
    if there.agents_available:
        state = "team_online"
    elif there.on_duty:
        state = "assistant_only"
    else:
        state = "closed"
    tz = ZoneInfo(settings.company.timezone)
    texts: dict[str, dict[str, str]] = {}
    for locale in LOCALES:
        when = (
            there.next_open.astimezone(tz).strftime(DATE_FORMATS[locale])
            if there.next_open is not None
            else ""
        )
        texts[locale] = {
            key: rt.catalog.text(locale, f"webchat.{key}", next_open=when) for key in TEXTS
        }
    body: dict[str, Any] = {
        "company": settings.company.name,
        "prechat_form": bool(getattr(settings.channel("webchat"), "prechat_form", False)),
        "presence": {
            "state": state,
            "on_duty": there.on_duty,
            "agents_available": there.agents_available,
            "next_open": there.next_open.isoformat() if there.next_open else None,
        },
        "texts": texts,
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
