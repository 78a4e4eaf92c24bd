"""Limits on what a customer sends: webhook bodies bounded before they are read (413), texts
longer than a flow reads cut with a note in the customer's language (email too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from bot.channel.webhooks import read_bounded
from bot.conversation.engine import MAX_FLOW_TEXT
from bot.runtime import Runtime
from channels.email.adapter import EmailChannel
from channels.slack.adapter import EVENTS_PATH
from channels.slack.settings import SlackSettings
from channels.telegram.adapter import SECRET_HEADER, WEBHOOK_PATH
from channels.telegram.settings import TelegramSettings
from flows.catalog import default_catalog
from storage.models import Direction, Touchpoint
from tests.channels.email.helpers import (
    SmtpSink,
    email_settings,
    mail,
    smtp_sink_fixture,
    tls_cert_fixture,
)
from tests.channels.slack.helpers import serving as slack_serving
from tests.channels.slack.helpers import slack_settings
from tests.channels.telegram.helpers import SECRET, serving, tg_settings
from tests.conftest import inbound, recorder
from tests.standins.slack_api import SlackStandIn
from tests.standins.telegram_api import TelegramStandIn

__all__ = ["smtp_sink_fixture", "tls_cert_fixture"]  # the fixtures, used by name
LIMIT = 1000


def request(headers: dict[str, str], chunks: list[bytes]) -> tuple[Request, list[int]]:
    """A request whose body arrives in `chunks`; the list counts the chunks read."""
    read: list[int] = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        i = len(read) - 1
        if i < len(chunks):
            return {"type": "http.request", "body": chunks[i], "more_body": i + 1 < len(chunks)}
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive), read


async def test_read_bounded_refuses_without_reading_whole() -> None:
    # a declared length over the limit: refused before a single chunk is read
    req, read = request({"content-length": str(LIMIT + 1)}, [b"x" * 10] * 200)
    answer = await read_bounded(req, LIMIT)
    assert isinstance(answer, Response) and answer.status_code == 413 and read == []
    # no length (chunked): counted while read, refused as soon as it passes the limit
    req, read = request({}, [b"x" * 300] * 200)
    answer = await read_bounded(req, LIMIT)
    assert isinstance(answer, Response) and answer.status_code == 413
    assert len(read) == 4  # 1200 bytes, not the 60 000 offered
    # a length that is not a number
    for bad in ("12a", "-5", " ", "1e3", "0x10", "½"):
        req, read = request({"content-length": bad}, [b"{}"])
        answer = await read_bounded(req, LIMIT)
        assert isinstance(answer, Response) and answer.status_code == 400, bad
    # at the limit exactly: the body
    req, _ = request({"content-length": str(LIMIT)}, [b"y" * LIMIT])
    assert await read_bounded(req, LIMIT) == b"y" * LIMIT


def test_webhook_limits_default_to_one_megabyte() -> None:
    assert TelegramSettings().max_body_bytes == SlackSettings().max_body_bytes == 1 << 20


async def raw_post(base: str, path: str, head: dict[str, str], body: bytes) -> int:
    """POST with exactly these headers (httpx would correct a malformed Content-Length)."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in head.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return int(status.split()[1])


