"""Telegram through aiogram 3: long polling (default) or webhook, into the inbox.

Inbound, both modes end in `host.accept` (persisted, deduped on
"{bot id}:{update_id}", partitioned by chat); the inbox worker parses the rows later with
`telegram_parse.UpdateParser` and hands them to the engine.

* Webhook (`POST /webhooks/telegram`): the secret header is checked in constant time
  before anything else (401), the body is bounded (413) and its nesting checked before
  any pydantic model sees it, the update is persisted, and only then is it answered 200;
  the engine never runs inside the request. If the database is down the answer is 503,
  so Telegram delivers again.
* Polling: getUpdates returns raw dicts (no model validation, so one update aiogram
  rejects cannot block the queue); the offset only moves past updates the inbox has
  committed, so a crash or a database outage means a redelivery, never a loss.

A button press is answered (answerCallbackQuery) and its keyboard removed as soon as
the press is persisted: that is ephemeral UI and does not go through the outbox. In
webhook mode the answer is the webhook's response itself (Telegram makes the call a 200's
JSON body names), one request fewer per press.

The token is in every Bot API URL: nothing here logs a URL, and every error text this
module logs or hands to the dispatcher passes through `redact`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramConflictError,
    TelegramRetryAfter,
    TelegramUnauthorizedError,
)
from aiogram.methods.base import TelegramMethod
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from bot.channel import ChannelAdapter, SendResult
from bot.channel.host import ChannelHost
from bot.channel.inbound import Unavailable
from bot.channel.messages import OutboundMessage
from bot.channel.sandbox import Sandbox
from bot.channel.webhooks import read_bounded
from channels.telegram.inbox import UpdateParser
from channels.telegram.parse import REJECTED_KEY, SHALLOW_KEY, nesting_exceeds, partition_key
from channels.telegram.raw import CHANNEL, PRIVATE, Bounds, prune
from channels.telegram.send import Sender
from channels.telegram.settings import TelegramSettings
from channels.telegram.transport import BotApi

log = logging.getLogger(__name__)
WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
UPDATE_ID_RE = re.compile(rb'"update_id"\s*:\s*(\d{1,19})')
KEPT_TEXT = 64 * 1024  # of an update too deeply nested to store as JSON
SHALLOW_DEPTH = 4  # ... and the levels of it kept as JSON: update, message, chat/from, ...
PARSE_MODULE = "channels.telegram.parse"  # imported once by the sandbox's forkserver


class _RawGetUpdates(TelegramMethod[list[dict[str, Any]]]):
    """getUpdates whose result stays raw dicts: validated later, one update at a time."""

    __returning__ = list[dict[str, Any]]
    __api_method__ = "getUpdates"

    offset: int | None = None
    limit: int | None = None
    timeout: int | None = None
    allowed_updates: list[str] | None = None


class TelegramChannel(ChannelAdapter):
    name = CHANNEL

    def __init__(self, host: ChannelHost, settings: TelegramSettings, token: str) -> None:
        super().__init__(host)
        self.settings = settings
        self._token = token
        self.bot_id = token.split(":", 1)[0]
        session = AiohttpSession(
            api=TelegramAPIServer.from_base(settings.api_base.rstrip("/")),
            timeout=settings.request_timeout,
        )
        self.bot = Bot(token, session=session)
        # the calls made per message: JSON through aiogram's session (transport.py)
        self.api = BotApi(self.bot, session)
        self.sender = Sender(self.api, settings, self.redact)
        # aiogram's models run in worker processes with a time budget (bot/channel/sandbox.py)
        self.sandbox = Sandbox(workers=settings.parse_workers, preload=[PARSE_MODULE])
        bounds = Bounds(
            max_depth=settings.max_depth,
            max_nodes=settings.max_nodes,
            max_rich_text_cost=settings.max_rich_text_cost,
        )
        self.parser = UpdateParser(bounds, self.sandbox, settings.parse_budget_seconds)
        host.register_parser(CHANNEL, self.parser)  # the inbox also paces a flooding chat
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
        self._secret = secret.encode()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._router: APIRouter | None = None
        if settings.mode == "webhook":
            self._router = APIRouter()
            self._router.add_route(
                WEBHOOK_PATH, self.webhook, methods=["POST"], include_in_schema=False
            )
            # the webhook checks its body limit exactly
            host.add_routes(self._router, max_body_bytes=settings.max_body_bytes)
        self.offset: int | None = None  # polling: the next update_id to ask for

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def router(self) -> APIRouter | None:
        return self._router

    async def start(self) -> None:
        self.sandbox.start()  # the forkserver imports in the background meanwhile
        if self.settings.mode == "polling":
            self._spawn(self._poll(), "telegram-polling")
            log.info("Telegram channel started in polling mode (bot id %s)", self.bot_id)
            return
        if self.settings.webhook_url:
            self._spawn(self._set_webhook(self.settings.webhook_url), "telegram-set-webhook")
            where = f"setWebhook to {self.settings.webhook_url}"
        else:
            where = "telegram.webhook_url not set, so the webhook is not registered by cicbot"
        log.info(
            "Telegram channel started in webhook mode (bot id %s): POST %s; %s",
            self.bot_id,
            WEBHOOK_PATH,
            where,
        )

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.bot.session.close()
        await self.sandbox.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def redact(self, text: str) -> str:
        text = text.replace(self._token, "<token>")
        secret = self._token.split(":", 1)[-1]
        return text.replace(secret, "<token>") if secret else text

    # ---- outbound ----------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        return await self.sender.send(message)

    # ---- inbound: both modes -----------------------------------------------------------

    async def accept(
        self, update: dict[str, Any], raw: bytes | None = None, *, answered: bool = False
    ) -> bool:
        """Persist one raw update (deduped on bot id + update_id); True if it was new.
        Raises when the database does: the caller must not acknowledge the update then.
        `answered`: the webhook's response answers a button press (`_callback_answer`)."""
        update_id = update["update_id"]
        if nesting_exceeds(update, self.settings.max_depth):
            text = raw if raw is not None else _dump(update)
            return await self._keep_rejected(update_id, text, prune(update, SHALLOW_DEPTH))
        new = await self.host.accept(
            CHANNEL, f"{self.bot_id}:{update_id}", partition_key(update), update
        )
        query = _answerable(update) if new else None
        if query is not None:
            self._spawn(self._acknowledge(query, answered), "telegram-callback-ack")
        return new

    async def _acknowledge(self, query: dict[str, Any], answered: bool) -> None:
        """Stop the client's spinner (unless the webhook's response did) and take the
        pressed keyboard away (best effort)."""
        if not answered:
            await self._best_effort(
                "answerCallbackQuery", lambda: self.api.answer_callback_query(query["id"])
            )
        message = query.get("message")
        if not isinstance(message, dict) or not message.get("reply_markup"):
            return
        if not message.get("date"):
            return  # an inaccessible (too old) message
        chat_id, message_id = (message.get("chat") or {}).get("id"), message.get("message_id")
        if isinstance(chat_id, int) and isinstance(message_id, int):
            await self._best_effort(
                "editMessageReplyMarkup",
                lambda: self.sender.call(
                    str(chat_id), lambda: self.api.remove_reply_markup(chat_id, message_id)
                ),
            )

    async def _best_effort(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except TelegramBadRequest as exc:  # too old, already answered, not modified
            log.debug("telegram %s: %s", what, self.redact(str(exc)))
        except Exception as exc:
            log.warning("telegram %s failed: %s", what, self.redact(f"{type(exc).__name__}: {exc}"))

    # ---- inbound: webhook --------------------------------------------------------------

    async def webhook(self, request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER)
        if (
            not self._secret
            or given is None
            or not hmac.compare_digest(given.encode("latin-1"), self._secret)
        ):
            return Response(status_code=401)
        body = await read_bounded(request, self.settings.max_body_bytes)
        if isinstance(body, Response):
            return body
        try:
            update = json.loads(body)
        except RecursionError:  # nested deeper than the JSON decoder goes: keep it as text
            m = UPDATE_ID_RE.search(body)
            if m is None:
                return Response(status_code=400)
            return await self._persisted(self._keep_rejected(int(m.group(1)), body))
        except ValueError:
            return Response(status_code=400)
        if not isinstance(update, dict) or type(update.get("update_id")) is not int:
            return Response(status_code=400)
        answer = _callback_answer(update)
        return await self._persisted(self.accept(update, body, answered=answer is not None), answer)

    async def _persisted(
        self, accepting: Awaitable[bool], answer: dict[str, Any] | None = None
    ) -> Response:
        """200 once the update is persisted, carrying `answer` if the update was new
        (Telegram makes the call a webhook's response names: one request fewer per press,
        and the spinner stops as soon as the press is stored; its result is not reported,
        as the answer's was ignored anyway); 503 if it was not persisted."""
        try:
            new = await accepting
        except Exception as exc:  # not persisted: Telegram delivers it again
            if isinstance(exc, Unavailable):  # expected while the database is away
                log.warning("telegram webhook: update not persisted, %s", exc)
            else:
                log.exception("telegram webhook: could not persist the update")
            return Response(status_code=503, headers={"Retry-After": "5"})
        if new and answer is not None:
            return JSONResponse(answer)
        return Response(status_code=200)

    async def _keep_rejected(
        self, update_id: int, raw: bytes | str, shallow: dict[str, Any] | None = None
    ) -> bool:
        """Store an update too deep to store as JSON: its text, and its first levels (what
        the tolerant reader needs to answer the customer) when it could be decoded."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        payload: dict[str, Any] = {
            "update_id": update_id,
            REJECTED_KEY: "update nested deeper than "
            f"{self.settings.max_depth} levels; its raw text is kept",
            "raw_text": text[:KEPT_TEXT],
        }
        if shallow is not None:
            payload[SHALLOW_KEY] = shallow
        key = partition_key(shallow) if shallow is not None else "-"
        return await self.host.accept(CHANNEL, f"{self.bot_id}:{update_id}", key, payload)

    async def _set_webhook(self, url: str) -> None:
        secret = self._secret.decode() or None
        await self._retrying(
            "setWebhook",
            lambda: self.bot.set_webhook(
                url, secret_token=secret, allowed_updates=[], drop_pending_updates=False
            ),
        )
        log.info("Telegram webhook set to %s", url)

    # ---- inbound: polling --------------------------------------------------------------

    async def _poll(self) -> None:
        await self._retrying(
            "deleteWebhook", lambda: self.bot.delete_webhook(drop_pending_updates=False)
        )
        timeout = self.settings.polling_timeout
        failures = 0
        while True:
            try:
                params: dict[str, Any] = {"timeout": timeout, "allowed_updates": []}
                if self.offset is not None:
                    params["offset"] = self.offset
                updates: list[dict[str, Any]] = await self.api.call(
                    _RawGetUpdates, params, timeout + 15, _update_list
                )  # the long poll plus slack
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                await self._pause("getUpdates", exc, failures)
                continue
            try:
                for update in updates:
                    if type(update.get("update_id")) is not int:
                        log.warning("telegram: update without update_id skipped")
                        continue
                    await self.accept(update)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # the offset stays: the same updates come again and are deduped
                failures += 1
                await self._pause("persisting updates", exc, failures)
                continue
            ids = [u["update_id"] for u in updates if type(u.get("update_id")) is int]
            if ids:
                self.offset = max(ids) + 1

    async def _retrying(self, what: str, call: Callable[[], Awaitable[Any]]) -> None:
        failures = 0
        while True:
            try:
                await call()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                await self._pause(what, exc, failures)

    async def _pause(self, what: str, exc: BaseException, failures: int) -> None:
        if isinstance(exc, TelegramRetryAfter):
            delay = float(exc.retry_after)
        elif isinstance(exc, TelegramUnauthorizedError):
            delay = 60.0
        elif isinstance(exc, TelegramConflictError):
            delay = 5.0  # another poller, or a webhook is set
        else:
            delay = min(30.0, 0.5 * 2 ** min(failures - 1, 6)) * random.uniform(0.8, 1.2)
        level = logging.ERROR if isinstance(exc, TelegramUnauthorizedError) else logging.WARNING
        log.log(
            level,
            "telegram %s failed (%s); again in %.1fs",
            what,
            self.redact(f"{type(exc).__name__}: {exc}"),
            delay,
        )
        await asyncio.sleep(delay)


def _update_list(result: Any) -> bool:
    return type(result) is list and all(type(u) is dict for u in result)


def _dump(update: dict[str, Any]) -> str:
    with contextlib.suppress(ValueError, RecursionError):
        return json.dumps(update, ensure_ascii=False)
    return ""


def create(host: ChannelHost) -> TelegramChannel | None:
    settings = host.settings_of(CHANNEL, TelegramSettings)
    if settings.token is None or not settings.token.get_secret_value():
        return None
    return TelegramChannel(host, settings, settings.token.get_secret_value())


def _answerable(update: dict[str, Any]) -> dict[str, Any] | None:
    """The callback query of a button pressed in a private chat; None otherwise (a
    group's button is recorded, never answered)."""
    query = update.get("callback_query")
    if not isinstance(query, dict) or not isinstance(query.get("id"), str):
        return None
    message = query.get("message")
    chat = message.get("chat") if isinstance(message, dict) else None
    if isinstance(chat, dict) and chat.get("type") != PRIVATE:
        return None
    return query


def _callback_answer(update: dict[str, Any]) -> dict[str, Any] | None:
    """The answerCallbackQuery a webhook's response carries for a pressed button."""
    query = _answerable(update)
    if query is None:
        return None
    return {"method": "answerCallbackQuery", "callback_query_id": query["id"]}
