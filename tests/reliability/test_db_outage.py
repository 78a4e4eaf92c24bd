"""The database goes away under load and comes back; so does the IMAP server.

A TCP proxy (tcp_proxy.py) sits between the server and PostgreSQL: `cut()` resets every
connection and refuses new ones, as a database restart does. While it is away the
webhooks answer 503 (never 200: nothing was persisted; never 500), /healthz answers 503,
and the stand-ins' redeliveries go on. Once it is back, the redeliveries are accepted,
the dispatcher and the inbox worker carry on by themselves, and nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channel import SendResult
from bot.config import CampaignsSection, DispatcherSettings
from bot.delivery.inbox import Unavailable
from bot.runtime import Runtime
from channels.email.adapter import EmailChannel
from channels.slack.settings import SlackSettings
from channels.telegram.settings import TelegramSettings
from storage.models import InboxUpdate, OutboxMessage
from tests.channels.email.helpers import (  # noqa: F401 (fixtures)
    Dovecot,
    SmtpSink,
    dovecot_fixture,
    email_settings,
    mail,
    smtp_sink_fixture,
    tls_cert_fixture,
)
from tests.conftest import RecordingChannel, inbound, make_settings
from tests.reliability.harness import TG_SECRET, Load, check, post, settle
from tests.reliability.tcp_proxy import TcpProxy
from tests.server import serve
from tests.standins.slack_api import BOT_TOKEN, SIGNING_SECRET, SlackStandIn
from tests.standins.telegram_api import DEFAULT_TOKEN, TelegramStandIn

OUTAGE_SECONDS = 3.0
LEASE_SECONDS = 10.0  # longer than the outage: a send in flight at the cut is not repeated


_EXPECTED = {(c, a) for c in ("telegram", "slack") for a in ("200", "503")}


def settings_via(url: str, tg: TelegramStandIn, slack: SlackStandIn) -> Runtime:
    settings = make_settings(
        url,
        # the job store's sync driver would block this event loop, and so the proxy in it
        campaigns=CampaignsSection(scheduler=False),
        dispatcher=DispatcherSettings(
            base_backoff_seconds=0.1,
            max_backoff_seconds=1.0,
            poll_interval_seconds=0.2,
            lease_seconds=LEASE_SECONDS,
        ),
        telegram=TelegramSettings(
            token=DEFAULT_TOKEN,
            webhook_secret=TG_SECRET,
            mode="webhook",
            api_base=tg.base_url,
            rate_per_second=1000,
            chat_rate_per_second=100,
            chat_burst=30,
        ),
        slack=SlackSettings(
            bot_token=BOT_TOKEN,
            signing_secret=SIGNING_SECRET,
            api_base=slack.api_base,
            channel_rate_per_second=100,
            channel_burst=30,
        ),
    )
    return Runtime(settings, channels=["telegram", "slack"])


@pytest.mark.postgres
async def test_database_outage_under_load(
    fresh_pg: str,
    db: AsyncEngine,
    tg: TelegramStandIn,
    slack: SlackStandIn,
    logs: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = make_url(fresh_pg)
    proxy = await TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    via_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    tag = uuid.uuid4().hex[:8]
    load = Load(tg, slack, tag=f"db{tag}", telegram=10, slack_users=10, messages=4, pause=0.3)
    probes = Load(tg, slack, tag=f"probe{tag}", telegram=1, slack_users=1, messages=1)
    try:
        async with serve(settings_via(via_proxy, tg, slack)) as (base, runtime):
            sending = asyncio.create_task(load.run(lambda _: base))
            async with asyncio.timeout(60):
                while sum(u.acked_at is not None for u in load.updates) < len(load.updates) // 4:
                    await asyncio.sleep(0.02)
            await proxy.cut()
            cut_at = time.monotonic()
            async with httpx.AsyncClient(timeout=10) as client:
                await asyncio.sleep(0.5)  # the requests running at the cut are answered
                for update in probes.updates:
                    assert await post(client, base, update) == 503, update.channel
                health = await client.get(base + "/healthz")
                assert health.status_code == 503
                await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
                acked_during = [u for u in load.updates if u.acked_at and u.acked_at > cut_at + 0.5]
                await proxy.restore()
                await probes.run(lambda _: base, timeout=60)
                assert (await client.get(base + "/healthz")).status_code == 200
            await sending
            await settle(db, timeout=60)
            for worker in (runtime.dispatcher, runtime.inbox):
                assert worker._task is not None and not worker._task.done(), worker.name
    finally:
        await proxy.stop()

    assert acked_during == []  # nothing was acknowledged while the database was away
    answers = {a for u in load.updates for a in u.answers}
    odd = sorted({(u.channel, a) for u in load.updates for a in u.answers} - _EXPECTED)
    errors = [
        f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
    ]
    assert answers <= {"200", "503"}, (odd, errors[:5])  # never a 500, never a dropped socket
    assert sum(u.answers["503"] for u in load.updates) > 0  # the outage was met under load
    for run in (load, probes):
        outcome = await check(db, run)
        assert outcome.acknowledged == len(run.updates)
        assert outcome.in_history == len(run.updates), outcome
        assert outcome.replies_due >= len(run.customers), outcome  # one each at least
        assert outcome.not_sent == 0, outcome
        assert outcome.missing == {}, outcome
        assert outcome.doubled == {}, outcome


@pytest.mark.postgres
async def test_a_flapping_database_only_ever_means_unavailable(fresh_pg: str) -> None:
    """Connections cut at every stage (connecting, setting up, mid-statement): persisting
    an update either works or raises Unavailable (the webhooks' 503), nothing else.
    Regression: a cut while SQLAlchemy set a new connection up escaped as asyncpg's own
    InterfaceError, and the Slack webhook answered 500."""
    target = make_url(fresh_pg)
    proxy = await TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    via_proxy = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    runtime = Runtime(make_settings(via_proxy), channels=[])
    outcomes: Counter[str] = Counter()
    others: list[BaseException] = []
    stop = asyncio.Event()

    async def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                await runtime.inbox.accept("slack", f"flap-{n}-{i}", f"U{n}", {"i": i})
                outcomes["stored"] += 1
            except Unavailable:
                outcomes["unavailable"] += 1
            except Exception as exc:
                others.append(exc)
            await asyncio.sleep(random.uniform(0, 0.01))

    writers = [asyncio.create_task(writer(n)) for n in range(20)]
    try:
        for _ in range(25):
            await asyncio.sleep(random.uniform(0.05, 0.4))
            await proxy.cut()
            await asyncio.sleep(random.uniform(0.05, 0.5))
            await proxy.restore()
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*writers)
        await runtime.db.dispose()
        await proxy.stop()
    assert others == [], others[:3]
    assert outcomes["stored"] > 0 and outcomes["unavailable"] > 0, outcomes


async def test_sent_record_retried_while_leased(sqlite_url: str) -> None:
    """The database fails as sends are recorded: the record is retried (the lease still
    holds), so nothing is sent twice and nothing stays `sending`."""
    rt = Runtime(make_settings(sqlite_url), channels=[])
    rt.channels["test"] = channel = RecordingChannel()
    await rt.start(dispatch=False)
    try:
        await rt.engine.handle(inbound("hello"))
        record, failures = rt.dispatcher._sent, [OSError("database unavailable")] * 2

        async def flaky(done: list[tuple[OutboxMessage, SendResult]]) -> None:
            if failures:
                raise failures.pop()
            await record(done)

        rt.dispatcher._sent = flaky  # type: ignore[method-assign]
        await rt.dispatcher.drain()
        assert channel.sent and not failures
        await rt.dispatcher.drain()
        async with rt.sessions() as s:
            statuses = set((await s.execute(select(OutboxMessage.status))).scalars())
        assert statuses == {"sent"}
        assert len({m.outbox_id for m in channel.sent}) == len(channel.sent)
    finally:
        await rt.stop()


async def test_imap_poller_reconnects(
    sqlite_url: str, smtp_sink: SmtpSink, dovecot: Dovecot
) -> None:
    """The poller's IDLE connection is reset and the server refuses connections for a
    while; mail that arrives meanwhile is fetched once the server is back."""
    folder = "r" + uuid.uuid4().hex[:10]
    imap = await dovecot.client()
    assert (await imap.create(folder)).result == "OK"
    await imap.logout()
    proxy = await TcpProxy("127.0.0.1", dovecot.port).start()
    settings = email_settings(
        sqlite_url, smtp_sink, dovecot, folder=folder, imap_extra={"port": proxy.port}
    )
    rt = Runtime(settings, channels=["email"])
    await rt.start(dispatch=False)
    try:
        channel = rt.channels["email"]
        assert isinstance(channel, EmailChannel) and channel.poller is not None
        async with asyncio.timeout(10):
            while channel.poller.rounds < 1:
                await asyncio.sleep(0.02)
        await proxy.cut()
        await dovecot.append(mail("while away", message_id=f"<away-{folder}@example.org>"), folder)
        await asyncio.sleep(1.5)  # a reconnect or two is refused
        await proxy.restore()
        async with asyncio.timeout(20):
            while True:
                async with rt.sessions() as s:
                    if await s.scalar(select(func.count(InboxUpdate.id))):
                        break
                await asyncio.sleep(0.1)
        assert proxy.connections >= 2  # it did connect again
    finally:
        await rt.stop()
        await proxy.stop()
