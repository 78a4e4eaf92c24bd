"""Campaigns: scheduled follow-ups (docs/campaigns.md).

A run selects its audience with one SQL query (bot.campaigns.definitions.Audience compiled by
`audience_query`), then delivers in batches through `Engine.start_flows_in` (a reminder,
one by one, through `Engine.remind`). The delivery row is written in the transaction that
starts the flow, after the send-time checks (reachability, consent / opt-out, frequency
cap, cooldown, quiet hours) ran on freshly read, locked rows: the outbox rows and the
delivery commit together or not at all. The
database allows one delivery per (run, contact) and one sent delivery per (campaign,
subject), so a scheduler firing twice, two workers, or a run killed half-way and run
again never send anyone a second message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, func, insert, select, update
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
from bot.conversation.engine import FlowStart
from storage.db import SerialSession
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
BATCH = 50  # at most this many contacts' deliveries in one transaction
ALREADY = "already"  # the outcome of a delivery the database had already recorded
RETRYABLE = ("quiet_hours", "busy")  # recorded as deferred: a resumed run tries again
_DELIVERIES: Table = CampaignDelivery.__table__  # type: ignore[assignment]
_NEW_DELIVERIES = insert(_DELIVERIES)  # built once: its compilation is cached


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

    async def turns(self, n: int) -> None:
        """`n` turns at once (a batch): waits for the first, the next caller for the one
        after the last."""
        await self.turn()
        self.next_at += self.interval * (n - 1)

    def give_back(self, n: int = 1) -> None:
        self.next_at -= self.interval * n


def batch_size(rate: float) -> int:
    """Contacts delivered in one transaction: a twentieth of a second's worth at the
    campaign's rate (1 for a slow campaign, at most BATCH)."""
    return max(1, min(BATCH, int(rate / 20)))


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


