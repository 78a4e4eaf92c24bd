"""The Telegram channel through real HTTP and the real aiogram client: the Bot API
stand-in on one side, the real application under uvicorn on the other."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bot.channel import TransientSendError
from bot.channel.messages import ChannelEvent, Choice, InboundMessage, OutboundMessage
from bot.config import ConfigError, load_settings
from bot.runtime import Runtime, flow_options
from bot.web.app import create_app
from channels.telegram.adapter import SECRET_HEADER, WEBHOOK_PATH, create
from channels.telegram.parse import REJECTED_KEY, parse_update
from channels.telegram.send import MAX_CALLBACK_DATA, callback_data, split_text, utf16_len
from channels.telegram.settings import TelegramSettings
from flows import dialogue, language, registry
from flows.catalog import default_catalog
from flows.model import ContactFacts, Context, button_payload
from storage.models import (
    Case,
    Contact,
    Identity,
    InboxStatus,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
)
from tests.channels.telegram.helpers import (
    CASE_REF,
    SECRET,
    TOKEN,
    Customer,
    channel,
    free_port,
    inbox_rows,
    polling_deliver,
    post,
    serving,
    settled,
    tg_settings,
    webhook_deliver,
)
from tests.conftest import ROOT, make_settings
from tests.standins.telegram_api import FIXTURES_DIR, TelegramStandIn, load_fixture

JAMES, ANNA = 391047582, 528194736  # the fixtures' customers
GROUP = -4581236790


async def identity(rt: Runtime, user: int) -> Identity:
    async with rt.sessions() as s:
        q = select(Identity).where(
            Identity.channel == "telegram", Identity.external_id == str(user)
        )
        return (await s.execute(q)).scalar_one()


async def contact_of(rt: Runtime, user: int) -> Contact:
    ident = await identity(rt, user)
    async with rt.sessions() as s:
        contact = await s.get(Contact, ident.contact_id)
        assert contact is not None
        return contact


async def touchpoints(rt: Runtime) -> list[Touchpoint]:
    async with rt.sessions() as s:
        return list((await s.execute(select(Touchpoint).order_by(Touchpoint.id))).scalars())


async def outbox(rt: Runtime) -> list[OutboxMessage]:
    async with rt.sessions() as s:
        return list((await s.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars())


# ---- the complaint flow end to end ---------------------------------------------------------


async def complaint(c: Customer) -> str:
    """/start with a deep link, then the complaint by pressing buttons; the case reference."""
    await c.say("/start campaign_spring")
    await c.press("c:complaint")
    await c.press("f:complaint:category:delivery")
    await c.wait_text("describe what happened")
    await c.say("The parcel arrived soaking wet and torn.")
    await c.press("f:complaint:reference:-")
    await c.press("f:complaint:severity:medium")
    await c.press("f:complaint:resolution:refund")
    await c.press("f:complaint:confirm:yes")
    found = CASE_REF.search(await c.wait_text(CASE_REF))
    assert found
    return found.group(0)


async def check_complaint(rt: Runtime, tg: TelegramStandIn, c: Customer, reference: str) -> None:
    await settled(rt, tg)
    async with rt.sessions() as s:
        case = (await s.execute(select(Case))).scalar_one()
    assert case.reference == reference
    assert (case.category, case.severity, case.desired_resolution) == (
        "delivery",
        "medium",
        "refund",
    )
    contact = await contact_of(rt, c.id)
    assert contact.source == "campaign_spring"  # the deep link's payload
    assert contact.name == "Test" and contact.locale == "en"
    # every press was answered (the spinner stops) and its keyboard taken away
    presses = 6
    await tg.wait_for(lambda: len(tg.calls_to("editMessageReplyMarkup")) == presses)
    assert len(tg.calls_to("answerCallbackQuery")) == presses
    assert [m for m in tg.bot_messages(c.id) if m.get("reply_markup")] == []
    # the pressed labels are the customer's words in the history
    inbound = [t for t in await touchpoints(rt) if t.direction == "in"]
    assert [t.text for t in inbound][:3] == [
        "/start campaign_spring",
        "Make a complaint",
        "Delivery",
    ]
    assert {t.kind for t in inbound} == {"message", "button"}
    # plain text, no markup: nothing a customer typed can become formatting
    assert all("parse_mode" not in p for p in tg.sent_messages())
    assert all(o.status == OutboxStatus.SENT for o in await outbox(rt))
    assert tg.failed_calls == []


async def test_complaint_polling(db_url: str, tg: TelegramStandIn) -> None:
    async with serving(tg_settings(db_url, tg)) as (_, rt):
        c = Customer(tg, polling_deliver, JAMES)
        reference = await complaint(c)
        await check_complaint(rt, tg, c, reference)
        assert tg.calls[0].method == "deleteWebhook"  # polling starts by removing a webhook
        # the offset only moved past updates the inbox had committed: all are there
        rows = await inbox_rows(rt)
        assert len(rows) == 8 and all(r.status == InboxStatus.DONE for r in rows)
        assert rows[0].dedupe_key.startswith("7012345678:")


async def test_complaint_webhook(
    db_url: str, tg: TelegramStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = tg_settings(
        db_url, tg, mode="webhook", webhook_url="https://bot.example.com/webhooks/telegram"
    )
    async with serving(settings) as (base, rt), httpx.AsyncClient() as client:
        await tg.wait_for(lambda: tg.webhook)  # setWebhook was called at start, with the secret
        assert tg.webhook["url"] == "https://bot.example.com/webhooks/telegram"
        assert tg.webhook["secret_token"] == SECRET
        assert "Telegram channel started in webhook mode" in caplog.text
        c = Customer(tg, webhook_deliver(client, base, tg), JAMES)
        reference = await complaint(c)
        await check_complaint(rt, tg, c, reference)
        assert tg.calls_to("getUpdates") == []


async def test_webhook_response_answers_the_press(sqlite_url: str, tg: TelegramStandIn) -> None:
    # the spinner is stopped by the webhook's own 200 (Telegram makes the call it names):
    # one Bot API request fewer per press; the keyboard is still taken away by a request
    settings = tg_settings(sqlite_url, tg, mode="webhook")
    async with serving(settings) as (base, rt), httpx.AsyncClient() as client:
        assert (await post(client, base, tg.push_text(JAMES, "complaint"))).status_code == 200
        message = await tg.wait_for(
            lambda: next((m for m in tg.bot_messages(JAMES) if m.get("reply_markup")), None)
        )
        data = message["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        pressed = tg.push_callback(JAMES, data, message=message)
        response = await post(client, base, pressed)
        assert response.status_code == 200
        answer = {
            "method": "answerCallbackQuery",
            "callback_query_id": pressed["callback_query"]["id"],
        }
        assert response.json() == answer
        await tg.wait_for(lambda: tg.calls_to("editMessageReplyMarkup"))
        await settled(rt, tg)
        assert tg.calls_to("answerCallbackQuery") == []  # not asked by a request of its own
        again = await post(client, base, pressed)  # a redelivery: answered the first time
        assert again.status_code == 200 and again.content == b""
        await tg.webhook_replied(response.status_code, response.content)  # as Telegram does
        assert tg.calls_to("answerCallbackQuery") == [
            {"callback_query_id": answer["callback_query_id"]}
        ]


# ---- dedupe --------------------------------------------------------------------------------


async def test_same_update_twice_one_reply(db_url: str, tg: TelegramStandIn) -> None:
    async with (
        serving(tg_settings(db_url, tg, mode="webhook")) as (base, rt),
        httpx.AsyncClient() as client,
    ):
        update = load_fixture("text")
        for _ in range(3):  # Telegram redelivers when it missed our 200
            assert (await post(client, base, update)).status_code == 200
        # the same message in a new update (another update_id): the engine dedupes it
        again = {**update, "update_id": update["update_id"] + 1000}
        assert (await post(client, base, again)).status_code == 200
        await settled(rt, tg)
        assert len(tg.sent_messages(JAMES)) == 1
        assert len(await inbox_rows(rt)) == 2
        inbound = [t for t in await touchpoints(rt) if t.direction == "in"]
        assert [t.platform_message_id for t in inbound] == [f"{JAMES}:412"]
        # the customer edits that message: recorded as an edit, not taken as a new answer
        assert (await post(client, base, load_fixture("edited_message"))).status_code == 200
        await settled(rt, tg)
        assert len(tg.sent_messages(JAMES)) == 1
        edits = [t for t in await touchpoints(rt) if t.kind == "edit"]
        assert [t.text for t in edits] == [load_fixture("edited_message")["edited_message"]["text"]]


async def test_polling_redelivery_one_reply(sqlite_url: str, tg: TelegramStandIn) -> None:
    async with serving(tg_settings(sqlite_url, tg)) as (_, rt):
        tg.push_update(load_fixture("text"))
        tg.push_update(load_fixture("text"))  # queued again: a new update_id, same message
        await tg.wait_for_messages(1, JAMES)
        await settled(rt, tg)
        assert len(tg.sent_messages(JAMES)) == 1
        assert len(await inbox_rows(rt)) == 2


async def test_polling_offset_waits_for_commit(
    sqlite_url: str, tg: TelegramStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tg_settings(sqlite_url, tg)) as (_, rt):
        inbox = rt.inbox
        real_accept = inbox.accept
        failures = 2

        async def flaky(*args: Any, **kw: Any) -> bool:
            nonlocal failures
            if failures:
                failures -= 1
                raise OSError("database unavailable")
            return await real_accept(*args, **kw)

        monkeypatch.setattr(inbox, "accept", flaky)
        pushed = tg.push_update(load_fixture("text"))
        await tg.wait_for_messages(1, JAMES, timeout=15)
        # until it was committed, the update stayed unconfirmed and came again
        delivered = [p for p in tg.calls_to("getUpdates") if p.get("offset") is None]
        assert len(delivered) == 3 and failures == 0
        await tg.wait_for(lambda: tg.pending_updates == [])  # then the offset moved past it
        await settled(rt, tg)
        assert len(tg.sent_messages(JAMES)) == 1
        assert [r.dedupe_key for r in await inbox_rows(rt)] == [f"7012345678:{pushed['update_id']}"]


async def test_429_storm_every_reply_once(db_url: str, tg: TelegramStandIn) -> None:
    async with serving(tg_settings(db_url, tg)) as (_, rt):
        users = [JAMES + i for i in range(6)]
        tg.fail_next("sendMessage", 429, times=8, retry_after=1)
        for u in users:
            tg.push_text(u, "menu")
        for u in users:
            await tg.wait_for_messages(1, u, timeout=15)
        await settled(rt, tg, timeout=15)
        assert len([f for f in tg.failed_calls if f.status == 429]) == 8
        for u in users:  # exactly once each
            assert [p["text"][:5] for p in tg.sent_messages(u)] == ["Hello"]
        # after a 429 the chat's next attempt waited its retry_after
        attempts = sorted(
            [(c.at, c.params["chat_id"], 200) for c in tg.calls if c.method == "sendMessage"]
            + [(f.at, f.params["chat_id"], f.status) for f in tg.failed_calls]
        )
        for at, chat, status in attempts:
            if status == 429:
                later = [a for a, ch, _ in attempts if ch == chat and a > at]
                assert later and later[0] - at >= 1.0
        assert all(o.status == OutboxStatus.SENT for o in await outbox(rt))


async def test_rate_is_shaped_not_discovered(sqlite_url: str, tg: TelegramStandIn) -> None:
    settings = tg_settings(sqlite_url, tg, rate_per_second=10, chat_rate_per_second=2, chat_burst=2)
    async with serving(settings) as (_, rt):
        # the stand-in answers 429 as soon as a window is over Telegram-like limits
        tg.rate_limit(per_chat_per_sec=4, global_per_sec=10)
        ch = channel(rt)
        many = [
            OutboundMessage("telegram", str(1000 + i), str(1000 + i), f"news {i}")
            for i in range(10)
        ]
        one_chat = [OutboundMessage("telegram", "999", "999", f"part {i}") for i in range(4)]
        started = time.monotonic()

        async def in_order() -> None:
            for m in one_chat:
                await ch.send(m)

        await asyncio.gather(in_order(), *(ch.send(m) for m in many))
        elapsed = time.monotonic() - started
        assert tg.count_429 == 0 and tg.failed_calls == []
        assert len(tg.sent_messages()) == 14
        assert elapsed > 1.0  # 14 messages at 10/s, and one chat at 2/s: they were paced


async def test_blocked_user_unreachable_no_retry(db_url: str, tg: TelegramStandIn) -> None:
    async with serving(tg_settings(db_url, tg)) as (_, rt):
        tg.block_chat(JAMES)
        tg.push_update(load_fixture("text"))
        await tg.wait_for(lambda: tg.failed_calls)
        await settled(rt, tg)
        await asyncio.sleep(0.3)  # a retry loop would show up here
        assert [(f.method, f.status) for f in tg.failed_calls] == [("sendMessage", 403)]
        ident = await identity(rt, JAMES)
        assert ident.reachable is False and "blocked" in (ident.unreachable_reason or "")
        assert [o.status for o in await outbox(rt)] == [OutboxStatus.FAILED]
        # the customer unblocks the bot and writes again
        tg.unblock_chat(JAMES)
        tg.push_update(
            load_fixture("my_chat_member_unblocked")
            | {
                "my_chat_member": {
                    **load_fixture("my_chat_member_unblocked")["my_chat_member"],
                    "chat": {"id": JAMES, "type": "private", "first_name": "J"},
                    "from": {"id": JAMES, "is_bot": False, "first_name": "J"},
                }
            }
        )
        await settled(rt, tg)
        assert (await identity(rt, JAMES)).reachable is True


async def test_server_errors_retried_with_backoff(sqlite_url: str, tg: TelegramStandIn) -> None:
    async with serving(tg_settings(sqlite_url, tg, request_timeout=1)) as (_, rt):
        tg.fail_next("sendMessage", 502, raw="<html>502 Bad Gateway</html>")
        tg.fail_next("sendMessage", 500)
        tg.stall("sendMessage", 1.5)  # longer than request_timeout: a timeout
        tg.push_update(load_fixture("text"))
        await tg.wait_for_messages(1, JAMES, timeout=20)
        await settled(rt, tg)
        await tg.wait_for(lambda: len(tg.failed_calls) == 3)
        assert len(tg.sent_messages(JAMES)) == 1
        assert sorted(f.status for f in tg.failed_calls) == [499, 500, 502]
        [row] = await outbox(rt)
        assert row.status == OutboxStatus.SENT and row.attempts == 4


async def test_long_text_split_and_keyboard_last(sqlite_url: str, tg: TelegramStandIn) -> None:
    async with serving(tg_settings(sqlite_url, tg)) as (_, rt):
        paragraph = "A customer's <b>text</b> with *stars* and _underscores_ 😀. " * 30
        text = "\n\n".join([paragraph] * 6)
        choices = (Choice("f:complaint:confirm:yes", "Yes"), Choice("f:complaint:confirm:no", "No"))
        result = await channel(rt).send(
            OutboundMessage("telegram", str(JAMES), str(JAMES), text, choices, outbox_id=1)
        )
        sent = tg.sent_messages(JAMES)
        assert len(sent) > 1 and all(utf16_len(p["text"]) <= 4096 for p in sent)
        assert all(p["text"].endswith(paragraph.rstrip()) for p in sent)  # at paragraph ends
        assert "".join(p["text"] for p in sent).replace(paragraph.strip(), "").split() == []
        assert [bool(p.get("reply_markup")) for p in sent] == [False] * (len(sent) - 1) + [True]
        assert all("parse_mode" not in p for p in sent)
        assert result.platform_message_id == f"{JAMES}:{len(sent)}"


async def test_split_retry_does_not_repeat_sent_parts(sqlite_url: str, tg: TelegramStandIn) -> None:
    # one message per 0.28 s in the chat: time to make the second part fail
    settings = tg_settings(sqlite_url, tg, chat_burst=1, chat_rate_per_second=4)
    async with serving(settings) as (_, rt):
        text = "\n\n".join(f"Part {i}: " + "x" * 4000 for i in range(3))
        message = OutboundMessage("telegram", str(JAMES), str(JAMES), text, outbox_id=7)
        sending = asyncio.create_task(channel(rt).send(message))
        await tg.wait_for_messages(1, JAMES)
        tg.fail_next("sendMessage", 500)
        with pytest.raises(TransientSendError):
            await sending
        await channel(rt).send(message)  # the dispatcher's retry
        texts = [str(p["text"])[:6] for p in tg.sent_messages(JAMES)]
        assert texts == ["Part 0", "Part 1", "Part 2"]


def test_split_text_boundaries() -> None:
    assert split_text("short") == ["short"]
    emoji = "😀" * 3000  # 6000 UTF-16 units: Telegram counts these, not characters
    parts = split_text(emoji)
    assert [utf16_len(p) for p in parts] == [4096, 6000 - 4096]
    words = " ".join(["word"] * 2000)
    parts = split_text(words)
    assert all(utf16_len(p) <= 4096 for p in parts) and all(not p.endswith(" ") for p in parts)
    assert " ".join(parts) == words
    lines = "\n".join(f"line {i}" for i in range(1500))
    assert "\n".join(split_text(lines)) == lines
    combining = "e\u0301" * 3000  # never cut between a letter and its accent
    assert all(not p.startswith("\u0301") for p in split_text(combining))


# ---- callback data -------------------------------------------------------------------------


def test_every_button_payload_fits_callback_data() -> None:
    settings = load_settings(ROOT / "config.yaml")
    ctx = Context(
        locale="de",
        options=flow_options(settings),
        catalog=default_catalog(),
        contact=ContactFacts(),
        now=datetime(2025, 1, 1),
    )
    payloads = [b.payload for b in dialogue.menu(ctx).buttons]
    payloads += [f"c:language:{o.value}" for o in language.OPTIONS]
    for flow in registry.FLOWS.values():
        for step in flow.steps:
            payloads += [button_payload(flow.name, step.id, o.value) for o in step.options(ctx)]
    assert "f:complaint:category:delivery" in payloads and len(payloads) > 30
    too_long = [p for p in payloads if len(p.encode()) > MAX_CALLBACK_DATA]
    assert too_long == []
    assert {callback_data(p) for p in payloads} == set(payloads)  # sent unchanged


def test_long_payload_is_hashed_and_comes_back_as_its_label() -> None:
    payload = "f:complaint:category:" + "ü" * 40  # 101 bytes
    data = callback_data(payload)
    assert data.startswith("h:") and len(data.encode()) <= 64 and data == callback_data(payload)
    update = load_fixture("callback_query")
    update["callback_query"]["data"] = data
    update["callback_query"]["message"]["reply_markup"]["inline_keyboard"][0][0] = {
        "text": "Lieferung",
        "callback_data": data,
    }
    msg = message(parse_update(update))
    assert msg.text == "Lieferung" and msg.payload is None  # the flow matches the label


# ---- parsing -------------------------------------------------------------------------------


def message(items: Sequence[InboundMessage | ChannelEvent]) -> InboundMessage:
    [item] = items
    assert isinstance(item, InboundMessage)
    return item


def event(items: Sequence[InboundMessage | ChannelEvent]) -> ChannelEvent:
    [item] = items
    assert isinstance(item, ChannelEvent)
    return item


def test_parser_on_fixtures() -> None:
    parse = parse_update
    got = {
        p.stem: parse(json.loads(p.read_text("utf-8"))) for p in sorted(FIXTURES_DIR.glob("*.json"))
    }
    assert got["group_message"] == [] and got["unknown_future_update"] == []
    start = message(got["command_start_deeplink"])
    assert start.contact_updates == {"source": "campaign_spring"}
    assert (start.platform_message_id, start.thread_key, start.sender_id) == (
        f"{JAMES}:1",
        str(JAMES),
        str(JAMES),
    )
    edit = message(got["edited_message"])
    assert edit.kind == "edit" and edit.platform_message_id == f"{JAMES}:412:edit:1732287467"
    photo = message(got["photo_caption"])
    assert photo.text == "The package arrived damaged, see photo"
    assert photo.attachments[0].kind == "photo" and photo.attachments[0].extra["width"] == 1280
    doc = message(got["document"])
    assert (doc.text, doc.locale_hint) == ("Meine Rechnung", "de")
    assert (doc.attachments[0].name, doc.attachments[0].mime_type) == (
        "Rechnung_2024-11.pdf",
        "application/pdf",
    )
    contact = message(got["contact"])
    assert contact.contact_updates == {"phone": "+491701234567"}
    for name, kind in [("voice", "voice"), ("sticker", "sticker"), ("location", "location")]:
        m = message(got[name])
        assert m.text == "" and m.attachments[0].kind == kind
    blocked, unblocked = (
        event(got["my_chat_member_blocked"]),
        event(got["my_chat_member_unblocked"]),
    )
    assert (blocked.kind, blocked.reachable) == ("blocked", False)
    assert (unblocked.kind, unblocked.reachable) == ("unblocked", True)
    press = message(got["callback_query"])
    assert (press.kind, press.payload, press.text) == ("button", "menu:agent", "Talk to an agent")
    assert press.platform_message_id == "cb:1687362541938475521"


def test_someone_elses_contact_is_not_the_customers_phone() -> None:
    update = load_fixture("contact")
    update["message"]["contact"]["user_id"] = 1
    msg = message(parse_update(update))
    assert msg.contact_updates == {} and msg.attachments[0].extra["own"] is False


# ---- the webhook ---------------------------------------------------------------------------


async def test_webhook_every_fixture(db_url: str, tg: TelegramStandIn) -> None:
    async with (
        serving(tg_settings(db_url, tg, mode="webhook")) as (base, rt),
        httpx.AsyncClient() as client,
    ):
        for path in sorted(FIXTURES_DIR.glob("*.json")):
            response = await post(client, base, json.loads(path.read_text("utf-8")))
            assert response.status_code == 200, (path.stem, response.text)
        await settled(rt, tg)
        rows = {r.payload["update_id"]: r for r in await inbox_rows(rt)}
        assert len(rows) == 15
        status = {
            p.stem: rows[json.loads(p.read_text("utf-8"))["update_id"]].status
            for p in FIXTURES_DIR.glob("*.json")
        }
        assert status["group_message"] == status["unknown_future_update"] == InboxStatus.IGNORED
        assert {
            s for k, s in status.items() if k not in ("group_message", "unknown_future_update")
        } == {InboxStatus.DONE}
        assert tg.sent_messages(GROUP) == []  # never answered in a group
        tps = await touchpoints(rt)
        kinds = [t.kind for t in tps if t.direction == "in"]
        assert {"edit", "button", "blocked", "unblocked"} <= set(kinds)
        # the edit is recorded, not answered: each reply answers a message or a press
        edit = next(t for t in tps if t.kind == "edit")
        assert "#48231" in (edit.text or "")
        assert (await contact_of(rt, ANNA)).phone == "+491701234567"
        assert (await contact_of(rt, ANNA)).locale == "de"
        assert (await contact_of(rt, JAMES)).locale == "en"
        # where a flow needs text, an attachment gets a polite answer, never an error
        anna = [str(p["text"]) for p in tg.sent_messages(ANNA)]
        assert any("Datei" in t for t in anna), anna


async def test_webhook_secret(sqlite_url: str, tg: TelegramStandIn) -> None:
    async with (
        serving(tg_settings(sqlite_url, tg, mode="webhook")) as (base, rt),
        httpx.AsyncClient() as client,
    ):
        update = load_fixture("text")
        assert (await post(client, base, update, secret=None)).status_code == 401
        assert (await post(client, base, update, secret="wrong-" + SECRET)).status_code == 401
        assert (await post(client, base, update, secret=SECRET[:-1])).status_code == 401
        assert await inbox_rows(rt) == []
        assert (await post(client, base, update)).status_code == 200
        assert len(await inbox_rows(rt)) == 1


async def test_webhook_bounds(sqlite_url: str, tg: TelegramStandIn) -> None:
    async with (
        serving(tg_settings(sqlite_url, tg, mode="webhook")) as (base, rt),
        httpx.AsyncClient() as client,
    ):
        big = json.dumps({"update_id": 1, "message": {"text": "x" * (1 << 20)}})
        assert (await post(client, base, big)).status_code == 413

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(40):
                yield b" " * 32768

        chunked = await client.post(
            base + WEBHOOK_PATH, content=chunks(), headers={SECRET_HEADER: SECRET}
        )
        assert chunked.status_code == 413
        assert (await post(client, base, b"not json")).status_code == 400
        assert (await post(client, base, b"[1, 2]")).status_code == 400
        assert (await post(client, base, {"no": "update_id"})).status_code == 400
        # too deep for pydantic (and for the JSON decoder): kept as text, parked dead
        deep = load_fixture("text")
        node = deep["message"]
        for _ in range(60):
            node["reply_to_message"] = {
                "message_id": 1,
                "date": 1,
                "chat": {"id": JAMES, "type": "private"},
            }
            node = node["reply_to_message"]
        deep["update_id"] = 777
        deep["message"]["message_id"] = 9001  # not the same message as the one below
        assert (await post(client, base, deep)).status_code == 200
        deeper = b'{"update_id": 778, "message": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        assert len(deeper) < 1 << 20
        assert (await post(client, base, deeper)).status_code == 200
        await settled(rt, tg)
        rows = await inbox_rows(rt)
        assert [(r.status, REJECTED_KEY in r.payload) for r in rows] == [
            (InboxStatus.DEAD, True),
            (InboxStatus.DEAD, True),
        ]
        assert "raw_text" in rows[0].payload and rows[0].error
        # the first could be decoded: its first levels were kept, and the customer's text
        # read from them is answered; the second is text only
        assert rows[0].payload["shallow"]["message"]["text"] == deep["message"]["text"]
        assert "shallow" not in rows[1].payload
        await tg.wait_for_messages(1, JAMES)
        # a normal update after them is handled as usual
        assert (await post(client, base, load_fixture("text"))).status_code == 200
        await tg.wait_for_messages(2, JAMES)


async def test_webhook_database_down_is_503(tg: TelegramStandIn) -> None:
    port = free_port()  # nothing listens there
    settings = tg_settings(f"postgresql+asyncpg://nobody@127.0.0.1:{port}/none", tg, mode="webhook")
    async with serving(settings) as (base, _), httpx.AsyncClient() as client:
        response = await post(client, base, load_fixture("text"))
        assert response.status_code == 503  # Telegram will deliver it again


async def test_polling_route_absent(sqlite_url: str, tg: TelegramStandIn) -> None:
    async with serving(tg_settings(sqlite_url, tg)) as (base, _), httpx.AsyncClient() as client:
        response = await post(client, base, load_fixture("text"))
        assert response.status_code == 404


# ---- set-up, settings, logging -------------------------------------------------------------


def test_no_token_no_channel(sqlite_url: str) -> None:
    rt = Runtime(make_settings(sqlite_url), channels=["telegram"])
    assert "telegram" not in rt.channels
    assert create(rt) is None


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="CICBOT_TELEGRAM__WEBHOOK_SECRET"):
        TelegramSettings(token=TOKEN, mode="webhook")
    with pytest.raises(ValueError, match="not a bot token"):
        TelegramSettings(token="nonsense")
    with pytest.raises(ValueError, match="https://"):
        TelegramSettings(webhook_url="http://bot.example.com/hook")
    with pytest.raises(ValueError, match="16-256"):
        TelegramSettings(webhook_secret="short")
    assert TelegramSettings(api_base="http://127.0.0.1:8081/").api_base == "http://127.0.0.1:8081"


def test_secret_in_yaml_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CICBOT_CONFIG", str(ROOT / "config.yaml"))  # load_settings changes it
    config = (ROOT / "config.yaml").read_text("utf-8") + f"\ntelegram:\n  token: '{TOKEN}'\n"
    (tmp_path / "c.yaml").write_text(config, "utf-8")
    with pytest.raises(ConfigError, match="CICBOT_TELEGRAM__TOKEN"):
        load_settings(tmp_path / "c.yaml")


async def test_token_never_logged(
    sqlite_url: str, tg: TelegramStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret_part = TOKEN.split(":")[1]
    async with serving(tg_settings(sqlite_url, tg, request_timeout=1)) as (_, rt):
        tg.fail_next("getUpdates", 502, raw="<html>bad gateway</html>")
        tg.fail_next("sendMessage", 401, description="Unauthorized")
        tg.stall("sendMessage", 2.0)  # longer than request_timeout
        tg.fail_next("sendMessage", 400, description="Bad Request: can't parse something")
        tg.push_update(load_fixture("text"))
        await tg.wait_for_messages(1, JAMES, timeout=20)
        await settled(rt, tg)
        [row] = await outbox(rt)
        assert row.attempts == 4 and row.status == OutboxStatus.SENT
    # nothing listens at this API address: connection errors from polling and sending
    unreachable = f"http://127.0.0.1:{free_port()}"
    async with serving(tg_settings(sqlite_url, tg, api_base=unreachable)) as (_, rt2):
        with pytest.raises(TransientSendError) as err:
            await channel(rt2).send(OutboundMessage("telegram", "1", "1", "hi"))
        await asyncio.sleep(0.2)
        assert secret_part not in str(err.value)
        assert all(secret_part not in (o.last_error or "") for o in await outbox(rt2))
    assert "getUpdates failed" in caplog.text and "deleteWebhook failed" in caplog.text
    assert secret_part not in caplog.text
    assert "Telegram channel started in polling mode" in caplog.text


async def test_webhook_stores_what_json_allows_but_postgres_does_not(
    db_url: str, tg: TelegramStandIn
) -> None:
    """Found by tests/reliability/test_fuzz.py: a lone surrogate escape or a NaN is valid
    for Python's JSON parser but PostgreSQL refused the row, so the webhook answered 503
    for ever; now they are stored (as U+FFFD and null) and the update is processed."""
    async with (
        serving(tg_settings(db_url, tg, mode="webhook")) as (base, rt),
        httpx.AsyncClient() as client,
    ):
        update = load_fixture("text")
        update["message"]["text"] = "hello \ud800"
        update["\udc00"] = None
        assert (await post(client, base, json.dumps(update))).status_code == 200
        nan = b'{"update_id": 9001, "message": {"message_id": NaN, "x": -Infinity}}'
        assert (await post(client, base, nan)).status_code == 200
        await settled(rt, tg)
        rows = {r.dedupe_key.split(":")[1]: r for r in await inbox_rows(rt)}
        assert rows[str(update["update_id"])].status == InboxStatus.DONE
        assert rows[str(update["update_id"])].payload["message"]["text"] == "hello \ufffd"
        assert rows["9001"].status == InboxStatus.DEAD  # parked: not an update aiogram reads
        assert rows["9001"].payload["message"] == {"message_id": None, "x": None}


async def test_the_webhook_is_matched_before_the_api_routes(
    sqlite_url: str, tg: TelegramStandIn
) -> None:
    """Each update used to be matched against every API route first (~60 of them, about
    350 µs of CPU per update under FastAPI's router); the channels' routes come first."""
    rt = Runtime(tg_settings(sqlite_url, tg, mode="webhook"), channels=["telegram"])
    routers = [getattr(r, "original_router", r) for r in create_app(rt).routes]
    webhook = routers.index(channel(rt).router)

    def paths(router: Any) -> list[str]:
        return [str(getattr(r, "path", "")) for r in getattr(router, "routes", [])]

    first_api = next(
        i for i, r in enumerate(routers) if any(p.startswith("/api/") for p in paths(r))
    )
    assert webhook < first_api
    assert paths(routers[webhook]) == [WEBHOOK_PATH]
