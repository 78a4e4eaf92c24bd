"""The thin Bot API transport (channels/telegram/transport.py) over real HTTP: the Bot API
stand-in, or a recording server on 127.0.0.1 where the exact bytes matter.

* every failure raises what aiogram's own client raises for the same answer (same class,
  same text, same retry_after / migrate_to_chat_id), so `to_send_error` maps it as before:
  429 → transient with retry_after, 403 and "gone" 400s and migrations → permanent, other
  400s, 401, 5xx, an HTML page, a timeout, a refused connection → transient;
* the request is one JSON body of the Bot API's own shape;
* Sender on top of it: a long text in parts with the keyboard on the last, a keyboard's
  buttons and hashed callback_data."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramMigrateToChat,
    TelegramRetryAfter,
)
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup
from aiohttp import web

from bot.channel import PermanentSendError, SendError, TransientSendError
from bot.channel.messages import Choice, OutboundMessage
from channels.telegram.send import Sender, callback_data, to_send_error, utf16_len
from channels.telegram.settings import TelegramSettings
from channels.telegram.transport import BotApi
from tests.channels.telegram.helpers import free_port
from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn

CHAT = 5_550_001
TIMEOUT = 1.0
MIGRATED = json.dumps(
    {
        "ok": False,
        "error_code": 400,
        "description": "Bad Request: group chat was upgraded to a supergroup chat",
        "parameters": {"migrate_to_chat_id": -1001234567890},
    }
)


def make(base_url: str) -> tuple[Bot, BotApi]:
    session = AiohttpSession(api=TelegramAPIServer.from_base(base_url), timeout=TIMEOUT)
    bot = Bot(DEFAULT_TOKEN, session=session)
    return bot, BotApi(bot, session)


@pytest.fixture
async def api(tg: TelegramStandIn) -> AsyncIterator[tuple[Bot, BotApi]]:
    bot, api = make(tg.base_url)
    try:
        yield bot, api
    finally:
        await bot.session.close()


def sender(api: BotApi) -> Sender:
    settings = TelegramSettings(chat_rate_per_second=50.0, chat_burst=10, request_timeout=TIMEOUT)
    return Sender(api, settings, lambda text: text.replace(DEFAULT_TOKEN, "<token>"))


async def raised(call: Callable[[], Awaitable[Any]]) -> Exception:
    with pytest.raises(Exception) as err:  # compared by the caller: class and text
        await call()
    assert isinstance(err.value, Exception)
    return err.value


def same(ours: Exception, theirs: Exception) -> None:
    assert type(ours) is type(theirs)
    assert str(ours) == str(theirs)
    for name in ("retry_after", "migrate_to_chat_id"):
        assert getattr(ours, name, None) == getattr(theirs, name, None)


# each fault twice: once for aiogram's own client, once for the transport
FAULTS: dict[str, Callable[[TelegramStandIn], None]] = {
    "429": lambda tg: tg.fail_next("sendMessage", 429, times=2, retry_after=7),
    "403 blocked": lambda tg: tg.block_chat(CHAT),
    "400 gone": lambda tg: tg.fail_next(
        "sendMessage", 400, times=2, description="Bad Request: chat not found"
    ),
    "400 other": lambda tg: tg.fail_next(
        "sendMessage", 400, times=2, description="Bad Request: can't parse entities"
    ),
    "400 migrate": lambda tg: tg.fail_next("sendMessage", 400, times=2, raw=MIGRATED),
    "401": lambda tg: tg.fail_next("sendMessage", 401, times=2, description="Unauthorized"),
    "500": lambda tg: tg.fail_next("sendMessage", 500, times=2),
    "502 html page": lambda tg: tg.fail_next(
        "sendMessage", 502, times=2, raw="<html>502 Bad Gateway</html>"
    ),
    "200 not json": lambda tg: tg.fail_next("sendMessage", 200, times=2, raw="<html>hi</html>"),
    "200 not a message": lambda tg: tg.fail_next(
        "sendMessage", 200, times=2, raw='{"ok": true, "result": {"message_id": 3}}'
    ),
    "timeout": lambda tg: tg.stall("sendMessage", 3 * TIMEOUT, times=2),
}
KINDS = {
    "429": (TransientSendError, 7.0),
    "403 blocked": (PermanentSendError, None),
    "400 gone": (PermanentSendError, None),
    "400 other": (TransientSendError, None),
    "400 migrate": (PermanentSendError, None),
    "401": (TransientSendError, None),
    "500": (TransientSendError, None),
    "502 html page": (TransientSendError, None),
    "200 not json": (TransientSendError, None),
    "200 not a message": (TransientSendError, None),
    "timeout": (TransientSendError, None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_every_failure_maps_as_aiogram_maps_it(
    fault: str, tg: TelegramStandIn, api: tuple[Bot, BotApi]
) -> None:
    bot, thin = api
    FAULTS[fault](tg)
    theirs = await raised(
        lambda: bot.send_message(CHAT, "hello", parse_mode=None, request_timeout=int(TIMEOUT))
    )
    ours = await raised(lambda: thin.send_message(CHAT, "hello", timeout=TIMEOUT))
    same(ours, theirs)
    if fault == "429":
        assert isinstance(ours, TelegramRetryAfter) and ours.retry_after == 7
    if fault == "400 migrate":
        assert isinstance(ours, TelegramMigrateToChat)
        assert ours.migrate_to_chat_id == -1001234567890
    if fault.startswith("200"):
        assert isinstance(ours, ClientDecodeError)
    # and what the dispatcher gets from the sender
    FAULTS[fault](tg)
    kind, retry_after = KINDS[fault]
    error = await raised(
        lambda: sender(thin).send(OutboundMessage("telegram", str(CHAT), str(CHAT), "x"))
    )
    assert isinstance(error, SendError) and type(error) is kind
    assert getattr(error, "retry_after", None) == retry_after
    assert DEFAULT_TOKEN.split(":")[1] not in str(error)
    assert tg.sent_messages() == []  # none of them went through


async def test_a_refused_connection_is_aiogram_s_network_error() -> None:
    bot, thin = make(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    try:
        theirs = await raised(lambda: bot.send_message(CHAT, "hello"))
        ours = await raised(lambda: thin.send_message(CHAT, "hello"))
        same(ours, theirs)
        error = to_send_error(ours, str)
        assert isinstance(error, TransientSendError) and error.retry_after is None
    finally:
        await bot.session.close()


async def test_answers_the_bot_api_reads_as_aiogram_does(
    tg: TelegramStandIn, api: tuple[Bot, BotApi]
) -> None:
    """The same calls through aiogram and through the transport leave the same state."""
    bot, thin = api
    markup = {"inline_keyboard": [[{"text": "Yes", "callback_data": "f:yes"}]]}
    theirs = await bot.send_message(
        CHAT,
        "Sure? 😀",
        reply_markup=InlineKeyboardMarkup(
            inline_keyboard=[[InlineKeyboardButton(text="Yes", callback_data="f:yes")]]
        ),
    )
    ours = await thin.send_message(CHAT, "Sure? 😀", markup)
    assert ours["message_id"] == theirs.message_id + 1 and ours["chat"]["id"] == CHAT
    a, b = tg.sent_messages(CHAT)
    assert a == b == {"chat_id": CHAT, "text": "Sure? 😀", "reply_markup": markup}
    await thin.remove_reply_markup(CHAT, ours["message_id"])
    await thin.answer_callback_query("4387162094551000001")
    assert tg.calls_to("editMessageReplyMarkup") == [
        {"chat_id": CHAT, "message_id": ours["message_id"]}
    ]
    assert tg.calls_to("answerCallbackQuery") == [{"callback_query_id": "4387162094551000001"}]
    [_, edited] = tg.bot_messages(CHAT)
    assert "reply_markup" not in edited
    # editing it again: the stand-in's "message is not modified", as aiogram would read it
    with pytest.raises(TelegramBadRequest, match="not modified"):
        await thin.remove_reply_markup(CHAT, ours["message_id"])


class Recorder:
    """A Bot API that records the raw requests and answers with a sent Message."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.match_info["method"], request.content_type, body))
        message = {"message_id": 1, "date": 0, "chat": {"id": CHAT, "type": "private"}}
        return web.json_response({"ok": True, "result": message})

    async def __aenter__(self) -> Recorder:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_one_json_body_of_the_bot_api_shape() -> None:
    async with Recorder() as server:
        bot, thin = make(server.base_url)
        try:
            text = "Quote: <b>not markup</b> *nor this* 😀 ünïcödé"
            choices = (Choice("f:complaint:yes", "Yes"), Choice("x" * 80, "A long one"))
            await sender(thin).send(
                OutboundMessage("telegram", str(CHAT), str(CHAT), text, choices)
            )
        finally:
            await bot.session.close()
    [(method, content_type, body)] = server.requests
    assert (method, content_type) == ("sendMessage", "application/json")
    assert body.isascii()  # escaped: a lone surrogate could not fail to encode either
    assert json.loads(body) == {
        "chat_id": CHAT,
        "text": text,
        "reply_markup": {
            "inline_keyboard": [
                [{"text": "Yes", "callback_data": "f:complaint:yes"}],
                [{"text": "A long one", "callback_data": callback_data("x" * 80)}],
            ]
        },
    }  # plain text: no parse_mode, nothing else


