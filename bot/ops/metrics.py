"""Prometheus metrics in the text exposition format (served at GET /metrics by bot/web/metrics.py).

Each Runtime has its own registry (not prometheus_client's global one): tests and several
runtimes in one process then never share or double-register a metric. Counters and
histograms move where the work happens (the engine, the dispatcher's and the inbox's
`observe` hooks); backlogs, dead letters, campaign progress and the queue are counted in
the database at scrape time, so they are right however many workers share it.

Labels are bounded: channel and campaign names from the configuration, fixed result and
status names; never a contact, a recipient or a text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.channel.messages import InboundMessage
from bot.conversation.engine import Engine, HandleResult
from bot.delivery.group import GroupCommit
from storage.models import (
    CampaignDelivery,
    Conversation,
    ConversationStatus,
    DeadLetter,
    InboxStatus,
    InboxUpdate,
    OutboxMessage,
    OutboxStatus,
    utcnow,
)

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT = 5.0  # a scrape while the database hangs answers with cicbot_database_up 0
HANDLE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        process_collector.ProcessCollector(registry=r)
        platform_collector.PlatformCollector(registry=r)
        gc_collector.GCCollector(registry=r)
        self.inbound = Counter(
            "cicbot_inbound_messages",
            "Inbound messages handled by the engine; result: handled, duplicate, error.",
            ["channel", "result"],
            registry=r,
        )
        self.handle_seconds = Histogram(
            "cicbot_handle_seconds",
            "Time to handle one inbound message (one transaction, replies queued).",
            ["channel"],
            buckets=HANDLE_BUCKETS,
            registry=r,
        )
        self.outbound = Counter(
            "cicbot_outbound_sends",
            "Outbox send attempts; result: sent, retry, failed (permanently).",
            ["channel", "result"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "cicbot_delivery_seconds",
            "From an outbox row's creation to its successful send.",
            ["channel"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        self.webhooks = Counter(
            "cicbot_webhook_updates",
            "Raw platform updates offered to the inbox; result: accepted, duplicate.",
            ["channel", "result"],
            registry=r,
        )
        self.inbox_processed = Counter(
            "cicbot_inbox_processed",
            "Inbox rows processed; outcome: done, ignored, retry, dead.",
            ["channel", "outcome"],
            registry=r,
        )
        self.platform_rate_limited = Counter(
            "cicbot_platform_rate_limited",
            "Minutes in which a platform dropped events for the app (Slack app_rate_limited).",
            ["channel"],
            registry=r,
        )
        # computed from the database at scrape time
        self.db_up = Gauge(
            "cicbot_database_up", "1 if the scrape could query the database.", registry=r
        )
        self.outbox_backlog = Gauge(
            "cicbot_outbox_backlog",
            "Outbox rows not yet sent (pending or being sent).",
            ["channel"],
            registry=r,
        )
        self.outbox_oldest = Gauge(
            "cicbot_outbox_oldest_seconds",
            "Age of the oldest unsent outbox row (0 when none).",
            registry=r,
        )
        self.inbox_backlog = Gauge(
            "cicbot_inbox_backlog",
            "Inbox rows waiting to be processed (pending or processing).",
            ["channel"],
            registry=r,
        )
        self.inbox_dead = Gauge(
            "cicbot_inbox_dead", "Inbox rows parked as dead.", ["channel"], registry=r
        )
        self.dead_letters = Gauge(
            "cicbot_dead_letters",
            "Rows in dead_letters (work a flow or the inbox gave up on).",
            ["source", "channel"],
            registry=r,
        )
        self.campaign_deliveries = Gauge(
            "cicbot_campaign_deliveries",
            "Campaign deliveries of all runs by campaign and status.",
            ["campaign", "status"],
            registry=r,
        )
        self.queue_length = Gauge(
            "cicbot_queue_length", "Conversations waiting for an agent.", registry=r
        )
        self.statements = Counter(
            "cicbot_db_statements",
            "SQL statements sent to the database (bench/telegram.py divides by messages).",
            registry=r,
        )
        self.group_batches = Gauge(
            "cicbot_group_commit_batches",
            "Transactions a group commit made since the start (bot/delivery/group.py).",
            ["group"],
            registry=r,
        )
        self.group_items = Gauge(
            "cicbot_group_commit_items",
            "Items (webhook rows, inbox rows) those transactions committed together.",
            ["group"],
            registry=r,
        )
        self.scheduler_leader = Gauge(
            "cicbot_scheduler_leader",
            "1 if this process leads the campaign scheduler.",
            registry=r,
        )

    # ---- hooks ------------------------------------------------------------------------

    def watch(self, engine: AsyncEngine) -> None:
        """Count every statement `engine` executes (one increment per cursor execute; an
        executemany of many rows counts once, as it is one round trip)."""

        def count(*_: object) -> None:
            self.statements.inc()

        event.listen(engine.sync_engine, "before_cursor_execute", count)

    def handled(self, channel: str, result: str, seconds: float) -> None:
        self.inbound.labels(channel, result).inc()
        self.handle_seconds.labels(channel).observe(seconds)

    def sent(self, row: OutboxMessage, result: str) -> None:
        """The dispatcher's hook: one send attempt's result (sent, retry, failed)."""
        self.outbound.labels(row.channel, result).inc()
        if result == "sent":
            age = (utcnow() - row.created_at).total_seconds()
            self.delivery_seconds.labels(row.channel).observe(max(age, 0.0))

    def rate_limited(self, channel: str) -> None:
        self.platform_rate_limited.labels(channel).inc()

    def inbox(self, channel: str, event: str) -> None:
        """The inbox's hook: accepted/duplicate on arrival, an InboxStatus when processed."""
        if event in ("accepted", "duplicate"):
            self.webhooks.labels(channel, event).inc()
        else:
            outcome = "retry" if event == InboxStatus.PENDING else event
            self.inbox_processed.labels(channel, outcome).inc()

    # ---- scrape -----------------------------------------------------------------------

    async def render(
        self,
        sessions: async_sessionmaker[AsyncSession],
        leader: Callable[[], bool],
        groups: Sequence[GroupCommit[Any, Any]] = (),
    ) -> bytes:
        """The exposition; `leader`: whether this process runs the campaign scheduler;
        `groups`: the inbox's group commits (their batch figures)."""
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT), sessions() as s:
                snap = await _snapshot(s)
        except Exception:
            log.warning("metrics: the database could not be queried", exc_info=True)
            snap = None
        # no await from here on: a concurrent scrape never sees half-set gauges
        self.scheduler_leader.set(1 if leader() else 0)
        self.db_up.set(0 if snap is None else 1)
        for group in groups:
            self.group_batches.labels(group.name).set(group.batches)
            self.group_items.labels(group.name).set(group.items)
        if snap is not None:
            snap.apply(self)
        return generate_latest(self.registry)


