"""Campaigns: scheduled follow-ups (docs/campaigns.md).

A run selects its audience with one SQL query (bot.campaigns.definitions.Audience compiled by
`audience_query`), then delivers to each contact through `Engine.start_flow`. The
delivery row is written inside start_flow's transaction, after the send-time checks
(reachability, consent / opt-out, frequency cap, cooldown, quiet hours) ran on freshly
read, locked rows: the outbox rows and the delivery commit together or not at all. The
database allows one delivery per (run, contact) and one sent delivery per (campaign,
subject), so a scheduler firing twice, two workers, or a run killed half-way and run
again never send anyone a second message.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.campaigns import figures as campaign_figures
from bot.campaigns.audience import audience_query
from bot.campaigns.definitions import (
    DEFERRED,
    MARKETING,
    SENT,
    SKIPPED,
    CampaignSettings,
    builtin_campaigns,
    in_quiet_hours,
)
from storage.models import (
    CampaignDefinition,
    CampaignDelivery,
    CampaignRun,
    Consent,
    Contact,
    Conversation,
    ConversationStatus,
    Identity,
    LifecyclePhase,
    utcnow,
)

if TYPE_CHECKING:
    from bot.conversation.engine import Engine, HandleResult

CAP_WINDOW = timedelta(days=30)
CHUNK = 500  # contacts whose channels are looked up in one query
ALREADY = "already"  # the outcome of a delivery the database had already recorded
RETRYABLE = ("quiet_hours", "busy")  # recorded as deferred: a resumed run tries again


class Pace:
    """Turns at `rate` per second, shared by the deliveries in flight; a turn not used
    for a message (skipped, already sent) is given back."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_at = time.monotonic()

    async def turn(self) -> None:
        now = time.monotonic()
        at = max(self.next_at, now - 1.0)  # up to a second's worth caught up after a lull
        self.next_at = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)

    def give_back(self) -> None:
        self.next_at -= self.interval


class Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Target:
    contact_id: int
    subject: str | None = None  # e.g. the case reference a CSAT survey is about
    case_reference: str | None = None
    conversation_id: int | None = None  # a reminder's: the conversation with the open flow


@dataclass(frozen=True)
class Route:
    identity_id: int
    channel: str
    external_id: str


@dataclass
class RunReport:
    campaign: str
    run_id: int | None
    run_key: str | None
    targeted: int
    dry_run: bool = False
    outcomes: Counter[str] = field(default_factory=Counter)  # sent, skipped:<reason>, ...
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "run_id": self.run_id,
            "run_key": self.run_key,
            "targeted": self.targeted,
            "dry_run": self.dry_run,
            "outcomes": dict(sorted(self.outcomes.items())),
            "seconds": round(self.seconds, 3),
        }


