"""Wires the application together: database, engine, dispatcher and channels.

Channels are found through the `cicbot.channels` entry points (see pyproject.toml),
so the core depends on no platform library.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib.metadata import entry_points

from sqlalchemy import text

from bot.campaigns.runs import Campaigns
from bot.campaigns.scheduler import CampaignScheduler
from bot.channel import ChannelAdapter
from bot.config import Settings
from bot.conversation.engine import HandleResult
from bot.delivery.dispatcher import Dispatcher
from bot.delivery.flood import FloodControl
from bot.delivery.inbox import Inbox
from bot.delivery.leases import Leases
from bot.desk.events import EventBus
from bot.desk.service import Desk
from bot.knowledge.base import build_matcher
from bot.ops.metrics import MeteredEngine, Metrics
from flows.catalog import default_catalog
from flows.options import FlowOptions
from storage.db import create_engine, is_sqlite, session_factory
from storage.migrate import upgrade_async
from storage.models import utcnow

log = logging.getLogger(__name__)
ChannelFactory = Callable[["Runtime"], ChannelAdapter | None]


def channel_factories(
    names: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> dict[str, ChannelFactory]:
    """The channel factories, importing only the wanted modules (aiogram is slow to import)."""
    return {
        ep.name: ep.load()
        for ep in entry_points(group="cicbot.channels")
        if (names is None or ep.name in names) and ep.name not in exclude
    }


def flow_options(settings: Settings) -> FlowOptions:
    return FlowOptions(
        company_name=settings.company.name,
        complaint=settings.complaint,
        winback=settings.winback,
        knowledge_base=settings.knowledge_base,
        identity_link=settings.identity_link,
        email_linking=settings.email.enabled,
        max_failed_answers=settings.flows.max_failed_answers,
        max_selfservice_misses=settings.flows.max_selfservice_misses,
    )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        channels: Sequence[str] | None = None,
        exclude: Sequence[str] = ("console",),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.db = create_engine(settings.database.url, echo=settings.database.echo)
        self.sessions = session_factory(self.db)
        self.catalog = default_catalog()
        options = flow_options(settings)
        self.channels: dict[str, ChannelAdapter] = {}
        self.leases = Leases(
            self.sessions,
            self.db,
            lease_seconds=settings.dispatcher.lease_seconds,
            heartbeat_seconds=settings.dispatcher.heartbeat_seconds,
        )
        self.dispatcher = Dispatcher(
            self.sessions,
            self.channels,
            settings.dispatcher,
            self.leases,
            skip_locked=not is_sqlite(settings.database.url),
        )
        self.metrics = Metrics()
        self.metrics.watch(self.db)
        self.engine = MeteredEngine(
            self.sessions,
            options,
            self.catalog,
            default_locale=settings.company.default_locale,
            timezone=settings.company.timezone,
            matcher=build_matcher(options.knowledge_base),
            on_commit=self.dispatcher.notify,
            clock=clock,
            hours=settings.business_hours,
        )
        self.engine.metrics = self.metrics
        self.dispatcher.observe = self.metrics.sent
        self.events = EventBus()
        self.engine.on_handled = self._published
        self.desk = Desk(self.engine, self.events)
        self.inbox = Inbox(
            self.sessions,
            self.engine,
            self.leases,
            dialect=self.db.dialect.name,
            max_attempts=settings.dispatcher.inbox_max_attempts,
            max_crashes=settings.dispatcher.inbox_max_crashes,
            poll_interval=settings.dispatcher.poll_interval_seconds,
        )
        self.inbox.observe = self.metrics.inbox
        # made by bot.delivery.flood.attach when a channel asks
        self.flood: FloodControl | None = None
        self.campaigns = Campaigns(
            self.sessions,
            self.engine,
            settings.campaigns.definitions,
            channels=lambda: list(self.channels),
            timezone=settings.company.timezone,
            builtin=settings.campaigns.builtin,
            reminder_after_hours=settings.campaigns.reminder_after_hours,
            concurrency=settings.campaigns.concurrency,
            clock=clock,
        )
        self.scheduler: CampaignScheduler | None = None
        self._frozen = False  # start() moved the heap out of the collector's reach
        for name, factory in channel_factories(channels, exclude).items():
            adapter = factory(self)
            if adapter is not None:
                self.channels[name] = adapter

    async def start(self, *, dispatch: bool = True) -> None:
        """`dispatch=False` leaves draining the outbox to the caller (the terminal chat)."""
        if self.settings.database.auto_migrate:
            await upgrade_async(self.settings.database.url)
        for adapter in self.channels.values():
            await adapter.start()
            log.info("channel %s started", adapter.name)
        if dispatch:
            # before the workers claim: rows a dead process held are due at once
            await self.leases.start()
            await self.dispatcher.start()
            await self.inbox.start()
            if self.settings.campaigns.scheduler:
                self.scheduler = CampaignScheduler(
                    self.campaigns,
                    self.db,
                    timezone=self.settings.company.timezone,
                    nightly=self.nightly,
                )
                await self.scheduler.start()
            # what start-up loaded (modules, aiogram's and pydantic's schemas, ...) is kept
            # for good: out of the collector's reach, a full collection scans only what was
            # allocated since, and its pause (all threads, the event loop too) stays short
            gc.freeze()
            self._frozen = True

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        await self.inbox.stop()
        await self.dispatcher.stop()
        await self.leases.stop()
        if self._frozen:  # a process that starts runtimes again (tests) frees the old ones
            gc.unfreeze()
            self._frozen = False
        for adapter in self.channels.values():
            await adapter.stop()
        await self.db.dispose()

    def _published(self, result: HandleResult) -> None:
        if result.status in ("queued", "agent"):
            self.events.publish({"type": "queue"})
            self.events.publish({"type": "conversation", "id": result.conversation_id})

    async def nightly(self) -> dict[str, object]:
        """The leader's nightly housekeeping: value segments, lifecycle phases, retention."""
        from bot.crm import lifecycle, retention, value

        crm = self.settings.crm
        async with self.sessions() as s, s.begin():
            segments = await value.recompute(s, crm)
            phases = await lifecycle.run(s, crm)
            purged = await retention.purge(s, crm.retention_days)
        log.info("nightly: value %s, lifecycle %s, retention %s", segments, phases, purged)
        return {"value": segments, "lifecycle": phases, "purged": purged}

    async def healthy(self) -> bool:
        try:
            async with self.db.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            log.exception("health check: database unavailable")
            return False
