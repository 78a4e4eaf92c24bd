"""Property-based: updates generated from the Bot API's machine-readable spec
(tests/channels/telegram/spec.py), with rich text nested up to 20 levels.

* the tolerant reader (channels/telegram/raw.py) reads every update aiogram validates the
  same way aiogram's model path does, and returns for every other;
* through the real webhook and inbox worker: never a 5xx, every update stored and
  processed to an end, and the event loop never stalls over 100 ms, measured while the
  updates are validated (tests/loop_lag.py).

Deterministic (derandomize), so CI sees the same examples each run.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from sqlalchemy import func, select

from bot.channel.messages import ChannelEvent, InboundMessage
from bot.runtime import Runtime
from bot.web.app import create_app, warm_routes
from channels.telegram.adapter import SECRET_HEADER, WEBHOOK_PATH
from channels.telegram.parse import parse_update
from channels.telegram.raw import Bounds, over_bounds, read_raw
from channels.telegram.settings import TelegramSettings
from storage.models import InboxStatus, InboxUpdate
from tests.channels.telegram.spec import customer_updates, rich_updates, updates, weighted
from tests.conftest import make_settings, settled
from tests.loop_lag import LoopLag
from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn, load_fixture
from tests.timed import TIMED

SECRET = "spec-webhook-secret_0123456789"
STALL = 0.1  # seconds: the most the loop may be held by our code at once
PROFILE = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ANY_UPDATE = weighted(updates(), customer_updates(), rich_updates(load_fixture("text")))


def summary(items: Any) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item, InboundMessage):
            out.append(
                (
                    item.sender_id,
                    item.platform_message_id,
                    item.thread_key,
                    item.text,
                    item.payload,
                    item.kind,
                    item.sender_name,
                    item.locale_hint,
                    item.contact_updates,
                    [a.kind for a in item.attachments],
                    item.received_at,
                )
            )
        else:
            assert isinstance(item, ChannelEvent)
            out.append((item.sender_id, item.kind, item.platform_event_id, item.reachable))
    return out


@settings(PROFILE, max_examples=400)
@given(ANY_UPDATE)
# found by this test: a message dated 0 (the epoch) was read as undated
@example(
    {
        "update_id": 1,
        "message": {
            "message_id": 0,
            "date": 0,
            "chat": {"id": 0, "type": "private"},
            "paid_media": {"star_count": 0, "paid_media": []},
            "from": {"id": 0, "is_bot": False, "first_name": ""},
        },
    }
)
# found by this test: an empty service object ({}) is present for aiogram
@example(
    {
        "update_id": 1,
        "message": {
            "message_id": 0,
            "date": 0,
            "chat": {"id": 0, "type": "private"},
            "video_chat_ended": {"duration": 0},
            "video_chat_started": {},
            "from": {"id": 0, "is_bot": False, "first_name": ""},
        },
    }
)
def test_tolerant_reader_agrees_with_aiogram(update: dict[str, Any]) -> None:
    if over_bounds(update, Bounds()) is not None:  # aiogram would take minutes
        assert read_raw(update) is not None, update  # the text is still read
        return
    try:
        expected = parse_update(update)
    except Exception:  # aiogram rejects it: the reader must still return
        read_raw(update)
        return
    got = read_raw(update)
    assert got is not None, update
    assert summary(got) == summary(expected), update


@pytest.fixture
async def app(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    async with TelegramStandIn() as tg:
        settings = make_settings(
            db_url,
            telegram=TelegramSettings(
                token=DEFAULT_TOKEN, webhook_secret=SECRET, mode="webhook", api_base=tg.base_url
            ),
        )
        runtime = Runtime(settings, channels=["telegram"])
        runtime.inbox.flood = None
        caplog.set_level(logging.WARNING)
        await runtime.start()  # the inbox worker validates while updates keep coming
        sandbox = runtime.channels["telegram"].sandbox  # type: ignore[attr-defined]
        async with asyncio.timeout(120):  # the model path, not the start-up fallback
            while not sandbox.ready:
                await asyncio.sleep(0.05)
        web = create_app(runtime)
        await warm_routes(web)  # as serve's start does: ASGITransport runs no lifespan
        transport = httpx.ASGITransport(app=web, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://cicbot") as client:
            yield runtime, client
        await runtime.stop()


@TIMED
async def test_spec_updates_never_5xx_never_stall(
    app: tuple[Runtime, httpx.AsyncClient],
) -> None:
    """The examples are drawn first (hypothesis's own bookkeeping is not the bot's), then
    posted one after the other while the inbox worker validates and answers them."""
    runtime, client = app
    loop = asyncio.get_running_loop()
    drawn: list[dict[str, Any]] = []

    @settings(PROFILE, max_examples=150)
    @given(ANY_UPDATE)
    def draw(update: dict[str, Any]) -> None:
        drawn.append(update)

    await loop.run_in_executor(None, draw)
    gc.collect()
    gc.freeze()  # the test's heap so far (pytest, hypothesis) is not the server's
    headers = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
    statuses: list[int] = []
    async with LoopLag() as lag:
        for n, update in enumerate(drawn, 1):
            update["update_id"] = n  # fresh, or the inbox dedupes it away
            body = json.dumps(update).encode()
            response = await client.post(WEBHOOK_PATH, content=body, headers=headers)
            assert response.status_code < 500, (response.status_code, update)
            statuses.append(response.status_code)
        await settled(runtime, timeout=120)  # the inbox worker finished every row
    print(lag.summary())
    async with runtime.sessions() as s:
        q = select(InboxUpdate.status, func.count()).group_by(InboxUpdate.status)
        counts = dict((await s.execute(q)).all())
    assert sum(counts.values()) == statuses.count(200) == len(statuses), counts
    assert not {InboxStatus.PENDING, InboxStatus.PROCESSING} & set(counts), counts
    assert counts.get(InboxStatus.DONE, 0) > 0 and counts.get(InboxStatus.DEAD, 0) > 0, counts
    assert lag.max_stall < STALL, lag.summary()