class Campaigns:
    """The campaign service of one runtime: definitions, runs, figures."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        engine: Engine | None,
        configured: Sequence[CampaignSettings] = (),
        *,
        channels: Callable[[], Sequence[str]] = lambda: (),
        timezone: str = "UTC",
        builtin: bool = True,
        reminder_after_hours: float = 24,
        concurrency: int = 4,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.builtin = builtin
        self.concurrency = concurrency
        self.reminder_after_hours = reminder_after_hours
        self.sessions = sessions
        self.engine = engine  # None: definitions, previews, dry runs and figures only
        self.configured = list(configured)
        self.channels = channels  # the channels that can send now
        self.timezone = timezone
        self.clock = clock

    # ---- definitions -----------------------------------------------------------------

    async def all(self) -> dict[str, CampaignSettings]:
        """Built-in, then config.yaml, then stored (API/CLI) ones; later ones win by name."""
        builtin = builtin_campaigns(self.reminder_after_hours) if self.builtin else []
        found = {c.name: c for c in builtin}
        found.update({c.name: c for c in self.configured})
        async with self.sessions() as s:
            for row in (await s.execute(select(CampaignDefinition))).scalars():
                found[row.name] = CampaignSettings.model_validate(row.definition)
        return found

    async def get(self, name: str) -> CampaignSettings:
        found = (await self.all()).get(name)
        if found is None:
            raise LookupError(f"no campaign {name!r}")
        return found

    async def save(self, c: CampaignSettings) -> None:
        async with self.sessions() as s, s.begin():
            row = (
                await s.execute(select(CampaignDefinition).where(CampaignDefinition.name == c.name))
            ).scalar_one_or_none()
            if row is None:
                s.add(CampaignDefinition(name=c.name, definition=c.definition()))
            else:
                row.definition = c.definition()

    # ---- audience --------------------------------------------------------------------

    async def targets(self, c: CampaignSettings, now: datetime) -> list[Target]:
        async with self.sessions() as s:
            rows = (await s.execute(audience_query(c, now))).all()
        seen: set[int] = set()
        out = []
        for contact_id, subject, ref, conversation_id in rows:
            if contact_id in seen:  # one message per contact and run; the rest next run
                continue
            seen.add(contact_id)
            subject = None if subject is None else str(subject)
            out.append(Target(contact_id, subject, ref, conversation_id))
        return out

    async def preview(self, name: str, sample: int = 10) -> dict[str, Any]:
        """The audience now, with what a run would do to each contact: the same checks as
        the dry run and the real run (channel, consent, cap, cooldown, quiet hours, a busy
        conversation), so that preview, dry run and run agree on the same audience."""
        c = await self.get(name)
        targets = await self.targets(c, self.clock())
        outcomes: Counter[str] = Counter()
        shown: dict[int, str] = {}
        for i, t in enumerate(targets):
            outcome = await self._dry(c, t)
            outcomes[outcome] += 1
            if i < sample:
                shown[t.contact_id] = outcome
        async with self.sessions() as s:
            contacts = (
                (
                    await s.execute(
                        select(Contact).where(Contact.id.in_(list(shown))).order_by(Contact.id)
                    )
                )
                .scalars()
                .all()
            )
        return {
            "campaign": name,
            "audience": len(targets),
            "would_send": outcomes.get("would_send", 0),
            "outcomes": dict(sorted(outcomes.items())),
            "channels": sorted(self.channels()),
            "sample": [
                {
                    "id": x.id,
                    "name": x.name,
                    "lifecycle_phase": x.lifecycle_phase,
                    "outcome": shown[x.id],
                }
                for x in contacts
            ],
        }

    # ---- runs ------------------------------------------------------------------------

    async def run(
        self,
        name: str,
        *,
        run_key: str | None = None,
        dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None,
        limit: int | None = None,
    ) -> RunReport:
        """Run (or resume: same `run_key`) a campaign. `limit` stops after that many
        contacts, as a kill would (the tests' way to interrupt a run)."""
        c = await self.get(name)
        started = time.monotonic()
        now = self.clock()
        targets = await self.targets(c, now)
        key = run_key or now.strftime("%Y-%m-%dT%H:%M")
        report = RunReport(c.name, None, key, len(targets), dry_run)
        if dry_run:
            for i, t in enumerate(targets):
                report.outcomes[await self._dry(c, t)] += 1
                if progress:
                    progress(i + 1, len(targets))
            report.seconds = time.monotonic() - started
            return report
        run_id, report.targeted = await self._open_run(c.name, key, targets)
        report.run_id = run_id
        if limit is not None:
            targets = targets[:limit]
        pace = Pace(c.rate_per_second)
        slots = asyncio.Semaphore(self.concurrency)
        finished = 0
        failures: list[BaseException] = []

        async def one(t: Target, done: set[int], routes: dict[int, Route]) -> None:
            nonlocal finished
            async with slots:
                if failures:
                    return  # a delivery failed: start no more, let those in flight end
                if t.contact_id in done:
                    outcome = ALREADY
                else:
                    await pace.turn()
                    try:
                        outcome = await self.deliver(c, run_id, t, routes.get(t.contact_id))
                    except BaseException as exc:
                        failures.append(exc)
                        raise
                    if outcome != SENT:
                        pace.give_back()
            report.outcomes[outcome] += 1
            finished += 1
            if progress:
                progress(finished, report.targeted)

        for start in range(0, len(targets), CHUNK):
            chunk = targets[start : start + CHUNK]
            async with self.sessions() as s:
                done = set(
                    (
                        await s.execute(
                            select(CampaignDelivery.contact_id).where(
                                CampaignDelivery.run_id == run_id,
                                CampaignDelivery.status != DEFERRED,
                                CampaignDelivery.contact_id.in_([t.contact_id for t in chunk]),
                            )
                        )
                    ).scalars()
                )
                routes = await self.routes_for(s, c, chunk)
            # a few deliveries in flight: each is its own transaction on its own contact
            # (the database keeps one delivery per contact); the pace keeps the rate
            await asyncio.gather(*(one(t, done, routes) for t in chunk), return_exceptions=True)
            if failures:
                raise failures[0]
        if limit is not None and limit < report.targeted:
            report.seconds = time.monotonic() - started
            return report  # stopped as a kill would: the run stays open
        await self._close_run(run_id, deferred=any(k.startswith(DEFERRED) for k in report.outcomes))
        report.seconds = time.monotonic() - started
        return report

    async def _open_run(self, name: str, key: str, targets: Sequence[Target]) -> tuple[int, int]:
        """(run id, contacts targeted). A resumed run targets those it recorded before and
        those its audience holds now: its figures add up to every contact it touched."""
        for _ in range(3):
            try:
                async with self.sessions() as s, s.begin():
                    q = select(CampaignRun).where(
                        CampaignRun.campaign == name, CampaignRun.run_key == key
                    )
                    run = (await s.execute(q)).scalar_one_or_none()
                    if run is None:
                        run = CampaignRun(campaign=name, run_key=key, targeted=len(targets))
                        s.add(run)
                        await s.flush()
                    else:
                        recorded = (
                            await s.execute(
                                select(CampaignDelivery.contact_id).where(
                                    CampaignDelivery.run_id == run.id
                                )
                            )
                        ).scalars()
                        run.targeted = len({t.contact_id for t in targets} | set(recorded))
                        run.status = "running"
                        run.finished_at = None
                    return run.id, run.targeted
            except IntegrityError:  # another scheduler opened it first: use theirs
                continue
        raise RuntimeError("could not open the campaign run")  # pragma: no cover

    async def _close_run(self, run_id: int, *, deferred: bool) -> None:
        async with self.sessions() as s, s.begin():
            run = await s.get(CampaignRun, run_id)
            assert run is not None
            run.status = "deferred" if deferred else "done"
            run.finished_at = self.clock()

    async def routes(
        self, s: AsyncSession, c: CampaignSettings, contact_ids: Sequence[int]
    ) -> dict[int, Route]:
        """The channel policy, for many contacts in one query: the channel the customer
        last used and can be reached on, then the campaign's fallbacks in order."""
        available = set(self.channels())
        q = (
            select(Identity)
            .where(Identity.contact_id.in_(list(contact_ids)), Identity.reachable.is_(True))
            .order_by(Identity.last_seen_at.desc().nulls_last(), Identity.id.desc())
        )
        by_contact: dict[int, list[Identity]] = {}
        for i in (await s.execute(q)).scalars():
            if i.channel in available:
                by_contact.setdefault(i.contact_id, []).append(i)
        found: dict[int, Route] = {}
        for contact_id, identities in by_contact.items():
            for choice in c.channels:
                hit = next(
                    (i for i in identities if choice == "last_used" or i.channel == choice), None
                )
                if hit is not None:
                    found[contact_id] = Route(hit.id, hit.channel, hit.external_id)
                    break
        return found

    async def conversation_routes(
        self, s: AsyncSession, targets: Sequence[Target]
    ) -> dict[int, Route]:
        """A reminder goes where the flow runs: the conversation's own identity."""
        available = set(self.channels())
        ids = [t.conversation_id for t in targets if t.conversation_id is not None]
        q = (
            select(Conversation.contact_id, Identity)
            .join(Identity, Identity.id == Conversation.identity_id)
            .where(Conversation.id.in_(ids), Identity.reachable.is_(True))
        )
        return {
            contact_id: Route(i.id, i.channel, i.external_id)
            for contact_id, i in (await s.execute(q)).all()
            if i.channel in available
        }

    async def routes_for(
        self, s: AsyncSession, c: CampaignSettings, targets: Sequence[Target]
    ) -> dict[int, Route]:
        if c.reminder:
            return await self.conversation_routes(s, targets)
        return await self.routes(s, c, [t.contact_id for t in targets])

    async def _channel(self, s: AsyncSession, c: CampaignSettings, t: Target) -> Route | None:
        return (await self.routes_for(s, c, [t])).get(t.contact_id)

    async def check(
        self,
        s: AsyncSession,
        c: CampaignSettings,
        contact: Contact,
        identity: Identity,
        now: datetime,
    ) -> str | None:
        """Why this contact may not get this campaign's message now (None: they may)."""
        if not identity.reachable:
            return "unreachable"
        newest = (
            await s.execute(
                select(Consent.granted)
                .where(Consent.contact_id == contact.id, Consent.purpose == MARKETING)
                .order_by(Consent.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if c.purpose == MARKETING:
            if newest is False:
                return "opted_out"
            if c.legal_basis == "consent" and newest is not True:
                return "no_consent"
            if c.legal_basis == "existing_customer" and identity.channel != "email":
                return "no_consent"
            if contact.lifecycle_phase == LifecyclePhase.TERMINATED:
                return "terminated"
        recent = (
            await s.execute(
                select(func.count()).where(
                    CampaignDelivery.contact_id == contact.id,
                    CampaignDelivery.status == SENT,
                    CampaignDelivery.sent_at > now - CAP_WINDOW,
                )
            )
        ).scalar_one()
        if recent >= c.frequency_cap:
            return "capped"
        if c.cooldown_days > 0:
            again = (
                await s.execute(
                    select(CampaignDelivery.id)
                    .where(
                        CampaignDelivery.contact_id == contact.id,
                        CampaignDelivery.campaign == c.name,
                        CampaignDelivery.status == SENT,
                        CampaignDelivery.sent_at > now - timedelta(days=c.cooldown_days),
                    )
                    .limit(1)
                )
            ).first()
            if again is not None:
                return "cooldown"
        if in_quiet_hours(c.quiet_hours, now, contact.timezone, self.timezone):
            return "quiet_hours"
        return None

    async def _dry(self, c: CampaignSettings, t: Target) -> str:
        async with self.sessions() as s:
            route = await self._channel(s, c, t)
            contact = await s.get(Contact, t.contact_id)
            assert contact is not None
            if route is None:
                return f"{SKIPPED}:unreachable"
            identity = await s.get(Identity, route.identity_id)
            assert identity is not None
            reason = await self.check(s, c, contact, identity, self.clock())
            if reason is None and not c.reminder and await self._busy(s, route):
                reason = "busy"
        if reason is None:
            return "would_send"
        return f"{DEFERRED if reason in RETRYABLE else SKIPPED}:{reason}"

    async def _busy(self, s: AsyncSession, route: Route) -> bool:
        """What makes Engine.start_flow decline: the customer's open conversation on that
        channel is with an agent (or waits for one), or runs another flow."""
        conv = (
            await s.execute(
                select(Conversation).where(
                    Conversation.channel == route.channel,
                    Conversation.thread_key == route.external_id,
                    Conversation.status != ConversationStatus.CLOSED,
                )
            )
        ).scalar_one_or_none()
        return conv is not None and (
            conv.status != ConversationStatus.BOT or bool((conv.flow_state or {}).get("flow"))
        )

    async def _precheck(self, c: CampaignSettings, t: Target, route: Route) -> str | None:
        """The send-time checks before the engine is asked, in the dry run's order: a
        contact without consent is `no_consent` whether or not they are busy just now.
        They run again inside the delivery's transaction, on locked rows."""
        async with self.sessions() as s:
            contact = await s.get(Contact, t.contact_id)
            identity = await s.get(Identity, route.identity_id)
            if contact is None or identity is None:
                return "unreachable"
            return await self.check(s, c, contact, identity, self.clock())

    async def deliver(
        self, c: CampaignSettings, run_id: int, t: Target, route: Route | bool | None = True
    ) -> str:
        """One contact of a run: "sent", "already", "skipped:<reason>", "deferred:<reason>".
        `route`: the channel when the caller looked it up already (None: unreachable)."""
        if route is True:
            async with self.sessions() as s:
                done = (
                    await s.execute(
                        select(CampaignDelivery.status).where(
                            CampaignDelivery.run_id == run_id,
                            CampaignDelivery.contact_id == t.contact_id,
                        )
                    )
                ).scalar_one_or_none()
                if done is not None and done != DEFERRED:
                    return ALREADY
                route = await self._channel(s, c, t)
        if not isinstance(route, Route):
            return await self._record(c, run_id, t, "unreachable")
        channel, external, identity_id = route.channel, route.external_id, route.identity_id
        early = await self._precheck(c, t, route)
        if early is not None:
            return await self._record(c, run_id, t, early, channel)
        now = self.clock()
        engine = self.engine
        if engine is None:
            raise RuntimeError("campaigns without an engine cannot deliver (preview only)")

        async def within(s: AsyncSession, result: HandleResult) -> None:
            contact = (
                await s.execute(
                    select(Contact)
                    .where(Contact.id == t.contact_id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
            ).scalar_one()
            fresh = (
                await s.execute(
                    select(Identity)
                    .where(Identity.id == identity_id)
                    .execution_options(populate_existing=True)
                )
            ).scalar_one()
            reason = await self.check(s, c, contact, fresh, now)
            if reason is not None:
                raise Skip(reason)
            row = (
                await s.execute(
                    select(CampaignDelivery)
                    .where(
                        CampaignDelivery.run_id == run_id,
                        CampaignDelivery.contact_id == t.contact_id,
                    )
                    .with_for_update()
                )
            ).scalar_one_or_none()
            if row is not None and row.status != DEFERRED:
                raise Skip(ALREADY)
            if row is None:
                row = CampaignDelivery(run_id=run_id, campaign=c.name, contact_id=t.contact_id)
                s.add(row)
            row.subject = t.subject
            row.status = SENT
            row.reason = None
            row.channel = channel
            row.flow = c.flow or await self._running_flow(s, result.conversation_id)
            row.conversation_id = result.conversation_id
            row.outbox_id = result.outbox_ids[0] if result.outbox_ids else None
            row.sent_at = now
            await s.flush()  # the unique constraints speak here

        extra: dict[str, Any] = {"campaign": c.name, "run_id": run_id}
        if t.case_reference:
            extra["case_reference"] = t.case_reference
        try:
            if c.reminder:
                assert c.trigger is not None and t.conversation_id is not None
                quiet_since = now - timedelta(days=c.trigger.days)
                started = await engine.remind(
                    t.conversation_id, quiet_since=quiet_since, in_transaction=within
                )
            else:
                assert c.flow is not None
                started = await engine.start_flow(
                    channel,
                    external,
                    c.flow,
                    extra=extra,
                    footer_key="campaign.stop_notice" if c.purpose == MARKETING else None,
                    in_transaction=within,
                    campaign=c.name,
                )
        except Skip as skip:
            if skip.reason == ALREADY:
                return ALREADY
            return await self._record(c, run_id, t, skip.reason, channel)
        except IntegrityError:
            # another run or worker delivered it first: recorded, so that the run's
            # figures still add up (each targeted contact has its one outcome)
            return await self._record(c, run_id, t, "already_sent", channel)
        if started is None:
            # a reminder's customer answered, an agent took over, or the flow ended
            reason = "not_abandoned" if c.reminder else "busy"
            return await self._record(c, run_id, t, reason, channel)
        return SENT

    async def _running_flow(self, s: AsyncSession, conversation_id: int | None) -> str | None:
        conv = await s.get(Conversation, conversation_id) if conversation_id else None
        flow = (conv.flow_state or {}).get("flow") if conv is not None else None
        return str(flow) if flow else None

    async def _record(
        self, c: CampaignSettings, run_id: int, t: Target, reason: str, channel: str | None = None
    ) -> str:
        status = DEFERRED if reason in RETRYABLE else SKIPPED
        try:
            async with self.sessions() as s, s.begin():
                row = (
                    await s.execute(
                        select(CampaignDelivery).where(
                            CampaignDelivery.run_id == run_id,
                            CampaignDelivery.contact_id == t.contact_id,
                        )
                    )
                ).scalar_one_or_none()
                if row is None:
                    row = CampaignDelivery(run_id=run_id, campaign=c.name, contact_id=t.contact_id)
                    s.add(row)
                elif row.status not in (DEFERRED,):
                    return ALREADY
                row.subject = t.subject
                row.status = status
                row.reason = reason
                row.channel = channel
                row.flow = c.flow
        except IntegrityError:
            return ALREADY
        return f"{status}:{reason}"

    # ---- figures ---------------------------------------------------------------------

    async def status(self, name: str) -> dict[str, Any]:
        """Figures of a campaign over all its runs (bot.campaigns.figures)."""
        await self.get(name)
        async with self.sessions() as s:
            return await campaign_figures.figures(s, name)