async def chunks(n: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b" " * 32768


async def test_telegram_webhook_malformed_length(sqlite_url: str, tg: TelegramStandIn) -> None:
    async with serving(tg_settings(sqlite_url, tg, mode="webhook")) as (base, _):
        head = {SECRET_HEADER: SECRET, "Content-Length": "12abc"}
        status = await raw_post(base, WEBHOOK_PATH, head, b'{"update_id": 1}')
        assert status == 400


async def test_slack_webhook_bounds(sqlite_url: str, slack: SlackStandIn) -> None:
    async with slack_serving(slack_settings(sqlite_url, slack), slack), httpx.AsyncClient() as c:
        assert slack.app_url is not None
        base = slack.app_url.removesuffix(EVENTS_PATH)
        # no Content-Length: 40 × 32 KiB grows past 1 MB while read
        answer = await c.post(slack.app_url, content=chunks(40))
        assert answer.status_code == 413
        status = await raw_post(base, EVENTS_PATH, {"Content-Length": "x1"}, b"{}")
        assert status == 400


# ---- texts over the flow's limit --------------------------------------------------------


async def inbound_touchpoints(rt: Runtime) -> list[Touchpoint]:
    async with rt.sessions() as s:
        q = select(Touchpoint).where(Touchpoint.direction == Direction.IN).order_by(Touchpoint.id)
        return list((await s.execute(q)).scalars())


@pytest.mark.parametrize("locale", ["en", "de"])
async def test_long_text_is_cut_with_a_note(runtime: Runtime, locale: str) -> None:
    text = "Mein Paket kam nass an. " * 400  # 9600 characters
    result = await runtime.engine.handle(inbound(text, user="long", locale=locale))
    note = default_catalog().text(locale, "limits.truncated", limit=MAX_FLOW_TEXT)
    assert result.replies[0] == note and str(MAX_FLOW_TEXT) in note
    assert result.replies.count(note) == 1 and len(result.replies) > 1  # the flow answered
    (tp,) = await inbound_touchpoints(runtime)
    assert tp.text == text.strip() or tp.text == text  # the touchpoint keeps it whole
    assert tp.payload["truncated"] == {"length": len(tp.text or ""), "read": MAX_FLOW_TEXT}
    await runtime.dispatcher.drain()
    assert recorder(runtime).texts("long")[0] == note


async def test_text_at_the_limit_has_no_note(runtime: Runtime) -> None:
    result = await runtime.engine.handle(inbound("a" * MAX_FLOW_TEXT, user="exact"))
    assert not any("characters" in r for r in result.replies)
    (tp,) = await inbound_touchpoints(runtime)
    assert "truncated" not in tp.payload


async def test_no_note_while_an_agent_reads_the_whole_text(runtime: Runtime) -> None:
    await runtime.engine.handle(inbound("human", user="q"))  # queued for a person
    result = await runtime.engine.handle(inbound("x" * (MAX_FLOW_TEXT + 10), user="q"))
    assert not any(r.startswith("Your message was very long") for r in result.replies)
    assert (await inbound_touchpoints(runtime))[-1].payload["truncated"]["read"] == MAX_FLOW_TEXT


async def test_long_email_is_cut_but_not_its_quote(db_url: str, smtp_sink: SmtpSink) -> None:
    rt = Runtime(email_settings(db_url, smtp_sink), channels=["email"])
    await rt.start()
    try:
        ch = rt.channels["email"]
        assert isinstance(ch, EmailChannel)
        quote = "\n\nOn Mon, Nov 16, 2026 at 10:00 AM Service <service@shop.test> wrote:\n"
        quote += "> earlier text\n" * 2000  # 30 000 characters of quoted history
        short = mail("Where is my parcel?" + quote, message_id="<short@example.org>")
        long = mail(
            "My parcel is late. " * 300 + quote,
            sender="Bob <bob@example.org>",
            message_id="<long@example.org>",
        )
        assert await ch.accept(short) and await ch.accept(long)
        await rt.inbox.drain()
        await smtp_sink.wait_for(2)
        await asyncio.sleep(0.2)
        by_rcpt: dict[str, list[str]] = {}
        for envelope, message in smtp_sink.messages:
            body = message.get_body(("plain",))
            assert body is not None
            by_rcpt.setdefault(envelope.rcpt_tos[0], []).append(str(body.get_content()))
        note = "only read the first"
        assert not any(note in t for t in by_rcpt["anna@example.org"])
        assert sum(note in t for t in by_rcpt["bob@example.org"]) == 1
        texts = {tp.platform_message_id: tp for tp in await inbound_touchpoints(rt)}
        assert "truncated" not in texts["<short@example.org>"].payload
        assert texts["<long@example.org>"].payload["truncated"]["read"] == MAX_FLOW_TEXT
        assert "earlier text" not in (texts["<long@example.org>"].text or "")
    finally:
        await rt.stop()
