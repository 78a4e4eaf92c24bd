"""A web-chat client as the page is one: it gets its session cookie from GET / and opens
the socket with it and with the page's own Origin."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection, connect

from channels.webchat_session import COOKIE

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
