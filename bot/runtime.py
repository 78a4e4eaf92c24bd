"""Wires the application together: database, engine, dispatcher and channels.

Channels are found through the `cicbot.channels` entry points (see pyproject.toml),
so the core depends on no platform library. The runtime is the channels' host
(bot.channel.host.ChannelHost): an adapter gets it typed as that narrow protocol, and
everything it writes goes through the core's modules.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import text

from bot.campaigns.runs import Campaigns
from bot.campaigns.scheduler import CampaignScheduler
from bot.channel import ChannelAdapter
from bot.channel.host import Admission, ChannelHost, Said
from bot.channel.inbound import Parser
from bot.channel.messages import InboundMessage
from bot.config import Settings
from bot.conversation import views
from bot.conversation.engine import HandleResult
from bot.conversation.records import MessageRecords
from bot.crm import consent
from bot.delivery import flood
from bot.delivery.dispatcher import Dispatcher
from bot.delivery.flood import FloodControl
from bot.delivery.inbox import Inbox
from bot.delivery.leases import Leases
from bot.desk.cards import DeskCards
from bot.desk.events import EventBus
from bot.desk.service import Desk
from bot.knowledge.base import build_matcher
from bot.ops.metrics import MeteredEngine, Metrics
from flows.catalog import default_catalog
from flows.options import FlowOptions
from storage.db import create_engine, is_sqlite, session_factory
from storage.migrate import upgrade_async
from storage.models import utcnow

if TYPE_CHECKING:
    from fastapi import APIRouter

log = logging.getLogger(__name__)
ChannelFactory = Callable[[ChannelHost], ChannelAdapter | None]
S = TypeVar("S", bound=BaseModel)
# a young-generation collection per 50,000 objects allocated and kept, not per 700: a turn
# allocates hundreds, so the default collected every message or two, promoted objects that
# died a moment later and so ran full collections every second; 200 customers x 20 turns
# (SQLite): 0.8 s of collections in a 6.7 s run (12 % of the CPU) became 0.2 s, each pause
# at most 25 ms (timed with gc.callbacks, outside bench/)
GC_THRESHOLDS = (50_000, 20, 10)


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
        email_linking=bool(getattr(settings.channel("email"), "enabled", False)),
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
        reopen_hours = settings.desk.reopen_hours
        self.engine.reopen_window = timedelta(hours=reopen_hours) if reopen_hours else None
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
        self.inbox.dispatcher = self.dispatcher  # replies born leased to it (bot/delivery)
        # made when the first channel registers a parser (`register_parser`)
        self.flood: FloodControl | None = None
        self.routes: list[tuple[APIRouter, int | None]] = []  # the channels' (add_routes)
        self.records = MessageRecords(self.sessions, self.db.dialect.name)
        self.agent_desk = DeskCards(self.desk)
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
        self._frozen: tuple[int, ...] | None = None  # the thresholds start() replaced
        for name, factory in channel_factories(channels, exclude).items():
            adapter = factory(self)  # the runtime as the channel's host, nothing more
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
            self._frozen = gc.get_threshold()
            gc.set_threshold(*GC_THRESHOLDS)

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        await self.inbox.stop()
        await self.dispatcher.stop()
        await self.leases.stop()
        if self._frozen is not None:  # a process that starts runtimes again (tests)
            gc.unfreeze()  # frees the old ones
            gc.set_threshold(*self._frozen)
            self._frozen = None
        for adapter in self.channels.values():
            await adapter.stop()
        await self.db.dispose()

    # ---- the channels' host (bot.channel.host.ChannelHost) ------------------------------

    def settings_of(self, channel: str, model: type[S]) -> S:
        section = self.settings.channel(channel)
        if not isinstance(section, model):
            raise TypeError(f"settings section {channel!r} is not a {model.__name__}")
        return section

    @property
    def company_name(self) -> str:
        return self.settings.company.name

    def register_parser(self, channel: str, parser: Parser) -> None:
        self.inbox.register(channel, parser)
        if self.flood is None:  # a channel takes customer input: the inbox paces floods
            limits = self.settings.limits
            self.flood = FloodControl(
                limits.messages_per_second, limits.burst, max_keys=limits.max_identities
            )
            self.inbox.flood = (
                self.limiter(limits.messages_per_second) if self._shared() else self.flood
            )

    async def accept(
        self, channel: str, dedupe_key: str, partition_key: str, payload: dict[str, Any]
    ) -> bool:
        return await self.inbox.accept(channel, dedupe_key, partition_key, payload)

    async def handle_now(self, message: InboundMessage) -> bool:
        return (await self.engine.handle(message)).duplicate

    async def deliver_pending(self, *, recipient: str | None = None) -> None:
        await self.dispatcher.drain(recipient=recipient)

    def limiter(
        self, per_second: float, burst: int | None = None, *, shared: bool = True
    ) -> Admission:
        limits = self.settings.limits
        return flood.limiter(
            self.sessions,
            per_second,
            limits.burst if burst is None else burst,
            shared=shared and self._shared(),
            max_keys=limits.max_identities,
        )

    def _shared(self) -> bool:
        return self.settings.limits.shared and self.db.dialect.name == "postgresql"

    def rate_limited(self, channel: str) -> None:
        self.metrics.rate_limited(channel)

    def add_routes(self, router: APIRouter, *, max_body_bytes: int | None = None) -> None:
        self.routes.append((router, max_body_bytes))

    async def conversation_open(
        self, channel: str, thread_key: str, *, pending: bool = False
    ) -> bool:
        return await views.conversation_open(self.sessions, channel, thread_key, pending=pending)

    async def history(self, channel: str, sender_id: str, limit: int) -> list[Said]:
        return await views.history(self.sessions, channel, sender_id, limit)

    async def contact_locale(self, channel: str, sender_id: str) -> str | None:
        return await views.contact_locale(self.sessions, channel, sender_id)

    async def withdraw_consent(self, contact_id: int, channel: str, via: str) -> bool:
        return await consent.withdraw(self.sessions, contact_id, channel, via)

    # ---- live views --------------------------------------------------------------------

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
