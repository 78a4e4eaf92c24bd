"""The webhook channel end to end: the real app under uvicorn on 127.0.0.1, signed POSTs
in over real HTTP, and the replies POSTed to a real HTTP receiver (aiohttp.web on
127.0.0.1) standing in for the shop; on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import func, select

from bot.runtime import Runtime
from channels.webhook.parse import SIGNATURE_HEADER, TIMESTAMP_HEADER, headers, verified
from channels.webhook.settings import WebhookSettings
from storage.models import Direction, InboxUpdate, OutboxMessage, OutboxStatus, Touchpoint
from tests.conftest import make_settings
from tests.server import free_port, serve

SECRET = "0123456789abcdef" * 4
TIMEOUT = 10.0


@dataclass
class Shop:
    """The receiving end of the replies: checks each signature, answers as told."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    idempotency: list[str] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # the next answers' statuses, then 200
    refused: int = 0  # requests with a bad signature

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        ok = verified(
            SECRET.encode(),
            raw,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            time.time(),
            300,
        )
        if not ok:
            self.refused += 1
            return web.Response(status=401)
        status = self.answers.pop(0) if self.answers else 200
        if status == 200:
            self.received.append(json.loads(raw))
            self.idempotency.append(request.headers["Idempotency-Key"])
        return web.Response(status=status, headers={"Retry-After": "0"})

    async def wait_for(self, n: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(TIMEOUT):
            while len(self.received) < n:
                await asyncio.sleep(0.02)
        return self.received


@pytest.fixture
async def shop() -> AsyncIterator[Shop]:
    s = Shop()
    app = web.Application()
    app.router.add_post("/bot", s.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    s.url = f"http://127.0.0.1:{port}/bot"
    yield s
    await runner.cleanup()


@pytest.fixture
async def server(db_url: str, shop: Shop) -> AsyncIterator[tuple[str, Runtime]]:
    settings = make_settings(
        db_url,
        webhook=WebhookSettings(secret=SECRET, outbound_url=shop.url),  # type: ignore[arg-type]
    )
    async with serve(settings) as (base, runtime):
        yield base, runtime


def message(text: str = "hallo", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "sender": {"id": "customer-42", "name": "Anna", "locale": "de"},
        "text": text,
    }
    data.update(fields)
    return data


async def post(
    base: str, data: dict[str, Any] | bytes, *, secret: str = SECRET, at: float | None = None
) -> httpx.Response:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    signed = headers(secret.encode(), int(at or time.time()), raw)
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
        return await http.post("/webhooks/json", content=raw, headers=signed)


async def count(runtime: Runtime, model: Any, *where: Any) -> int:
    async with runtime.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def test_a_message_in_and_the_signed_reply_out(
    server: tuple[str, Runtime], shop: Shop
) -> None:
    base, runtime = server
    sent = message(thread="order-1001")
    answer = await post(base, sent)
    assert answer.status_code == 200
    assert answer.json() == {"accepted": True, "duplicate": False}
    [reply] = await shop.wait_for(1)
    assert reply["recipient"] == "customer-42" and reply["thread"] == "order-1001"
    assert reply["text"].startswith("Hallo") and reply["locale"] == "de"
    # the main menu, as buttons to render (the built-in entries first, then the flows')
    assert len(reply["choices"]) >= 5 and reply["choices"][1]["payload"] == "c:complaint"
    assert shop.idempotency == [f"cicbot-{reply['id']}"]
    # pressing a choice: its payload comes back
    complaint = reply["choices"][1]
    assert (await post(base, message(text="", payload=complaint["payload"]))).status_code == 200
    replies = await shop.wait_for(2)
    assert "Beschwerde" in replies[1]["text"]
    inbound = await count(runtime, Touchpoint, Touchpoint.direction == Direction.IN)
    assert inbound == 2
    assert shop.refused == 0


async def test_the_same_message_id_twice_is_handled_once(
    server: tuple[str, Runtime], shop: Shop
) -> None:
    base, runtime = server
    sent = message()
    assert (await post(base, sent)).json() == {"accepted": True, "duplicate": False}
    assert (await post(base, sent)).json() == {"accepted": True, "duplicate": True}
    await shop.wait_for(1)
    await asyncio.sleep(0.5)  # nothing more comes
    assert len(shop.received) == 1
    assert await count(runtime, InboxUpdate) == 1
    assert await count(runtime, Touchpoint, Touchpoint.direction == Direction.IN) == 1


@pytest.mark.parametrize(
    "how", ["another secret", "no signature", "an hour old", "body changed after signing"]
)
async def test_unsigned_or_forged_requests_are_refused_and_nothing_is_kept(
    server: tuple[str, Runtime], how: str
) -> None:
    base, runtime = server
    raw = json.dumps(message()).encode()
    if how == "another secret":
        answer = await post(base, raw, secret="f" * 64)
    elif how == "an hour old":
        answer = await post(base, raw, at=time.time() - 3600)
    else:
        signed = headers(SECRET.encode(), int(time.time()), raw)
        if how == "no signature":
            del signed[SIGNATURE_HEADER]
        async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:
            answer = await http.post("/webhooks/json", content=raw + b" ", headers=signed)
    assert answer.status_code == 401
    assert await count(runtime, InboxUpdate) == 0


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"not json", 400),
        (json.dumps({"id": "m-1", "text": "hallo"}).encode(), 400),
        (json.dumps({"id": "m-1", "sender": {"id": "c"}, "text": 5}).encode(), 400),
        (json.dumps(message(text="x" * 70_000)).encode(), 413),
    ],
)
async def test_bad_bodies_get_a_clean_4xx(
    server: tuple[str, Runtime], data: bytes, status: int
) -> None:
    base, runtime = server
    answer = await post(base, data)
    assert answer.status_code == status
    if status == 400:
        assert answer.json()["error"]
    assert await count(runtime, InboxUpdate) == 0


async def test_a_receiver_that_is_down_gets_the_reply_later_once(
    server: tuple[str, Runtime], shop: Shop
) -> None:
    base, runtime = server
    shop.answers = [503, 429]  # down, then busy, then up
    assert (await post(base, message())).status_code == 200
    [reply] = await shop.wait_for(1)
    assert reply["text"].startswith("Hallo")
    async with asyncio.timeout(TIMEOUT):
        while await count(runtime, OutboxMessage, OutboxMessage.status == OutboxStatus.SENT) < 1:
            await asyncio.sleep(0.02)
    async with runtime.sessions() as s:
        row = (await s.execute(select(OutboxMessage))).scalar_one()
    assert row.attempts == 3 and row.status == OutboxStatus.SENT


async def test_a_receiver_refusing_the_reply_fails_it_for_good(
    server: tuple[str, Runtime], shop: Shop
) -> None:
    base, runtime = server
    shop.answers = [400]
    assert (await post(base, message())).status_code == 200
    async with asyncio.timeout(TIMEOUT):
        while await count(runtime, OutboxMessage, OutboxMessage.status == OutboxStatus.FAILED) < 1:
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    assert shop.received == []  # not tried again
