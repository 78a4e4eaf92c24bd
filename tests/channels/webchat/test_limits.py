"""The web chat's limits (issue 15, finding 6): keyed on the client's address (a trusted
proxy's X-Forwarded-For), never on an id the client chooses, plus global caps; every
refusal has its close code. Real uvicorn and WebSockets, SQLite and PostgreSQL (where the
new-conversation limits are shared by all workers)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets
from sqlalchemy import func, select
from websockets.asyncio.client import ClientConnection

from bot.config import Settings
from bot.runtime import Runtime
from channels.webchat.limits import SERVER_BUSY, TOO_MANY, address_key
from storage.models import Conversation, ConversationStatus
from tests.channels.webchat.helpers import handled, new_session, open_socket
from tests.channels.webchat.test_adapter import mid
from tests.conftest import make_settings
from tests.server import serve

TIMEOUT = 10.0


def settings_with(db_url: str, **webchat: Any) -> Settings:
    settings = make_settings(db_url)
    for key, value in webchat.items():
        setattr(settings.webchat, key, value)
    return settings


async def opened(ws: ClientConnection) -> None:
    """The socket was accepted: its history frame arrives."""
    async with asyncio.timeout(TIMEOUT):
        assert json.loads(await ws.recv())["type"] == "history"


async def closed_with(ws: ClientConnection) -> tuple[int, list[dict[str, Any]]]:
    """The close code, and the frames before it (acks and replies must not be among them
    when a limit refuses)."""
    frames: list[dict[str, Any]] = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(TIMEOUT):
            while True:
                frames.append(json.loads(await ws.recv()))
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, frames


async def say(ws: ClientConnection, text: str) -> dict[str, Any]:
    """The ack of a message, or the error frame of a refusal."""
    await ws.send(json.dumps({"type": "message", "id": mid(), "text": text}))
    async with asyncio.timeout(TIMEOUT):
        while True:
            got: dict[str, Any] = json.loads(await ws.recv())
            if got["type"] in ("ack", "error"):
                return got


async def ask_for_a_person(ws: ClientConnection) -> dict[str, Any]:
    """Hello, then a person please (the conversation enters the agents' queue); the last
    ack, or the error frame of the first refusal."""
    got = await say(ws, "hallo")
    return got if got["type"] == "error" else await say(ws, "Mensch")


async def conversations(runtime: Runtime, *status: str) -> int:
    await handled(runtime)  # an ack: in the inbox; handled a moment later
    async with runtime.sessions() as s:
        q = select(func.count()).select_from(Conversation)
        if status:
            q = q.where(Conversation.status.in_(status))
        return int(await s.scalar(q) or 0)


# --- sockets -----------------------------------------------------------------------------


async def test_sockets_per_address_are_capped(db_url: str) -> None:
    """Regression: 800 sockets from one client were accepted. With the defaults
    (max_sockets_per_address 20) the 21st is closed with 4429, however many cookies the
    client fetched; another address is not affected, and a closed socket frees a place."""
    async with serve(make_settings(db_url)) as (base, _):
        sockets = [await open_socket(base) for _ in range(20)]
        try:
            for ws in sockets:
                await opened(ws)
            code, frames = await closed_with(await open_socket(base))
            assert code == TOO_MANY
            assert frames == [
                {
                    "type": "error",
                    "error": "too many open chats from this address",
                    "retry_after": 30,
                }
            ]
            other = await open_socket(base, forwarded_for="203.0.113.7")
            await opened(other)
            await other.close()
            await sockets.pop().close()
            await asyncio.sleep(0.2)  # the server notices the close
            sockets.append(await open_socket(base))
            await opened(sockets[-1])
        finally:
            for ws in sockets:
                await ws.close()


async def test_sockets_of_the_whole_server_are_capped(db_url: str) -> None:
    async with serve(settings_with(db_url, max_sockets=5)) as (base, _):
        sockets = [await open_socket(base, forwarded_for=f"198.51.100.{n}") for n in range(5)]
        try:
            for ws in sockets:
                await opened(ws)
            code, _ = await closed_with(await open_socket(base, forwarded_for="198.51.100.99"))
            assert code == SERVER_BUSY
        finally:
            for ws in sockets:
                await ws.close()


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(db_url: str) -> None:
    """A client cannot rotate its address by sending X-Forwarded-For itself: only a peer
    in server.trusted_proxies is believed (here: none on loopback)."""
    settings = settings_with(db_url, max_sockets_per_address=2)
    settings.server.trusted_proxies = ["10.0.0.1"]
    async with serve(settings) as (base, _):
        first = [await open_socket(base, forwarded_for=f"192.0.2.{n}") for n in (1, 2)]
        try:
            for ws in first:
                await opened(ws)
            code, _ = await closed_with(await open_socket(base, forwarded_for="192.0.2.3"))
            assert code == TOO_MANY
        finally:
            for ws in first:
                await ws.close()


# --- new conversations: the agents' queue cannot be flooded -----------------------------


async def test_new_conversations_per_address_cannot_flood_the_queue(db_url: str) -> None:
    """Regression: 200 fresh visitor ids queued 200 requests for a person in 2.6 s. With
    the defaults (conversations_per_address_hour 10) the 11th new visitor from one address
    is refused with 4429 and a retry_after, before anything is stored; another address
    still gets through."""
    async with serve(make_settings(db_url)) as (base, runtime):
        for n in range(10):
            ws = await open_socket(base)
            await opened(ws)
            assert (await ask_for_a_person(ws))["type"] == "ack", n
            await ws.close()
        flooder = await open_socket(base)
        await opened(flooder)
        refusal = await ask_for_a_person(flooder)
        assert refusal["error"] == "too many new conversations from this address"
        assert 60 <= refusal["retry_after"] <= 360  # one more every 6 minutes
        code, frames = await closed_with(flooder)
        assert code == TOO_MANY and frames == []
        assert await conversations(runtime) == 10
        assert await conversations(runtime, ConversationStatus.QUEUED) == 10
        other = await open_socket(base, forwarded_for="203.0.113.8")
        await opened(other)
        assert (await ask_for_a_person(other))["type"] == "ack"
        await other.close()
        assert await conversations(runtime) == 11


async def test_a_returning_visitor_is_not_a_new_conversation(db_url: str) -> None:
    """Only new conversations count: a visitor with an open one goes on chatting."""
    async with serve(settings_with(db_url, conversations_per_address_hour=1)) as (base, _):
        token = await new_session(base)
        ws = await open_socket(base, token)
        await opened(ws)
        assert (await ask_for_a_person(ws))["type"] == "ack"
        for _ in range(3):
            assert (await ask_for_a_person(ws))["type"] == "ack"
        await ws.close()
        again = await open_socket(base, token)
        await opened(again)
        assert (await ask_for_a_person(again))["type"] == "ack"
        await again.close()
        newcomer = await open_socket(base)
        await opened(newcomer)
        assert (await ask_for_a_person(newcomer))["type"] == "error"
        await newcomer.close()


async def test_new_conversations_of_the_whole_server_are_capped(db_url: str) -> None:
    settings = settings_with(db_url, conversations_per_minute=3)
    async with serve(settings) as (base, runtime):
        for n in range(3):
            ws = await open_socket(base, forwarded_for=f"198.51.100.{n}")
            await opened(ws)
            assert (await ask_for_a_person(ws))["type"] == "ack"
            await ws.close()
        ws = await open_socket(base, forwarded_for="198.51.100.50")
        await opened(ws)
        refusal = await ask_for_a_person(ws)
        assert refusal["type"] == "error" and 1 <= refusal["retry_after"] <= 20
        code, _ = await closed_with(ws)
        assert code == SERVER_BUSY
        assert await conversations(runtime) == 3


# --- addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.5", "203.0.113.5"),
        ("::ffff:203.0.113.5", "203.0.113.5"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # one subscriber's /64
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        (None, "unknown"),
    ],
)
def test_address_key(host: str | None, key: str) -> None:
    assert address_key(host) == key
