"""The console's inbox (issue 20, finding 6): the All tab, search across contacts and
messages, and canned replies (admins keep them, every agent uses them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from bot.desk import canned
from bot.desk import search as desk_search
from bot.desk.service import NotFound
from bot.web.api import (
    Admin,
    AnyAgent,
    ApiError,
    BearerRoute,
    Limit,
    Offset,
    contact_json,
    conversation_json,
    page,
    runtime_of,
)
from storage.models import CannedReply

router = APIRouter(prefix="/api/v1", tags=["agent desk"], route_class=BearerRoute)


class Canned(BaseModel):
    short_code: str = Field(min_length=1, max_length=65)
    text: str = Field(min_length=1, max_length=20_000)


def canned_json(c: CannedReply) -> dict[str, Any]:
    return {
        "id": c.id,
        "short_code": c.short_code,
        "text": c.text,
        "updated_at": c.updated_at.isoformat(),
    }


@router.get("/conversations")
async def all_open(
    request: Request, agent: AnyAgent, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    """Every waiting or assigned conversation, whoever has it (the console's All tab);
    `assignee` says whose it is."""
    async with runtime_of(request).sessions() as s:
        rows, total = await desk_search.open_conversations(s, limit, offset)
    return page([conversation_json(c, k) for c, k in rows], total, limit, offset)


@router.get("/search")
async def search(
    request: Request,
    agent: AnyAgent,
    q: Annotated[str, Query(min_length=1, max_length=desk_search.MAX_QUERY)],
    limit: Annotated[int, Query(ge=1, le=50)] = 20,
) -> dict[str, Any]:
    """Contacts (name, email, phone, channel id, number) and messages (their text),
    newest first; each with the conversation to open."""
    async with runtime_of(request).sessions() as s:
        contacts, messages = await desk_search.search(s, q, limit)
    return {
        "contacts": [
            {**contact_json(h.contact), "conversation_id": h.conversation_id} for h in contacts
        ],
        "messages": [
            {
                "id": h.touchpoint.id,
                "conversation_id": h.touchpoint.conversation_id,
                "channel": h.touchpoint.channel,
                "direction": h.touchpoint.direction,
                "actor": h.touchpoint.actor,
                "text": h.touchpoint.text,
                "created_at": h.touchpoint.created_at.isoformat(),
                "contact": {"id": h.contact.id, "name": h.contact.name},
            }
            for h in messages
        ],
    }


@router.get("/canned")
async def canned_list(request: Request, agent: AnyAgent) -> dict[str, Any]:
    async with runtime_of(request).sessions() as s:
        rows = await canned.all_replies(s)
    return page([canned_json(c) for c in rows], len(rows), len(rows), 0)


@router.put("/canned/{short_code}")
async def canned_save(
    request: Request, short_code: str, body: Canned, agent: Admin
) -> dict[str, Any]:
    """Create or replace a canned reply (admins)."""
    async with runtime_of(request).sessions() as s, s.begin():
        try:
            if canned.check_code(body.short_code) != canned.check_code(short_code):
                raise canned.CannedError("the short code in the path and the body differ")
            row = await canned.save(s, body.short_code, body.text, agent.id)
        except canned.CannedError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
    return canned_json(row)


@router.delete("/canned/{short_code}")
async def canned_remove(request: Request, short_code: str, agent: Admin) -> dict[str, Any]:
    async with runtime_of(request).sessions() as s, s.begin():
        if not await canned.remove(s, short_code):
            raise NotFound(f"no canned reply /{short_code}")
    return {"ok": True}
