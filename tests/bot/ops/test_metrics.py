"""GET /metrics: the counters move by what happened, the gauges match the database, and
only loopback or the bearer token may read it. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import func, select, update

from bot.campaigns.scheduler import CampaignScheduler
from bot.channel import PermanentSendError, TransientSendError
from bot.config import ServerSettings
from bot.delivery.inbox import ParseError
from bot.runtime import Runtime
from bot.web.app import create_app
from storage.models import (
    CampaignDelivery,
    CampaignRun,
    Conversation,
    DeadLetter,
    OutboxMessage,
    OutboxStatus,
)
from tests.channels.webchat.helpers import open_socket
from tests.conftest import inbound, make_settings, recorder
from tests.server import serve

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for one not exported (a counter never moved, a cleared gauge)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def scrape(runtime: Runtime, client: tuple[str, int] = ("127.0.0.1", 40000)) -> Samples:
    transport = httpx.ASGITransport(app=create_app(runtime), client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as http:
        r = await http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return parse(r.text)


async def count(runtime: Runtime, *where: Any) -> int:
    async with runtime.sessions() as s:
        n = await s.scalar(select(func.count()).select_from(OutboxMessage).where(*where))
    return n or 0


async def test_inbound_outbound_and_backlog(runtime: Runtime) -> None:
    first = inbound("hello", user="u1")
    await runtime.engine.handle(first)
    await runtime.engine.handle(inbound("hi", user="u2"))
    await runtime.engine.handle(inbound("I need help", user="u1"))
    await runtime.engine.handle(first)  # a redelivery
    pending = await count(runtime, OutboxMessage.status == OutboxStatus.PENDING)
    assert pending >= 3

    m = await scrape(runtime)
    assert value(m, "cicbot_inbound_messages_total", channel="test", result="handled") == 3
    assert value(m, "cicbot_inbound_messages_total", channel="test", result="duplicate") == 1
    assert value(m, "cicbot_handle_seconds_count", channel="test") == 4
    assert value(m, "cicbot_outbox_backlog", channel="test") == pending
    assert value(m, "cicbot_outbox_oldest_seconds") >= 0
    assert total(m, "cicbot_outbound_sends_total") == 0

    # one transient error (retried at once), then everything goes out
    recorder(runtime).failures.append(TransientSendError("429", retry_after=0))
    await runtime.dispatcher.drain()
    sent = await count(runtime, OutboxMessage.status == OutboxStatus.SENT)
    assert sent == pending == len(recorder(runtime).sent)
    m = await scrape(runtime)
    assert value(m, "cicbot_outbound_sends_total", channel="test", result="retry") == 1
    assert value(m, "cicbot_outbound_sends_total", channel="test", result="sent") == sent
    assert value(m, "cicbot_delivery_seconds_count", channel="test") == sent
    assert value(m, "cicbot_outbox_backlog", channel="test") == 0

    # a permanent failure counts the attempt; the recipient's other rows fail unsent
    await runtime.engine.handle(inbound("hello", user="u3"))
    recorder(runtime).failures.append(PermanentSendError("blocked"))
    await runtime.dispatcher.drain()
    m = await scrape(runtime)
    assert value(m, "cicbot_outbound_sends_total", channel="test", result="failed") == 1
    assert value(m, "cicbot_outbound_sends_total", channel="test", result="sent") == sent
    assert await count(runtime, OutboxMessage.status == OutboxStatus.FAILED) >= 1
    assert value(m, "cicbot_outbox_backlog", channel="test") == 0


async def test_inbox_dead_letters_campaigns_queue_leader(runtime: Runtime) -> None:
    def parser(payload: dict[str, Any]) -> list[Any]:
        if payload.get("bad"):
            raise ParseError("not an update")
        return []

    runtime.inbox.register("test", parser)
    assert await runtime.inbox.accept("test", "k1", "p1", {"ok": 1})
    assert not await runtime.inbox.accept("test", "k1", "p1", {"ok": 1})
    assert await runtime.inbox.accept("test", "k2", "p2", {"bad": 1})
    m = await scrape(runtime)
    assert value(m, "cicbot_webhook_updates_total", channel="test", result="accepted") == 2
    assert value(m, "cicbot_webhook_updates_total", channel="test", result="duplicate") == 1
    assert value(m, "cicbot_inbox_backlog", channel="test") == 2

    await runtime.inbox.drain()
    result = await runtime.engine.handle(inbound("hello", user="u1"))
    async with runtime.sessions() as s, s.begin():
        s.add(DeadLetter(source="engine", channel="test", error="RuntimeError: boom"))
        for status in ("sent", "skipped", "skipped"):  # one delivery per (run, contact)
            run = CampaignRun(campaign="winback", run_key=str(uuid.uuid4()))
            s.add(run)
            await s.flush()
            s.add(
                CampaignDelivery(
                    run_id=run.id, campaign="winback", contact_id=result.contact_id, status=status
                )
            )
        await s.execute(
            update(Conversation)
            .where(Conversation.id == result.conversation_id)
            .values(status="queued")
        )
    async with runtime.sessions() as s:
        letters = await s.execute(
            select(DeadLetter.source, DeadLetter.channel, func.count()).group_by(
                DeadLetter.source, DeadLetter.channel
            )
        )
        expected = {(src, ch): n for src, ch, n in letters}

    m = await scrape(runtime)
    assert value(m, "cicbot_inbox_backlog", channel="test") == 0
    assert value(m, "cicbot_inbox_dead", channel="test") == 1
    assert value(m, "cicbot_inbox_processed_total", channel="test", outcome="ignored") == 1
    assert value(m, "cicbot_inbox_processed_total", channel="test", outcome="dead") == 1
    assert expected[("engine", "test")] >= 1
    for (src, ch), n in expected.items():
        assert value(m, "cicbot_dead_letters", source=src, channel=ch) == n
    assert value(m, "cicbot_campaign_deliveries", campaign="winback", status="sent") == 1
    assert value(m, "cicbot_campaign_deliveries", campaign="winback", status="skipped") == 2
    assert value(m, "cicbot_queue_length") == 1
    assert value(m, "cicbot_database_up") == 1
    assert value(m, "cicbot_scheduler_leader") == 0

    scheduler = CampaignScheduler(runtime.campaigns, runtime.db)
    assert await scheduler.try_lead()
    runtime.scheduler = scheduler
    try:
        assert value(await scrape(runtime), "cicbot_scheduler_leader") == 1
    finally:
        runtime.scheduler = None
        await scheduler.stop()
    assert value(await scrape(runtime), "cicbot_scheduler_leader") == 0


async def test_loopback_only_without_token(sqlite_url: str) -> None:
    runtime = Runtime(make_settings(sqlite_url), channels=[])
    try:
        assert value(await scrape(runtime, ("::1", 5)), "cicbot_database_up") == 1
        transport = httpx.ASGITransport(app=create_app(runtime), client=("203.0.113.7", 5))
        async with httpx.AsyncClient(transport=transport, base_url="http://bot") as http:
            r = await http.get("/metrics")
            assert r.status_code == 403
            assert "CICBOT_SERVER__METRICS_TOKEN" in r.text
            # a proxy on the same host that forwards the client's address does not help
            r = await http.get("/metrics", headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403
    finally:
        await runtime.db.dispose()


async def test_bearer_token_from_anywhere(sqlite_url: str) -> None:
    server = ServerSettings(metrics_token=SecretStr("s3cret-metrics-token"))
    runtime = Runtime(make_settings(sqlite_url, server=server), channels=[])
    try:
        for client in (("203.0.113.7", 5), ("127.0.0.1", 5)):
            transport = httpx.ASGITransport(app=create_app(runtime), client=client)
            async with httpx.AsyncClient(transport=transport, base_url="http://bot") as http:
                assert (await http.get("/metrics")).status_code == 401
                for wrong in ("Bearer nope", "Basic s3cret-metrics-token", "s3cret-metrics-token"):
                    r = await http.get("/metrics", headers={"Authorization": wrong})
                    assert r.status_code == 401, wrong
                    assert r.headers["www-authenticate"].startswith("Bearer")
                r = await http.get(
                    "/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"}
                )
                assert r.status_code == 200
                assert value(parse(r.text), "cicbot_database_up") == 1
    finally:
        await runtime.db.dispose()


async def test_database_down_still_answers(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/missing/dir/cicbot.db"
    runtime = Runtime(make_settings(url), channels=[])
    try:
        m = await scrape(runtime)
        assert value(m, "cicbot_database_up") == 0
        assert total(m, "process_cpu_seconds_total") > 0  # the process' own metrics still
    finally:
        await runtime.db.dispose()


def test_runtimes_do_not_share_metrics(sqlite_url: str) -> None:
    a = Runtime(make_settings(sqlite_url), channels=[])
    b = Runtime(make_settings(sqlite_url), channels=[])
    a.metrics.handled("test", "handled", 0.01)
    assert a.metrics.registry is not b.metrics.registry
    assert (
        a.metrics.registry.get_sample_value(
            "cicbot_inbound_messages_total", {"channel": "test", "result": "handled"}
        )
        == 1
    )
    assert (
        b.metrics.registry.get_sample_value(
            "cicbot_inbound_messages_total", {"channel": "test", "result": "handled"}
        )
        is None
    )


# ---- a real server: the web chat over a WebSocket, then a scrape over HTTP -------------


@pytest.fixture
async def server(db_url: str) -> AsyncIterator[tuple[str, Runtime]]:
    async with serve(make_settings(db_url)) as (base, runtime):
        yield base, runtime


async def test_web_chat_through_a_real_server(server: tuple[str, Runtime]) -> None:
    base, runtime = server
    frame = {"type": "message", "id": str(uuid.uuid4()), "text": "hello"}
    async with await open_socket(base, lang="en") as ws:
        assert json.loads(await ws.recv())["type"] == "history"
        for _ in range(2):  # the second is a redelivery of the same message id
            await ws.send(json.dumps(frame))
            async with asyncio.timeout(10):
                while json.loads(await ws.recv())["type"] != "ack":
                    pass

    async with httpx.AsyncClient(base_url=base) as http:
        async with asyncio.timeout(10):
            while True:
                r = await http.get("/metrics")
                assert r.status_code == 200
                m = parse(r.text)
                sent = await count(runtime, OutboxMessage.status == OutboxStatus.SENT)
                counted = value(m, "cicbot_outbound_sends_total", channel="webchat", result="sent")
                if sent and counted == sent:
                    break
                await asyncio.sleep(0.05)
    assert value(m, "cicbot_inbound_messages_total", channel="webchat", result="handled") == 1
    # web chat messages go through the inbox like every channel's: the redelivery is
    # counted (and dropped) there, the engine handles the message once
    assert value(m, "cicbot_webhook_updates_total", channel="webchat", result="accepted") == 1
    assert value(m, "cicbot_webhook_updates_total", channel="webchat", result="duplicate") == 1
    assert value(m, "cicbot_outbound_sends_total", channel="webchat", result="sent") == sent
    assert value(m, "cicbot_delivery_seconds_count", channel="webchat") == sent
    assert value(m, "cicbot_handle_seconds_count", channel="webchat") == 1
