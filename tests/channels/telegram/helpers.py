"""Helpers for the Telegram channel tests: settings pointing at the stand-in, the real app
under a real uvicorn on 127.0.0.1, webhook POSTs, and a customer driving the stand-in."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from sqlalchemy import select

from bot.config import Settings
from bot.runtime import Runtime
from bot.web.app import create_app
from channels.telegram.adapter import SECRET_HEADER, WEBHOOK_PATH, TelegramChannel
from channels.telegram.settings import TelegramSettings
from storage.models import InboxUpdate
from tests.conftest import make_settings
from tests.conftest import settled as idle
from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn

TOKEN = DEFAULT_TOKEN
SECRET = "test-webhook-secret_0123456789"
CASE_REF = re.compile(r"C-\d{4}-\d{6}")
Deliver = Callable[[dict[str, Any]], Awaitable[None]]


def tg_settings(
    db_url: str, tg: TelegramStandIn, mode: str = "polling", **telegram: Any
) -> Settings:
    """Test settings with Telegram on, pointed at the stand-in. Per-chat shaping is
    loosened so that conversations are not paced at 1 message/s (the shaping tests set
    their own limits)."""
    options: dict[str, Any] = {
        "token": TOKEN,
        "webhook_secret": SECRET,
        "mode": mode,
        "api_base": tg.base_url,
        "polling_timeout": 5,
        "request_timeout": 5,
        "chat_rate_per_second": 50.0,
        "chat_burst": 10,
    }
    options.update(telegram)
    return make_settings(db_url, telegram=TelegramSettings(**options))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[str, Runtime]]:
    """The application (runtime, dispatcher, inbox, Telegram channel) under uvicorn."""
    runtime = Runtime(settings, channels=["telegram"])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime), host="127.0.0.1", port=port, lifespan="on", log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(15):
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError("uvicorn exited during start-up")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", runtime
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(15):
                await task
        except TimeoutError:
            task.cancel()


def channel(runtime: Runtime) -> TelegramChannel:
    ch = runtime.channels["telegram"]
    assert isinstance(ch, TelegramChannel)
    return ch


async def post(
    client: httpx.AsyncClient, base: str, update: Any, *, secret: str | None = SECRET, **kw: Any
) -> httpx.Response:
    headers = {SECRET_HEADER: secret} if secret is not None else {}
    if isinstance(update, bytes | str):
        return await client.post(base + WEBHOOK_PATH, content=update, headers=headers, **kw)
    return await client.post(base + WEBHOOK_PATH, json=update, headers=headers, **kw)


def webhook_deliver(client: httpx.AsyncClient, base: str, tg: TelegramStandIn) -> Deliver:
    """Telegram's webhook delivery: POST, and the call the response may name."""

    async def deliver(update: dict[str, Any]) -> None:
        response = await post(client, base, update)
        assert response.status_code == 200, response.text
        await tg.webhook_replied(response.status_code, response.content)

    return deliver


async def polling_deliver(update: dict[str, Any]) -> None:
    """In polling mode the stand-in already queued the update for getUpdates."""


def buttons(message: dict[str, Any]) -> list[str]:
    markup = message.get("reply_markup") or {}
    return [b.get("callback_data", "") for row in markup.get("inline_keyboard", []) for b in row]


class Customer:
    """A Telegram user talking to the bot through the stand-in."""

    def __init__(
        self, tg: TelegramStandIn, deliver: Deliver, user_id: int, language_code: str = "en"
    ) -> None:
        self.tg, self.deliver, self.id, self.lang = tg, deliver, user_id, language_code

    def texts(self) -> list[str]:
        return [str(p["text"]) for p in self.tg.sent_messages(self.id)]

    async def say(self, text: str) -> dict[str, Any]:
        update = self.tg.push_text(self.id, text, language_code=self.lang)
        await self.deliver(update)
        return update

    async def press(self, data: str) -> dict[str, Any]:
        """Press the button with callback_data `data` on the bot's latest message."""

        def offered() -> dict[str, Any] | None:
            messages = self.tg.bot_messages(self.id)
            return messages[-1] if messages and data in buttons(messages[-1]) else None

        message = await self.tg.wait_for(offered)
        update = self.tg.push_callback(self.id, data, message=message, language_code=self.lang)
        await self.deliver(update)
        return update

    async def wait_text(self, pattern: str | re.Pattern[str], timeout: float = 10) -> str:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def latest() -> str:
            return next((t for t in reversed(self.texts()) if regex.search(t)), "")

        return await self.tg.wait_for(latest, timeout)


async def inbox_rows(runtime: Runtime) -> list[InboxUpdate]:
    async with runtime.sessions() as s:
        q = select(InboxUpdate).where(InboxUpdate.channel == "telegram").order_by(InboxUpdate.id)
        return list((await s.execute(q)).scalars())


async def settled(runtime: Runtime, tg: TelegramStandIn, timeout: float = 10) -> None:
    """Wait until every inbox row is processed and the outbox has nothing left to send."""
    async with asyncio.timeout(timeout):
        if runtime.settings.telegram.mode == "polling":  # fetched and committed first
            await tg.wait_for(lambda: not tg.pending_updates, timeout)
        await idle(runtime, timeout)
