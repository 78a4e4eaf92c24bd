"""The Telegram stand-in, driven by the real aiogram Bot over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiogram import Bot, Dispatcher
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramForbiddenError,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
    TelegramUnauthorizedError,
)
from aiogram.types import (
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    Message,
    ReplyKeyboardMarkup,
    Update,
)
from aiogram.types.update import UpdateTypeLookupError

from tests.timed import TIMED

from .telegram_api import DEFAULT_TOKEN, FIXTURES_DIR, TelegramStandIn, load_fixture

CHAT = 391047582
MENU = InlineKeyboardMarkup(
    inline_keyboard=[[InlineKeyboardButton(text="Talk to an agent", callback_data="menu:agent")]]
)


@pytest.fixture
async def bot(tg: TelegramStandIn) -> AsyncIterator[Bot]:
    bot = tg.make_bot()
    yield bot
    await bot.session.close()


async def test_get_me(bot: Bot, tg: TelegramStandIn) -> None:
    me = await bot.get_me()
    assert me.is_bot and me.id == bot.id == 7012345678
    assert me.username == "cic_service_bot"
    assert tg.calls[0].method == "getMe"


async def test_send_message_is_recorded_with_decoded_params(bot: Bot, tg: TelegramStandIn) -> None:
    first = await bot.send_message(CHAT, "Hello", reply_markup=MENU)
    second = await bot.send_message(CHAT, "42")  # numeric text must stay a str
    assert isinstance(first, Message)
    assert (first.message_id, second.message_id) == (1, 2)
    assert first.chat.id == CHAT and first.from_user and first.from_user.id == bot.id
    assert first.reply_markup and first.reply_markup.model_dump() == MENU.model_dump()
    sent = tg.sent_messages(CHAT)
    assert sent[0]["chat_id"] == CHAT
    assert sent[0]["reply_markup"] == {
        "inline_keyboard": [[{"text": "Talk to an agent", "callback_data": "menu:agent"}]]
    }
    assert sent[1]["text"] == "42"
    assert tg.sent_messages(CHAT + 1) == []


async def test_reply_keyboard_is_not_echoed(bot: Bot, tg: TelegramStandIn) -> None:
    keyboard = ReplyKeyboardMarkup(keyboard=[[KeyboardButton(text="Share phone")]])
    message = await bot.send_message(CHAT, "Your number?", reply_markup=keyboard)
    assert message.reply_markup is None  # Telegram only echoes inline keyboards
    assert tg.sent_messages()[0]["reply_markup"]["keyboard"] == [[{"text": "Share phone"}]]


async def test_edit_message(bot: Bot, tg: TelegramStandIn) -> None:
    sent = await bot.send_message(CHAT, "Pick one", reply_markup=MENU)
    edited = await bot.edit_message_text(
        "Connecting you…", chat_id=CHAT, message_id=sent.message_id
    )
    assert isinstance(edited, Message) and edited.text == "Connecting you…"
    assert edited.reply_markup is None and edited.edit_date is not None
    with pytest.raises(TelegramBadRequest, match="not modified"):
        await bot.edit_message_text("Connecting you…", chat_id=CHAT, message_id=sent.message_id)
    with pytest.raises(TelegramBadRequest, match="not found"):
        await bot.edit_message_reply_markup(chat_id=CHAT, message_id=999, reply_markup=MENU)


async def test_other_methods(bot: Bot, tg: TelegramStandIn) -> None:
    assert await bot.answer_callback_query("1687362541938475521", text="Done")
    assert await bot.send_chat_action(CHAT, "typing")
    assert await bot.set_my_commands([BotCommand(command="start", description="Start")])
    assert tg.commands[("default", "")] == [{"command": "start", "description": "Start"}]
    assert await bot.set_webhook("https://bot.example.com/tg", secret_token="s3cret")
    assert (await bot.get_webhook_info()).url == "https://bot.example.com/tg"
    with pytest.raises(TelegramConflictError):
        await bot.get_updates()
    assert await bot.delete_webhook(drop_pending_updates=True)
    assert (await bot.get_webhook_info()).url == ""
    assert tg.calls_to("answerCallbackQuery") == [
        {"callback_query_id": "1687362541938475521", "text": "Done"}
    ]


async def test_long_poll_returns_pushed_update_and_offset_confirms(
    bot: Bot, tg: TelegramStandIn
) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await asyncio.sleep(0.2)
    assert not poll.done()  # really waiting
    started = time.monotonic()
    pushed = tg.push_update(load_fixture("text"))
    updates = await asyncio.wait_for(poll, 2)
    assert time.monotonic() - started < 1  # answered as soon as the update was queued
    assert [u.update_id for u in updates] == [pushed["update_id"]]
    assert updates[0].message and updates[0].message.text == pushed["message"]["text"]
    # not confirmed yet: delivered again
    assert len(await bot.get_updates(timeout=0)) == 1
    assert await bot.get_updates(offset=pushed["update_id"] + 1, timeout=0) == []
    assert tg.pending_updates == []


async def test_long_poll_times_out_empty(bot: Bot, tg: TelegramStandIn) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == []
    assert 0.9 < time.monotonic() - started < 2


async def test_push_update_ids_and_limit(bot: Bot, tg: TelegramStandIn) -> None:
    a = tg.push_update(load_fixture("text"))
    b = tg.push_update(load_fixture("text"))  # same fixture twice: renumbered, not lost
    c = tg.push_text(CHAT, "/help")
    assert a["update_id"] < b["update_id"] < c["update_id"]
    assert [u.update_id for u in await bot.get_updates(limit=2)] == [a["update_id"], b["update_id"]]
    updates = await bot.get_updates(offset=b["update_id"] + 1)
    assert updates[0].message and updates[0].message.text == "/help"


async def test_allowed_updates_filter(bot: Bot, tg: TelegramStandIn) -> None:
    tg.push_update(load_fixture("my_chat_member_blocked"))
    text = tg.push_update(load_fixture("text"))
    updates = await bot.get_updates(allowed_updates=["message"])
    assert [u.update_id for u in updates] == [text["update_id"]]


async def test_retry_after(bot: Bot, tg: TelegramStandIn) -> None:
    tg.fail_next("sendMessage", 429, retry_after=7)
    with pytest.raises(TelegramRetryAfter) as err:
        await bot.send_message(CHAT, "Hi")
    assert err.value.retry_after == 7
    await bot.send_message(CHAT, "Hi")  # only the next call failed
    assert len(tg.sent_messages()) == 1
    assert [(f.method, f.status) for f in tg.failed_calls] == [("sendMessage", 429)]


async def test_forbidden(bot: Bot, tg: TelegramStandIn) -> None:
    tg.fail_next("sendMessage", 403)
    with pytest.raises(TelegramForbiddenError, match="blocked by the user"):
        await bot.send_message(CHAT, "Hi")
    tg.block_chat(CHAT)
    for _ in range(2):  # deterministic, not queued
        with pytest.raises(TelegramForbiddenError):
            await bot.send_message(CHAT, "Hi")
    await bot.send_message(CHAT + 1, "Hi")
    assert tg.sent_messages(CHAT) == [] and len(tg.failed_calls) == 3


@pytest.mark.parametrize("status", [500, 502])
async def test_server_errors(bot: Bot, tg: TelegramStandIn, status: int) -> None:
    tg.fail_next("sendMessage", status)
    with pytest.raises(TelegramServerError):
        await bot.send_message(CHAT, "Hi")


async def test_other_errors(bot: Bot, tg: TelegramStandIn) -> None:
    tg.fail_next("sendMessage", 400, description="Bad Request: chat not found")
    with pytest.raises(TelegramBadRequest, match="chat not found"):
        await bot.send_message(CHAT, "Hi")
    tg.fail_next("sendMessage", 502, raw="<html><body>502 Bad Gateway</body></html>")
    with pytest.raises(ClientDecodeError):
        await bot.send_message(CHAT, "Hi")
    with pytest.raises(TelegramNotFound, match="method not found"):
        await bot.get_chat(CHAT)  # not implemented by the stand-in


async def test_token_check() -> None:
    async with TelegramStandIn(tokens={DEFAULT_TOKEN}) as tg:
        good, bad = tg.make_bot(), tg.make_bot("123:wrong")
        try:
            assert (await good.get_me()).id == 7012345678
            with pytest.raises(TelegramUnauthorizedError):
                await bad.get_me()
        finally:
            await good.session.close()
            await bad.session.close()


@TIMED
async def test_stall(bot: Bot, tg: TelegramStandIn) -> None:
    tg.stall("sendMessage", 0.5)
    started = time.monotonic()
    await bot.send_message(CHAT, "slow")
    assert 0.45 < time.monotonic() - started < 1.5
    started = time.monotonic()
    await bot.send_message(CHAT, "fast")
    assert time.monotonic() - started < 0.4  # the stall was 0.5 s


async def test_stall_outliving_client_timeout_is_not_delivered(
    bot: Bot, tg: TelegramStandIn
) -> None:
    tg.stall("sendMessage", 1.0)
    with pytest.raises(TelegramNetworkError):
        await bot.send_message(CHAT, "Hi", request_timeout=0.3)  # type: ignore[arg-type]
    failed = await tg.wait_for(lambda: tg.failed_calls, timeout=3)
    assert failed[0].status == 499 and tg.sent_messages() == []


async def test_rate_limit(bot: Bot, tg: TelegramStandIn) -> None:
    tg.rate_limit(per_chat_per_sec=2)
    await bot.send_message(CHAT, "1")
    await bot.send_message(CHAT, "2")
    with pytest.raises(TelegramRetryAfter) as err:
        await bot.send_message(CHAT, "3")
    assert err.value.retry_after == 1 and tg.count_429 == 1
    await bot.send_message(CHAT + 1, "other chat is fine")
    await asyncio.sleep(err.value.retry_after)
    await bot.send_message(CHAT, "3")
    assert [p["text"] for p in tg.sent_messages(CHAT)] == ["1", "2", "3"]


async def test_wait_for_messages(bot: Bot, tg: TelegramStandIn) -> None:
    async def later() -> None:
        await asyncio.sleep(0.2)
        await bot.send_message(CHAT, "a")
        await bot.send_message(CHAT, "b")

    task = asyncio.create_task(later())
    sent = await tg.wait_for_messages(2, chat_id=CHAT, timeout=3)
    assert [p["text"] for p in sent] == ["a", "b"]
    await task
    with pytest.raises(TimeoutError):
        await tg.wait_for_messages(3, timeout=0.2)


async def test_dispatcher_polling_round_trip(bot: Bot, tg: TelegramStandIn) -> None:
    dp = Dispatcher()

    @dp.message()
    async def echo(message: Message) -> None:
        await message.answer(f"echo: {message.text}", reply_markup=MENU)

    @dp.callback_query()
    async def pressed(query: CallbackQuery) -> None:
        await query.answer()
        if isinstance(query.message, Message):
            await query.message.edit_text(f"you chose {query.data}")

    polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False, polling_timeout=5))
    try:
        update = tg.push_update(load_fixture("text_de"))
        chat_id = update["message"]["chat"]["id"]
        [reply] = await tg.wait_for_messages(1, chat_id=chat_id, timeout=5)
        assert reply["text"] == f"echo: {update['message']['text']}"
        # the reply continues the chat's message ids; a press on its button edits it
        [bot_message] = tg.bot_messages(chat_id)
        assert bot_message["message_id"] == update["message"]["message_id"] + 1
        tg.push_callback(chat_id, "menu:agent")
        await tg.wait_for(lambda: tg.calls_to("editMessageText"), timeout=5)
        assert tg.bot_messages(chat_id)[0]["text"] == "you chose menu:agent"
        assert tg.calls_to("answerCallbackQuery")
        assert set(tg.calls_to("getUpdates")[0]["allowed_updates"]) == {
            "message",
            "callback_query",
        }
    finally:
        await dp.stop_polling()
        await polling
    assert tg.failed_calls == []


FIXTURES = sorted(FIXTURES_DIR.glob("*.json"))


def test_fixture_set_is_complete() -> None:
    assert len(FIXTURES) == 15


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_validates_as_update(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    update = Update.model_validate(data)
    assert update.update_id == data["update_id"]
    if "future_thing" in data:  # aiogram keeps unknown fields, but can't type the event
        with pytest.raises(UpdateTypeLookupError):
            _ = update.event_type
    else:
        assert update.event_type in data