@dataclass
class Snapshot:
    outbox: dict[str, int] = field(default_factory=dict)
    outbox_oldest: float = 0.0
    inbox: dict[tuple[str, str], int] = field(default_factory=dict)
    dead_letters: dict[tuple[str, str], int] = field(default_factory=dict)
    campaigns: dict[tuple[str, str], int] = field(default_factory=dict)
    queued: int = 0

    def apply(self, m: Metrics) -> None:
        for gauge in (m.outbox_backlog, m.inbox_backlog, m.inbox_dead):
            gauge.clear()  # a channel whose backlog is gone must not keep its last value
        for gauge in (m.dead_letters, m.campaign_deliveries):
            gauge.clear()
        for channel, n in self.outbox.items():
            m.outbox_backlog.labels(channel).set(n)
        m.outbox_oldest.set(self.outbox_oldest)
        for (channel, status), n in self.inbox.items():
            if status == InboxStatus.DEAD:
                m.inbox_dead.labels(channel).set(n)
            else:
                m.inbox_backlog.labels(channel).inc(n)
        for (source, channel), n in self.dead_letters.items():
            m.dead_letters.labels(source, channel).set(n)
        for (campaign, status), n in self.campaigns.items():
            m.campaign_deliveries.labels(campaign, status).set(n)
        m.queue_length.set(self.queued)


async def _snapshot(s: AsyncSession) -> Snapshot:
    snap = Snapshot()
    unsent = (OutboxStatus.PENDING, OutboxStatus.SENDING)
    outbox = await s.execute(
        select(OutboxMessage.channel, func.count(), func.min(OutboxMessage.created_at))
        .where(OutboxMessage.status.in_(unsent))
        .group_by(OutboxMessage.channel)
    )
    now = utcnow()
    for channel, n, oldest in outbox:
        snap.outbox[channel] = n
        snap.outbox_oldest = max(snap.outbox_oldest, (now - oldest).total_seconds())
    waiting = (InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.DEAD)
    inbox = await s.execute(
        select(InboxUpdate.channel, InboxUpdate.status, func.count())
        .where(InboxUpdate.status.in_(waiting))
        .group_by(InboxUpdate.channel, InboxUpdate.status)
    )
    snap.inbox = {(c, st): n for c, st, n in inbox}
    letters = await s.execute(
        select(DeadLetter.source, DeadLetter.channel, func.count()).group_by(
            DeadLetter.source, DeadLetter.channel
        )
    )
    snap.dead_letters = {(src, c): n for src, c, n in letters}
    campaigns = await s.execute(
        select(CampaignDelivery.campaign, CampaignDelivery.status, func.count()).group_by(
            CampaignDelivery.campaign, CampaignDelivery.status
        )
    )
    snap.campaigns = {(c, st): n for c, st, n in campaigns}
    snap.queued = (
        await s.scalar(
            select(func.count())
            .select_from(Conversation)
            .where(Conversation.status == ConversationStatus.QUEUED)
        )
        or 0
    )
    return snap


class MeteredEngine(Engine):
    """The engine, timed and counted per channel, without touching its code."""

    metrics: Metrics | None = None

    async def handle(self, msg: InboundMessage) -> HandleResult:
        start = time.perf_counter()
        try:
            result = await super().handle(msg)
        except Exception:  # a cancellation (shutdown) is not the message's error
            self._count(msg.channel, "error", start)
            raise
        self._count(msg.channel, "duplicate" if result.duplicate else "handled", start)
        return result

    async def handle_in(self, s: AsyncSession, msg: InboundMessage) -> HandleResult:
        start = time.perf_counter()
        result = await super().handle_in(s, msg)  # raising, it goes on to `handle`: counted there
        self._count(msg.channel, "duplicate" if result.duplicate else "handled", start)
        return result

    def _count(self, channel: str, result: str, start: float) -> None:
        if self.metrics is not None:
            self.metrics.handled(channel, result, time.perf_counter() - start)
