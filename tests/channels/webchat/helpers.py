"""A web-chat client as the page is one: it gets its session cookie from GET / and opens
the socket with it and with the page's own Origin."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import func, select
from websockets.asyncio.client import ClientConnection, connect

from bot.runtime import Runtime
from channels.webchat.session import COOKIE
from storage.models import InboxStatus, InboxUpdate

TIMEOUT = 10.0
SAME = "same"  # origin=SAME: the page's own origin, as a browser sends it


async def new_session(base: str, *, forwarded_for: str | None = None) -> str:
    """A fresh visitor's session token, as the page's GET sets it."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        response = await http.get("/", headers=headers)
    assert response.status_code == 200, response.text
    token = response.cookies.get(COOKIE)
    assert token, response.headers
    return token


def ws_url(base: str, **params: str) -> str:
    query = {"lang": "de", **params}
    qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return f"{base.replace('http://', 'ws://')}/ws/chat?{qs}"


async def open_socket(
    base: str,
    token: str | None = None,
    *,
    origin: str | None = SAME,
    forwarded_for: str | None = None,
    **params: str,
) -> ClientConnection:
    """A socket of the visitor `token` (a new visitor if None); `origin=None` sends none,
    `forwarded_for` is what the (trusted, loopback) proxy says the client's address is."""
    if token is None:
        token = await new_session(base, forwarded_for=forwarded_for)
    headers: dict[str, Any] = {"Cookie": f"{COOKIE}={token}"} if token else {}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    return await connect(
        ws_url(base, **params),
        origin=None if origin is None else base if origin == SAME else origin,  # type: ignore[arg-type]
        additional_headers=headers,
        open_timeout=TIMEOUT,
    )


async def handled(runtime: Runtime, timeout: float = TIMEOUT) -> None:
    """Until the inbox has handled every web-chat message it holds: an ack means the
    message is persisted in the inbox, the worker handles it a moment later."""
    async with asyncio.timeout(timeout):
        while True:
            async with runtime.sessions() as s:
                waiting = await s.scalar(
                    select(func.count())
                    .select_from(InboxUpdate)
                    .where(
                        InboxUpdate.channel == "webchat",
                        InboxUpdate.status.in_((InboxStatus.PENDING, InboxStatus.PROCESSING)),
                    )
                )
            if not waiting:
                return
            await asyncio.sleep(0.02)