async def test_a_long_text_in_parts_the_keyboard_on_the_last(
    tg: TelegramStandIn, api: tuple[Bot, BotApi]
) -> None:
    _, thin = api
    paragraph = "A paragraph of a long answer, with an emoji 😀 and some more words. " * 20
    text = "\n\n".join([paragraph.strip()] * 8)
    choices = (Choice("f:complaint:confirm:yes", "Yes"), Choice("f:complaint:confirm:no", "No"))
    message = OutboundMessage("telegram", str(CHAT), str(CHAT), text, choices, outbox_id=1)
    result = await sender(thin).send(message)
    sent = tg.sent_messages(CHAT)
    assert len(sent) > 1 and all(utf16_len(p["text"]) <= 4096 for p in sent)
    assert "\n\n".join(p["text"] for p in sent) == text  # cut at paragraph ends, nothing lost
    assert [bool(p.get("reply_markup")) for p in sent] == [False] * (len(sent) - 1) + [True]
    assert sent[-1]["reply_markup"] == {
        "inline_keyboard": [
            [{"text": "Yes", "callback_data": "f:complaint:confirm:yes"}],
            [{"text": "No", "callback_data": "f:complaint:confirm:no"}],
        ]
    }
    assert result.platform_message_id == f"{CHAT}:{len(sent)}"
    [*_, last] = tg.bot_messages(CHAT)
    assert last["reply_markup"] == sent[-1]["reply_markup"]  # the keyboard the user sees