@dataclass
class Facts:
    """What the send-time checks read about contacts (`Campaigns.facts`)."""

    consent: dict[int, bool] = field(default_factory=dict)  # newest marketing consent
    recent: dict[int, int] = field(default_factory=dict)  # sent deliveries in the cap window
    cooled: set[int] = field(default_factory=set)  # sent this campaign within its cooldown


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
        # SQLite's transactions take turns (storage.db.SerialSession): batches in flight
        # would only queue ahead of the dispatcher, whose sends must go on meanwhile
        serial = issubclass(self.sessions.class_, SerialSession)
        slots = asyncio.Semaphore(1 if serial else self.concurrency)
        finished = 0
        failures: list[BaseException] = []

        async def some(batch: Sequence[Target]) -> None:
            nonlocal finished
            async with slots:
                if failures:
                    return  # a batch failed: start no more, let those in flight end
                await pace.turns(len(batch))
                try:
                    if c.reminder:
                        outcomes = [await self.deliver(c, run_id, t) for t in batch]
                    else:
                        outcomes = await self.deliver_batch(c, run_id, batch)
                except BaseException as exc:
                    failures.append(exc)
                    raise
                pace.give_back(sum(o != SENT for o in outcomes))
            for outcome in outcomes:
                report.outcomes[outcome] += 1
                finished += 1
                if progress:
                    progress(finished, report.targeted)

        # a few batches in flight, each one transaction on its own contacts (the database
        # keeps one delivery per contact); the pace keeps the rate. A reminder goes alone.
        size = 1 if c.reminder else batch_size(c.rate_per_second)
        batches = [targets[i : i + size] for i in range(0, len(targets), size)]
        await asyncio.gather(*(some(b) for b in batches), return_exceptions=True)
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

    async def facts(
        self, s: AsyncSession, c: CampaignSettings, contact_ids: Sequence[int], now: datetime
    ) -> Facts:
        """What the send-time checks read, for many contacts in a few queries."""
        ids = list(contact_ids)
        found = Facts()
        if c.purpose == MARKETING:
            rows = await s.execute(
                select(Consent.contact_id, Consent.granted)
                .where(Consent.contact_id.in_(ids), Consent.purpose == MARKETING)
                .order_by(Consent.id)
            )
            found.consent = {contact_id: granted for contact_id, granted in rows}  # newest wins
        recent = await s.execute(
            select(CampaignDelivery.contact_id, func.count())
            .where(
                CampaignDelivery.contact_id.in_(ids),
                CampaignDelivery.status == SENT,
                CampaignDelivery.sent_at > now - CAP_WINDOW,
            )
            .group_by(CampaignDelivery.contact_id)
        )
        found.recent = {contact_id: int(n) for contact_id, n in recent}
        if c.cooldown_days > 0:
            found.cooled = set(
                (
                    await s.execute(
                        select(CampaignDelivery.contact_id).where(
                            CampaignDelivery.contact_id.in_(ids),
                            CampaignDelivery.campaign == c.name,
                            CampaignDelivery.status == SENT,
                            CampaignDelivery.sent_at > now - timedelta(days=c.cooldown_days),
                        )
                    )
                ).scalars()
            )
        return found

    def judge(
        self, c: CampaignSettings, contact: Contact, channel: str, facts: Facts, now: datetime
    ) -> str | None:
        """Why this reachable contact may not get this campaign's message now (None: they
        may), from the facts read for them."""
        if c.purpose == MARKETING:
            newest = facts.consent.get(contact.id)
            if newest is False:
                return "opted_out"
            if c.legal_basis == "consent" and newest is not True:
                return "no_consent"
            if c.legal_basis == "existing_customer" and channel != "email":
                return "no_consent"
            if contact.lifecycle_phase == LifecyclePhase.TERMINATED:
                return "terminated"
        if facts.recent.get(contact.id, 0) >= c.frequency_cap:
            return "capped"
        if contact.id in facts.cooled:
            return "cooldown"
        if in_quiet_hours(c.quiet_hours, now, contact.timezone, self.timezone):
            return "quiet_hours"
        return None

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
        facts = await self.facts(s, c, [contact.id], now)
        return self.judge(c, contact, identity.channel, facts, now)

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

    async def deliver_batch(
        self, c: CampaignSettings, run_id: int, targets: Sequence[Target]
    ) -> list[str]:
        """Contacts of a run (not a reminder's) in one transaction: the outcome per target,
        as `deliver`'s.

        The chats' in-process locks are taken first, in one order (as the inbox's group
        commit takes them), then the transaction locks the contacts and reads, for all at
        once, what the send-time checks need; the contacts that pass get their flows
        started together (`Engine.start_flows_in`: a few multi-row statements for the whole
        batch) and their delivery rows in one insert, in the same transaction. Those who
        may not are recorded together at the end. One commit for the batch: a kill leaves
        all of it or none, and the run, resumed, does the rest.

        The flow starts share the transaction without savepoints; if one meets a unique
        constraint (another run delivered that contact's subject first), the batch is
        undone and done again with a savepoint per contact (its start and its delivery
        row), where that one is recorded as `already_sent` and the others go out."""
        try:
            return await self._deliver_batch(c, run_id, targets, careful=False)
        except IntegrityError:
            return await self._deliver_batch(c, run_id, targets, careful=True)

    async def _deliver_batch(
        self, c: CampaignSettings, run_id: int, targets: Sequence[Target], *, careful: bool
    ) -> list[str]:
        engine = self.engine
        if engine is None:
            raise RuntimeError("campaigns without an engine cannot deliver (preview only)")
        assert c.flow is not None and not c.reminder
        ids = sorted({t.contact_id for t in targets})
        async with self.sessions() as s:
            guess = await self.routes(s, c, ids)
        keys = sorted({(r.channel, r.external_id) for r in guess.values()})
        outcomes: dict[int, str] = {}
        skips: list[tuple[Target, str, str | None]] = []
        started_any = False
        async with contextlib.AsyncExitStack() as held:
            for channel, thread in keys:  # sorted: no batch and inbox group wait in a ring
                await held.enter_async_context(engine.hold_thread(channel, thread))
            async with self.sessions() as s, s.begin():
                now = self.clock()
                contacts = {
                    x.id: x
                    for x in (
                        await s.execute(
                            select(Contact)
                            .where(Contact.id.in_(ids))
                            .order_by(Contact.id)
                            .with_for_update()
                        )
                    ).scalars()
                }
                routes = await self.routes(s, c, ids)  # reachable now, under the locks
                facts = await self.facts(s, c, ids, now)
                recorded: dict[int, str] = {
                    contact_id: status
                    for contact_id, status in (
                        await s.execute(
                            select(CampaignDelivery.contact_id, CampaignDelivery.status).where(
                                CampaignDelivery.run_id == run_id,
                                CampaignDelivery.contact_id.in_(ids),
                            )
                        )
                    ).all()
                }
                going: list[tuple[Target, Route, str | None]] = []  # (.., recorded status)
                for t in targets:
                    if t.contact_id in outcomes:
                        continue
                    status = recorded.get(t.contact_id)
                    if status is not None and status != DEFERRED:
                        outcomes[t.contact_id] = ALREADY
                        continue
                    route = routes.get(t.contact_id)
                    contact = contacts.get(t.contact_id)
                    if route is None or contact is None:
                        outcomes[t.contact_id] = ""  # recorded with the skips below
                        skips.append((t, "unreachable", None))
                        continue
                    reason = self.judge(c, contact, route.channel, facts, now)
                    if reason is None and (route.channel, route.external_id) not in keys:
                        reason = "busy"  # the customer changed channel a moment ago: next run
                    if reason is not None:
                        outcomes[t.contact_id] = ""
                        skips.append((t, reason, route.channel))
                        continue
                    outcomes[t.contact_id] = ""
                    going.append((t, route, status))
                if careful:
                    # one savepoint per contact: another run or worker that delivered one
                    # first undoes that one's start alone
                    for item in going:
                        t, route, _ = item
                        try:
                            async with s.begin_nested():
                                [started] = await engine.start_flows_in(
                                    s, [self._flow_start(c, run_id, t, route)]
                                )
                                if started is not None:
                                    await self._write_sent(s, c, run_id, [(item, started)], now)
                        except IntegrityError:
                            skips.append((t, "already_sent", route.channel))
                            continue
                        if started is None:
                            skips.append((t, "busy", route.channel))
                            continue
                        outcomes[t.contact_id] = SENT
                        started_any = True
                elif going:
                    results = await engine.start_flows_in(
                        s, [self._flow_start(c, run_id, t, route) for t, route, _ in going]
                    )
                    sent: list[tuple[tuple[Target, Route, str | None], HandleResult]] = []
                    for item, started in zip(going, results, strict=True):
                        t, route, _ = item
                        if started is None:
                            skips.append((t, "busy", route.channel))
                            continue
                        sent.append((item, started))
                        outcomes[t.contact_id] = SENT
                    # a unique constraint met here undoes the batch: again, with savepoints
                    await self._write_sent(s, c, run_id, sent, now)
                    started_any = bool(sent)
                await self._record_many(s, c, run_id, skips, recorded, outcomes)
        if started_any and engine.on_commit:
            engine.on_commit()  # wake the dispatcher: the batch's messages are committed
        return [outcomes[t.contact_id] for t in targets]

    def _flow_start(self, c: CampaignSettings, run_id: int, t: Target, route: Route) -> FlowStart:
        assert c.flow is not None
        extra: dict[str, Any] = {"campaign": c.name, "run_id": run_id}
        if t.case_reference:
            extra["case_reference"] = t.case_reference
        return FlowStart(
            route.channel,
            route.external_id,
            c.flow,
            extra=extra,
            footer_key="campaign.stop_notice" if c.purpose == MARKETING else None,
            campaign=c.name,
        )

    async def _write_sent(
        self,
        s: AsyncSession,
        c: CampaignSettings,
        run_id: int,
        sent: Sequence[tuple[tuple[Target, Route, str | None], HandleResult]],
        now: datetime,
    ) -> None:
        """The delivery rows of flows just started, in their transaction: new ones in one
        multi-row insert, those deferred before (quiet hours, busy) updated: this run tried
        again. The unique constraints speak here."""
        new: list[dict[str, Any]] = []
        for (t, route, status), result in sent:
            values = {
                "subject": t.subject,
                "status": SENT,
                "reason": None,
                "channel": route.channel,
                "flow": c.flow,
                "conversation_id": result.conversation_id,
                "outbox_id": result.outbox_ids[0] if result.outbox_ids else None,
                "sent_at": now,
            }
            if status is None:
                new.append(
                    {"run_id": run_id, "campaign": c.name, "contact_id": t.contact_id}
                    | values
                    | {"created_at": utcnow()}
                )
            else:
                await s.execute(
                    update(CampaignDelivery)
                    .where(
                        CampaignDelivery.run_id == run_id,
                        CampaignDelivery.contact_id == t.contact_id,
                    )
                    .values(**values)
                )
        if new:
            await s.execute(_NEW_DELIVERIES, new)

    async def _record_many(
        self,
        s: AsyncSession,
        c: CampaignSettings,
        run_id: int,
        skips: Sequence[tuple[Target, str, str | None]],
        recorded: dict[int, str],
        outcomes: dict[int, str],
    ) -> None:
        """The batch's contacts who get nothing now: new rows in one insert, deferred ones
        updated; in a savepoint, and one by one if a racing run recorded one first."""
        if not skips:
            return

        def values(t: Target, reason: str, channel: str | None) -> dict[str, Any]:
            return {
                "subject": t.subject,
                "status": DEFERRED if reason in RETRYABLE else SKIPPED,
                "reason": reason,
                "channel": channel,
                "flow": c.flow,
            }

        async def write(items: Sequence[tuple[Target, str, str | None]]) -> None:
            new = [
                {"run_id": run_id, "campaign": c.name, "contact_id": t.contact_id}
                | values(t, reason, channel)
                for t, reason, channel in items
                if t.contact_id not in recorded
            ]
            if new:
                await s.execute(insert(CampaignDelivery), new)
            for t, reason, channel in items:
                if t.contact_id in recorded:
                    await s.execute(
                        update(CampaignDelivery)
                        .where(
                            CampaignDelivery.run_id == run_id,
                            CampaignDelivery.contact_id == t.contact_id,
                        )
                        .values(**values(t, reason, channel))
                    )

        try:
            async with s.begin_nested():
                await write(skips)
        except IntegrityError:
            for item in skips:
                try:
                    async with s.begin_nested():
                        await write([item])
                except IntegrityError:
                    outcomes[item[0].contact_id] = ALREADY
                    continue
                outcomes.setdefault(item[0].contact_id, "")
        for t, reason, _ in skips:
            if not outcomes.get(t.contact_id):
                status = DEFERRED if reason in RETRYABLE else SKIPPED
                outcomes[t.contact_id] = f"{status}:{reason}"

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
