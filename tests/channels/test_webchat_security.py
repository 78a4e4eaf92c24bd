"""The web chat against an attacker (issue 15): a visitor's chat cannot be taken over by
knowing or choosing an id, another site's page cannot open it, the API never shows the
credential, a visitor sees only their own conversations after a merge, and the page is
served under a strict CSP. Real uvicorn, real HTTP and WebSockets, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from bot import auth, history
from bot.runtime import Runtime
from channels import webchat
from channels.webchat_session import COOKIE, SECURE_COOKIE
from storage import queries
from storage.models import AgentRole
from tests.channels.test_webchat import Chat, connect, visitor_of
from tests.channels.webchat_helpers import new_session, open_socket
from tests.conftest import make_settings
from tests.server import serve

TIMEOUT = 10.0
SHOP = "https://shop.example.com"


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[tuple[str, Runtime]]:
    async with serve(make_settings(db_url)) as (base, runtime):
        yield base, runtime


async def refused(base: str, token: str | None, **options: Any) -> int:
    """The close code of a socket that must be refused; fails if any data frame (the
    history above all) arrives first."""
    ws = await open_socket(base, token, **options)
    frames: list[Any] = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(TIMEOUT):
            while True:
                frames.append(json.loads(await ws.recv()))
    assert all(f["type"] == "error" for f in frames), frames
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def victim(base: str) -> tuple[str, Chat]:
    """A visitor who has chatted: their token and their open chat."""
    token = await new_session(base)
    chat = await connect(base, token)
    assert await chat.history() == []
    await chat.say("hallo")
    return token, chat


# --- finding 2: the chat cannot be hijacked ----------------------------------------------


async def test_knowing_the_visitor_id_opens_nothing(server: tuple[str, Runtime]) -> None:
    """Regression: `?visitor=<id>` (any 8-64 characters) opened that visitor's chat. The
    id agents see as the identity's external id, with or without a made-up signature,
    is refused now; only the server-signed cookie counts."""
    base, runtime = server
    token, chat = await victim(base)
    visitor = visitor_of(runtime, token)
    try:
        attempts: list[tuple[str, dict[str, str]]] = [
            ("", {"visitor": visitor}),  # the old way: the id in the URL, no cookie
            (visitor, {}),  # the bare id as the cookie
            (f"{visitor}.forged", {}),
            (token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"), {}),
            (token, {"visitor": "someone-else-entirely"}),  # the URL cannot switch it
        ]
        for cookie, params in attempts[:4]:
            assert await refused(base, cookie, **params) == 4401, (cookie, params)
        # a URL parameter never changes who the cookie's owner is
        cookie, params = attempts[4]
        again = await connect(base, cookie, **params)
        assert (await again.history())[0]["text"] == "hallo"
        await again.ws.close()
    finally:
        await chat.ws.close()


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://127.0.0.1.evil.example",
        "http://127.0.0.1:1",  # same host, another port: another origin
        "null",  # a sandboxed frame or a file:// page
        None,  # no Origin at all
    ],
)
async def test_another_origin_cannot_open_the_chat(
    server: tuple[str, Runtime], origin: str | None
) -> None:
    """Regression: a WebSocket from another site's page (the victim's browser sends the
    victim's cookie along) read and wrote the victim's chat. Now Origin must be the page's
    own: 4403 and not a single frame of the history."""
    base, _ = server
    token, chat = await victim(base)
    try:
        assert await refused(base, token, origin=origin) == 4403
    finally:
        await chat.ws.close()


async def test_allowed_origins_may_open_the_chat_and_frame_the_page(db_url: str) -> None:
    settings = make_settings(db_url)
    settings.webchat.allowed_origins = [SHOP]
    async with serve(settings) as (base, _):
        token, chat = await victim(base)
        try:
            shop = await connect(base, token, origin=SHOP)
            assert (await shop.history())[0]["text"] == "hallo"
            await shop.ws.close()
            assert await refused(base, token, origin="https://evil.example") == 4403
        finally:
            await chat.ws.close()
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            page = await http.get("/")
    assert f"frame-ancestors 'self' {SHOP};" in page.headers["content-security-policy"]
    assert "x-frame-options" not in page.headers  # it cannot name the shop


async def test_the_api_never_returns_the_credential(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    token, chat = await victim(base)
    await chat.say("Mensch", replies=1)
    await chat.ws.close()
    visitor = visitor_of(runtime, token)
    signature = token.rsplit(".", 1)[1]
    async with runtime.sessions() as s, s.begin():
        _, key = await auth.create_agent(s, "Ada Admin", AgentRole.ADMIN)
        identity = await queries.get_identity(s, "webchat", visitor)
        assert identity is not None
        contact_id = identity.contact_id
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=TIMEOUT) as http:
        queue = (await http.get("/api/v1/queue")).json()
        [conv] = queue["items"]
        bodies = [
            json.dumps(queue),
            (await http.get(f"/api/v1/conversations/{conv['id']}")).text,
            (await http.get("/api/v1/contacts", params={"q": visitor[:8]})).text,
            (await http.get(f"/api/v1/contacts/{contact_id}")).text,
            (await http.get(f"/api/v1/contacts/{contact_id}/timeline")).text,
            (await http.get(f"/api/v1/contacts/{contact_id}/export")).text,
        ]
    assert visitor in bodies[1]  # agents do see the visitor id: it opens nothing
    for body in bodies:
        assert token not in body and signature not in body


# --- the session cookie ------------------------------------------------------------------


async def test_the_page_sets_an_httponly_session_cookie(server: tuple[str, Runtime]) -> None:
    base, _ = server
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        first = await http.get("/")
        again = await http.get("/")  # the client sends the cookie back: kept, renewed
        forged = await http.get("/", headers={"Cookie": f"{COOKIE}=abcdefghij.forged"})
        https = await http.get("/", headers={"X-Forwarded-Proto": "https"})
    cookie = first.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "Path=/", "SameSite=lax", "Max-Age=31536000"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    token = first.cookies[COOKIE]
    assert again.cookies[COOKIE] == token
    assert forged.cookies[COOKIE] not in (token, "abcdefghij.forged")
    # behind the (trusted, loopback) TLS proxy: a host-only Secure cookie
    secure = https.headers["set-cookie"]
    assert secure.startswith(f"{SECURE_COOKIE}=") and "Secure" in secure


async def test_an_untrusted_peer_cannot_claim_https_or_an_address(db_url: str) -> None:
    settings = make_settings(db_url)
    settings.server.trusted_proxies = ["10.0.0.1"]  # not loopback, where the test connects
    async with serve(settings) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            page = await http.get("/", headers={"X-Forwarded-Proto": "https"})
    assert page.headers["set-cookie"].startswith(f"{COOKIE}=")


async def test_the_page_has_a_strict_content_security_policy(
    server: tuple[str, Runtime],
) -> None:
    """Regression (finding 15): the page was sent without CSP, frame-ancestors or nosniff."""
    base, _ = server
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        page = await http.get("/")
    csp = {
        d.split(" ", 1)[0]: d.split(" ", 1)[1]
        for d in page.headers["content-security-policy"].split("; ")
    }
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'self'"
    assert csp["require-trusted-types-for"] == "'script'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "SAMEORIGIN"
    assert page.headers["cache-control"] == "no-store"


# --- finding 3: after a merge each visitor sees only their own conversations -------------


async def test_after_a_merge_a_visitor_sees_only_their_own_chat(
    server: tuple[str, Runtime],
) -> None:
    """Regression: the history was loaded per contact, so after two visitors' contacts
    were merged (a supervisor's merge, or both linking one address) each saw the other's
    messages."""
    base, runtime = server
    a_token, b_token = await new_session(base), await new_session(base)
    for token, text in ((a_token, "Hier schreibt Anna"), (b_token, "Hier schreibt Bernd")):
        chat = await connect(base, token)
        await chat.history()
        await chat.say("hallo")
        await chat.say(text)
        await chat.ws.close()
    async with runtime.sessions() as s, s.begin():
        a = await queries.get_identity(s, "webchat", visitor_of(runtime, a_token))
        b = await queries.get_identity(s, "webchat", visitor_of(runtime, b_token))
        assert a is not None and b is not None
        await history.merge_contacts(
            s, a.contact_id, b.contact_id, actor="agent:1", reason="same person, they said"
        )
    for token, own, other in (
        (a_token, "Hier schreibt Anna", "Hier schreibt Bernd"),
        (b_token, "Hier schreibt Bernd", "Hier schreibt Anna"),
    ):
        chat = await connect(base, token)
        texts = [h["text"] for h in await chat.history()]
        await chat.ws.close()
        assert own in texts and other not in texts, texts
        assert texts.count("hallo") == 1


# --- the page's sources ------------------------------------------------------------------

STATIC = Path(webchat.__file__).parent / "webchat_static"
SINKS = ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("]


@pytest.mark.parametrize("name", ["index.html", "chat.js", "chat.css"])
def test_the_page_turns_no_text_into_markup(name: str) -> None:
    """Customer and bot text go in with textContent (Trusted Types would throw otherwise);
    no inline script or style, nothing from another host."""
    assert name in webchat.ASSETS or name == "index.html"
    source = (STATIC / name).read_text("utf-8")
    assert not [s for s in SINKS if s in source]
    assert "http://" not in source and "https://" not in source
    if name == "index.html":
        assert not re.search(r"<script(?![^>]*\bsrc=)", source), "inline script"
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", source), "inline style or handler"
