"""The conversation engine: one inbound message, one database transaction.

dedupe → identity → conversation (locked) → inbound touchpoint → decide (pure,
flows.dialogue) → actions → replies as touchpoints and outbox rows → commit.
What the bot says unasked (a flow a campaign starts, a reminder) takes the same path
from the locked conversation on (`_unprompted`). The dispatcher is woken after the
commit; nothing is sent from here.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channel.messages import ChannelEvent, Choice, InboundMessage, OutboundMessage
from bot.conversation import onboarding, reopen
from bot.conversation.actions import ActionRunner, selfservice_note
from bot.conversation.locks import KeyedLocks
from bot.conversation.turn import Turn
from flows import dialogue, reminder
from flows.actions import Escalate, LogSelfService, OpenCase, SetConsent
from flows.catalog import Catalog, normalize_locale
from flows.hours import BusinessHours
from flows.knowledge import Matcher
from flows.model import Button, ContactFacts, Context, Decision, Reply, UserInput, clean_text
from flows.options import FlowOptions
from storage import queries
from storage.db import is_unavailable
from storage.models import (
    Contact,
    Conversation,
    ConversationStatus,
    DeadLetter,
    Direction,
    Identity,
    OutboxMessage,
    OutboxStatus,
    Touchpoint,
    utcnow,
)

log = logging.getLogger(__name__)

# Called inside the transaction that changes a conversation, with its session, so that what
# an observer writes (an outbox row for an agent channel's card, say) commits or rolls back
# with the change. Kinds: "escalated" (it entered the queue), "left_queue", and
# "customer_message" (the customer wrote while the conversation was queued or an agent's;
# detail: text, attachments) from the engine; "claimed", "resolved", "handed_back" and
# "transferred" (detail: agent_id, agent_name) from the desk.
ConversationObserver = Callable[
    [AsyncSession, Conversation, str, Mapping[str, Any]], Awaitable[None]
]

# the actions a plain turn does itself (Engine._plain_turn); any other goes the ORM's way
_PLAIN_ACTIONS = (LogSelfService, OpenCase)
MARKETING_KEY = "campaign"  # flow_state key: [campaign, stop-notice key] of a marketing flow
MAX_FLOW_TEXT = 4000  # what a flow sees; the touchpoint keeps the whole text
MAX_STORED_TEXT = 200_000


@dataclass
class HandleResult:
    duplicate: bool = False
    contact_id: int | None = None
    conversation_id: int | None = None
    status: str | None = None  # the conversation's status afterwards
    outbox_ids: list[int] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    observed: list[str] = field(default_factory=list)  # kinds the observers were told of


# finds the conversation to speak in (inside the transaction, under the lock); None: not now
Locate = Callable[[AsyncSession], Awaitable[tuple[Identity, Contact, Conversation] | None]]
# what to say, from the flow state, and the payload of the touchpoint that records it
Decide = Callable[[Mapping[str, Any], Context], tuple[Decision, Mapping[str, Any]] | None]
InTransaction = Callable[[AsyncSession, HandleResult], Awaitable[None]]


@dataclass(frozen=True)
class FlowStart:
    """One flow `Engine.start_flows_in` opens: `start_flow`'s arguments."""

    channel: str
    external_id: str
    flow: str
    thread_key: str | None = None
    extra: Mapping[str, Any] | None = None
    footer_key: str | None = None
    campaign: str | None = None

    @property
    def thread(self) -> str:
        return self.thread_key or self.external_id


class Engine:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        options: FlowOptions,
        catalog: Catalog,
        *,
        default_locale: str = "en",
        timezone: str = "UTC",
        matcher: Matcher | None = None,
        on_commit: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        hours: BusinessHours | None = None,
    ) -> None:
        self.sessions = sessions
        self.options = options
        self.catalog = catalog
        self.default_locale = default_locale
        self.matcher = matcher
        self.on_commit = on_commit
        self.on_handled: Callable[[HandleResult], None] | None = None  # live views
        self.clock = clock
        self.hours = hours
        self.actions = ActionRunner(options, catalog, timezone, hours)
        self.observers: list[ConversationObserver] = []
        # follow-ups this soon after an agent resolved reopen for that agent (None: never)
        self.reopen_window: timedelta | None = None
        self._locks = KeyedLocks()

    async def notify_observers(
        self, s: AsyncSession, conv: Conversation, kind: str, **detail: Any
    ) -> bool:
        """Tell the observers (inside the caller's transaction); True if there were any."""
        if self.observers:  # they read the conversation's touchpoints: written first
            await queries.flush_touchpoints(s)
        for observer in self.observers:
            await observer(s, conv, kind, detail)
        return bool(self.observers)

    async def handle(self, msg: InboundMessage) -> HandleResult:
        """Process one inbound message exactly once; safe to call again with the same one."""
        async with self._locks.hold((msg.channel, msg.thread_key)):
            try:
                result = await self._in_transaction(self._handle, msg)
            except Exception as exc:
                if is_unavailable(exc):
                    raise  # the database is away: the caller retries the message later
                # the message itself makes the flow fail (a poison message): retrying would
                # fail again, so it is kept as a dead letter and a person takes over
                result = await self._in_transaction(self._dead_letter, msg, exc)
        self.handled(result)
        return result

    def hold_thread(self, channel: str, thread_key: str) -> AbstractAsyncContextManager[None]:
        """The in-process lock `handle` holds for a thread; `handle_in`'s caller takes it."""
        return self._locks.hold((channel, thread_key))

    async def handle_in(self, s: AsyncSession, msg: InboundMessage) -> HandleResult:
        """`handle`'s work inside the caller's transaction (the inbox's group commit: many
        messages, one commit). The caller holds `hold_thread`, runs this in a savepoint of
        its own, and after its commit calls `handled`; if this raises, the savepoint is
        rolled back and the caller hands the message to `handle` (retries, dead letter)."""
        return await self._handle(s, msg)

    async def onboard(
        self, s: AsyncSession, firsts: Sequence[InboundMessage]
    ) -> dict[queries.TurnKey, queries.TurnRow]:
        """The new customers among a group commit's chats' first messages created together
        (bot/conversation/onboarding.py), before their turns; the turn rows made."""
        return await onboarding.onboard(
            s, firsts, default_locale=self.default_locale, now=self.clock()
        )

    def handled(self, result: HandleResult) -> None:
        """After a message's transaction committed: wake the dispatcher, tell live views."""
        if (result.outbox_ids or result.observed) and self.on_commit:
            self.on_commit()
        if not result.duplicate and self.on_handled:
            self.on_handled(result)

    async def _in_transaction(
        self,
        work: Callable[..., Awaitable[HandleResult]],
        msg: InboundMessage,
        *args: Any,
    ) -> HandleResult:
        for attempt in range(5):
            try:
                async with self.sessions() as s, s.begin():
                    return await work(s, msg, *args)
            except IntegrityError:
                # another process created the same identity/conversation/touchpoint
                # first; the next attempt sees its row (and may find a duplicate)
                if attempt == 4:
                    raise
            except OperationalError as exc:
                if attempt == 4 or not _is_retryable(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _take_in(
        self, s: AsyncSession, msg: InboundMessage, *, open_row: bool = True, **extra: Any
    ) -> tuple[Identity, Contact, Conversation, str, bool] | None:
        """Dedupe, identity, the locked conversation, the inbound touchpoint, whether the
        conversation was reopened for its agent; None if the message was taken in before.
        `open_row` False: `queries.turn_row` found no identity with an open conversation."""
        found = (
            await queries.turn_rows(
                s, msg.channel, msg.sender_id, msg.thread_key, msg.platform_message_id
            )
            if open_row
            else None
        )
        conv: Conversation | None
        if found is not None:  # a known customer in an open conversation: one statement
            duplicate, known, conv = found
            if duplicate:
                return None
            identity, contact = await self._identity(s, msg, self.clock(), known)
        else:  # a new customer, or a new conversation: step by step
            if await queries.inbound_exists(s, msg.channel, msg.platform_message_id):
                return None
            identity, contact = await self._identity(s, msg, self.clock())
            conv = await queries.open_conversation_locked(s, msg.channel, msg.thread_key)
        reopened = False
        if conv is None:
            conv = await reopen.reopen_resolved(
                s, msg.channel, msg.thread_key, self.clock(), self.reopen_window
            )
            reopened = conv is not None
        if conv is None:
            conv = await queries.create_conversation(
                s, contact.id, identity.id, msg.channel, msg.thread_key
            )
        text = clean_text(msg.text)[:MAX_STORED_TEXT] if msg.text else ""
        _inbound_touchpoint(s, msg, contact.id, conv.id, text, {**_inbound_payload(msg), **extra})
        # not flushed here: it goes with the turn's other touchpoints in one INSERT; the
        # dedupe index speaks then if a racing process won (the transaction, or the
        # savepoint, rolls back whole, and the retry finds the duplicate)
        return identity, contact, conv, text, reopened

    async def _dead_letter(
        self, s: AsyncSession, msg: InboundMessage, exc: Exception
    ) -> HandleResult:
        """Keep the message and its error, apologise, and hand the customer to a person.
        The flow state is dropped so that the customer's next message starts afresh."""
        taken = await self._take_in(s, msg, dead_letter=True)
        if taken is None:
            return HandleResult(duplicate=True)
        identity, contact, conv, text, _ = taken
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        letter = DeadLetter(
            source="engine",
            channel=msg.channel,
            reference=msg.platform_message_id,
            contact_id=contact.id,
            conversation_id=conv.id,
            error=error[:4000],
            detail="".join(traceback.format_exception(exc))[-20_000:],
            payload=queries.scrub({"text": text, "kind": msg.kind, "payload": msg.payload}),
            created_at=self.clock(),
        )
        s.add(letter)
        await s.flush()
        log.error(
            "dead letter %s: %s message on %s raised %s",
            letter.id,
            msg.kind,
            msg.channel,
            type(exc).__name__,
        )
        ctx = self._context(contact, self.clock())
        turn = Turn(s, contact, identity, conv, ctx)
        result = HandleResult(contact_id=contact.id, conversation_id=conv.id)
        before = conv.status
        conv.flow_state = {}
        if before in (ConversationStatus.QUEUED, ConversationStatus.AGENT):
            await self._observe(s, conv, result, "customer_message", text=text, attachments=0)
        else:
            await self.actions.run(turn, [Escalate(reason="technical_error", priority=50)])
            await self._observe(s, conv, result, "escalated")
        key = "escalation.technical_error"
        turn.replies.insert(0, Reply(key, ctx.t(key)))
        turn.replies.extend(turn.after)
        result.status = conv.status
        await self._say(turn, result)
        return result

    async def _handle(self, s: AsyncSession, msg: InboundMessage) -> HandleResult:
        row = await queries.turn_row(
            s, msg.channel, msg.sender_id, msg.thread_key, msg.platform_message_id
        )
        if row is not None:
            if row.duplicate:
                return HandleResult(duplicate=True)
            plain = await self._plain_turn(s, msg, row)
            if plain is not None:
                return plain
        # the ORM's way: a new customer or conversation, or a turn with more to do
        taken = await self._take_in(s, msg, open_row=row is not None)
        if taken is None:
            return HandleResult(duplicate=True)
        identity, contact, conv, text, reopened = taken
        now = self.clock()
        ctx = self._context(contact, now, msg)
        turn = Turn(s, contact, identity, conv, ctx)
        result = HandleResult(contact_id=contact.id, conversation_id=conv.id)
        before = conv.status
        if reopened:
            await self._reopened(s, turn, result)
        if before in (ConversationStatus.QUEUED, ConversationStatus.AGENT):
            await self._observe(
                s, conv, result, "customer_message", text=text, attachments=len(msg.attachments)
            )
        if msg.kind == "message" or msg.kind == "button":
            payload = clean_text(msg.payload)[:200] if msg.payload is not None else None
            if len(text) > MAX_FLOW_TEXT and before == ConversationStatus.BOT:
                # an agent reads the whole text; the bot only the start: say so
                note = ctx.t("limits.truncated", limit=MAX_FLOW_TEXT)
                turn.replies.append(Reply("limits.truncated", note))
            inp = UserInput(
                text=text[:MAX_FLOW_TEXT], payload=payload, attachments=len(msg.attachments)
            )
            decision = dialogue.decide(conv.status, conv.flow_state or {}, inp, ctx)
            turn.campaign = _campaign_mark(conv.flow_state or {}, decision.actions)
            await self._apply(turn, decision)
        if conv.status != before and conv.status == ConversationStatus.QUEUED:
            await self._observe(s, conv, result, "escalated")
        elif before == ConversationStatus.QUEUED and conv.status == ConversationStatus.BOT:
            await self._observe(s, conv, result, "left_queue")
        result.status = conv.status
        await self._say(turn, result)
        return result

    async def _plain_turn(
        self, s: AsyncSession, msg: InboundMessage, row: queries.TurnRow
    ) -> HandleResult | None:
        """`_handle`'s turn for the common case, from `queries.turn_row`'s plain values and
        in Core statements (no ORM object loaded, changed or flushed): a message or button
        in a conversation the bot holds, whose sender's identity and profile stay as they
        are and whose decision has no action but self-service notes and cases opened
        (`_PLAIN_ACTIONS`). It writes what the ORM's way writes, in the same order. None,
        with nothing written, otherwise."""
        if (
            row.status != ConversationStatus.BOT
            or (msg.kind != "message" and msg.kind != "button")
            or not row.reachable
            or row.unreachable_reason is not None
            or (msg.sender_name and not row.display_name)
            or (msg.verified and msg.contact_updates)
        ):
            return None
        seen_at = self.clock()
        now = self.clock()
        ctx = self._context_of(
            row.locale,
            row.name,
            row.value_segment,
            row.lifecycle_phase,
            now,
            msg.channel,
            msg.verified,
        )
        text = clean_text(msg.text)[:MAX_STORED_TEXT] if msg.text else ""
        replies: list[Reply] = []
        if len(text) > MAX_FLOW_TEXT:  # as in _handle: an agent reads the whole text
            replies.append(
                Reply("limits.truncated", ctx.t("limits.truncated", limit=MAX_FLOW_TEXT))
            )
        payload = clean_text(msg.payload)[:200] if msg.payload is not None else None
        inp = UserInput(
            text=text[:MAX_FLOW_TEXT], payload=payload, attachments=len(msg.attachments)
        )
        state = row.flow_state or {}
        decision = dialogue.decide(row.status, state, inp, ctx)
        if not all(isinstance(a, _PLAIN_ACTIONS) for a in decision.actions):
            return None
        # from here on as the ORM's way: seen, the inbound touchpoint, the actions' notes,
        # the flow state, the replies
        seen = queries.deferred_seen(s)
        if seen is None:  # updated_at as the ORM's onupdate: the real time
            marks = [(row.identity_id, row.contact_id, seen_at)]
            await queries.mark_seen(s, marks, updated_at=utcnow())
        else:
            seen.append((row.identity_id, row.contact_id, seen_at))
        _inbound_touchpoint(
            s, msg, row.contact_id, row.conversation_id, text, _inbound_payload(msg)
        )
        for action in decision.actions:  # as ActionRunner does them
            if isinstance(action, LogSelfService):
                kind, note = "selfservice", selfservice_note(action)
            else:
                assert isinstance(action, OpenCase)
                note, reply = await self.actions.open_case_in(
                    s, row.contact_id, row.conversation_id, row.timezone, ctx, action
                )
                kind = "case_opened"
                replies.append(reply)
            queries.add_touchpoint(
                s,
                contact_id=row.contact_id,
                conversation_id=row.conversation_id,
                channel=msg.channel,
                direction=Direction.INTERNAL,
                kind=kind,
                actor="bot",
                payload=note,
            )
        if decision.state != row.flow_state:  # the ORM writes no unchanged value either
            await queries.set_flow_state(s, row.conversation_id, decision.state)
        replies.extend(decision.replies)
        campaign = _campaign_mark(state, decision.actions)
        result = HandleResult(
            contact_id=row.contact_id, conversation_id=row.conversation_id, status=row.status
        )
        for reply in replies:
            await self._queue(
                s,
                channel=msg.channel,
                thread_key=msg.thread_key,
                recipient_id=row.external_id,
                identity_id=row.identity_id,
                contact_id=row.contact_id,
                conversation_id=row.conversation_id,
                reply=reply,
                locale=ctx.locale,
                campaign=campaign,
                into=result.outbox_ids,
            )
            result.replies.append(reply.text)
        return result

    async def _apply(self, turn: Turn, decision: Decision) -> None:
        """The decision's new flow state and actions; its replies after what the actions
        said first, before what they said last."""
        turn.conversation.flow_state = decision.state
        await self.actions.run(turn, decision.actions)
        turn.replies.extend(decision.replies)
        turn.replies.extend(turn.after)

    async def _say(self, turn: Turn, result: HandleResult) -> None:
        """Queue the turn's replies (a marketing flow's stop notice under the last)."""
        for reply in _with_notice(turn.replies, turn):
            await self._say_into(
                turn.session,
                turn.identity,
                turn.conversation,
                reply,
                turn.ctx.locale,
                campaign=turn.campaign,
                into=result.outbox_ids,
            )
            result.replies.append(reply.text)

    async def _unprompted(
        self,
        channel: str,
        thread: str,
        locate: Locate,
        decide: Decide,
        kind: str,
        *,
        campaign: str | None = None,
        footer_key: str | None = None,
        in_transaction: InTransaction | None = None,
    ) -> HandleResult | None:
        """What the bot says unasked, in one transaction under the conversation's lock:
        locate the conversation, decide, record it (a `kind` touchpoint), act, say,
        commit. None, and nothing said, when `locate` or `decide` says not now."""
        async with self._locks.hold((channel, thread)):
            async with self.sessions() as s, s.begin():
                located = await locate(s)
                if located is None:
                    return None
                identity, contact, conv = located
                ctx = self._context(contact, self.clock())
                decided = decide(conv.flow_state or {}, ctx)
                if decided is None:
                    return None
                decision, payload = decided
                queries.add_touchpoint(
                    s,
                    contact_id=contact.id,
                    conversation_id=conv.id,
                    channel=channel,
                    direction=Direction.INTERNAL,
                    kind=kind,
                    actor="system",
                    payload=dict(payload),
                )
                turn = Turn(s, contact, identity, conv, ctx, campaign=campaign)
                turn.stop_notice = footer_key  # under the last opening message
                result = HandleResult(contact_id=contact.id, conversation_id=conv.id)
                await self._apply(turn, decision)
                await self._say(turn, result)
                if in_transaction is not None:
                    await in_transaction(s, result)
        if self.on_commit:
            self.on_commit()
        return result

    async def _reopened(self, s: AsyncSession, turn: Turn, result: HandleResult) -> None:
        """A follow-up after an agent resolved (bot.conversation.reopen): the customer hears
        who has their message; a queued one enters the queue as an escalation would."""
        conv = turn.conversation
        if conv.status == ConversationStatus.QUEUED:
            await self._observe(s, conv, result, "escalated")
            turn.replies.append(Reply("escalation.queued", turn.ctx.t("escalation.queued")))
            return
        agent = await reopen.assignee_name(s, conv)
        turn.replies.append(Reply("agent.reopened", turn.ctx.t("agent.reopened", agent=agent)))

    async def _observe(
        self, s: AsyncSession, conv: Conversation, result: HandleResult, kind: str, **detail: Any
    ) -> None:
        if await self.notify_observers(s, conv, kind, **detail):
            result.observed.append(kind)

    async def start_flow(
        self,
        channel: str,
        external_id: str,
        flow: str,
        *,
        thread_key: str | None = None,
        extra: dict[str, Any] | None = None,
        footer_key: str | None = None,
        in_transaction: Callable[[AsyncSession, HandleResult], Awaitable[None]] | None = None,
        campaign: str | None = None,
    ) -> HandleResult | None:
        """Open a flow with a known customer (a survey after a case, a win-back campaign).

        Returns None, and says nothing, when the conversation is busy: an agent owns it,
        it waits for one, or another flow is running. `campaign` marks the opening messages
        as a campaign's (email adds List-Unsubscribe). `footer_key`: a catalog line appended
        to the last opening message (a campaign's how-to-stop notice); with both given (a
        marketing campaign) every later reply of the flow is marked too. `in_transaction` is
        awaited after the messages are queued, in the same transaction (a campaign records
        its delivery there); what it raises rolls everything back and propagates.
        """
        thread = thread_key or external_id

        async def locate(s: AsyncSession) -> tuple[Identity, Contact, Conversation] | None:
            identity = await queries.get_identity(s, channel, external_id)
            if identity is None:
                raise LookupError(f"no identity {channel}:{external_id}")
            contact = await s.get(Contact, identity.contact_id)
            assert contact is not None
            conv = await queries.open_conversation_locked(s, channel, thread)
            if conv is None:
                conv = await queries.create_conversation(
                    s, contact.id, identity.id, channel, thread
                )
            elif conv.status != "bot" or (conv.flow_state or {}).get("flow"):
                return None
            return identity, contact, conv

        def decide(state: Mapping[str, Any], ctx: Context) -> tuple[Decision, Mapping[str, Any]]:
            decision = dialogue.begin(flow, ctx, extra)
            if campaign and footer_key:  # marketing: the flow's later replies are marked too
                marked = {**decision.state, MARKETING_KEY: [campaign, footer_key]}
                decision = replace(decision, state=marked)
            return decision, {"flow": flow, **(extra or {})}

        return await self._unprompted(
            channel,
            thread,
            locate,
            decide,
            "flow_started",
            campaign=campaign,
            footer_key=footer_key,
            in_transaction=in_transaction,
        )

    async def start_flows_in(
        self, s: AsyncSession, starts: Sequence[FlowStart]
    ) -> list[HandleResult | None]:
        """`start_flow` for many customers inside the caller's transaction `s`, in a few
        statements whatever their number (Core statements built once, their compilation
        cached): the identities with their contacts in one read and the open conversations,
        locked, in another (per channel); then one multi-row INSERT each for the new
        conversations, the outbox rows and the touchpoints, and one UPDATE (executemany)
        for the flow state of conversations that were open. Each start writes what
        `start_flow` writes; its result is `start_flow`'s (None: busy, nothing said; a
        second start for the same thread in one call is busy too).

        The caller holds `hold_thread` for every thread, owns the transaction (what raises
        here, e.g. a unique constraint, leaves the transaction to roll back whole: the
        caller redoes its starts one by one, each in a savepoint) and wakes the dispatcher
        (`on_commit`) after its commit. LookupError for a customer without that identity,
        before anything is written. A flow whose opening has actions is refused
        (ValueError): flows.model.start opens every flow with replies only."""
        if not starts:
            return []
        now = self.clock()
        people: dict[tuple[str, str], Any] = {}
        for channel, externals in queries.by_channel((x.channel, x.external_id) for x in starts):
            for found in await s.execute(_PEOPLE, {"channel": channel, "externals": externals}):
                people[(channel, found.external_id)] = found
        open_now: dict[tuple[str, str], Any] = {}
        for channel, threads in queries.by_channel((x.channel, x.thread) for x in starts):
            for row in await s.execute(_OPEN_LOCKED, {"channel": channel, "threads": threads}):
                open_now[(channel, row.thread_key)] = row
        results: list[HandleResult | None] = []
        plans: list[_Planned] = []
        taken: set[tuple[str, str]] = set()
        for x in starts:
            person = people.get((x.channel, x.external_id))
            if person is None:
                raise LookupError(f"no identity {x.channel}:{x.external_id}")
            key = (x.channel, x.thread)
            conv = open_now.get(key)
            if key in taken or (
                conv is not None
                and (conv.status != ConversationStatus.BOT or (conv.flow_state or {}).get("flow"))
            ):
                results.append(None)
                continue
            taken.add(key)
            ctx = Context(
                locale=person.locale or self.default_locale,
                options=self.options,
                catalog=self.catalog,
                contact=ContactFacts(
                    name=person.name,
                    value_segment=person.value_segment,
                    lifecycle_phase=person.lifecycle_phase,
                ),
                now=now,
                matcher=self.matcher,
                hours=self.hours,
            )
            decision = dialogue.begin(x.flow, ctx, x.extra)
            if decision.actions:
                raise ValueError(f"flow {x.flow!r} opens with actions: use start_flow")
            state = dict(decision.state)
            if x.campaign and x.footer_key:  # marketing: the flow's later replies marked too
                state[MARKETING_KEY] = [x.campaign, x.footer_key]
            replies = list(decision.replies)
            if x.footer_key and replies:  # the stop notice under the last opening message
                last = replies[-1]
                text = f"{last.text}\n\n{ctx.t(x.footer_key)}"
                replies[-1] = Reply(last.key, text, last.buttons, last.meta)
            result = HandleResult(
                contact_id=person.contact_id, conversation_id=None if conv is None else conv.id
            )
            results.append(result)
            plans.append(_Planned(x, person, state, replies, ctx.locale, result))
        if not plans:
            return results
        queued = utcnow()  # the rows' own times are the real time, as the ORM's defaults
        fresh = [p for p in plans if p.result.conversation_id is None]
        if fresh:
            rows = await s.execute(
                _NEW_CONVERSATIONS,
                [
                    {
                        "contact_id": p.person.contact_id,
                        "identity_id": p.person.id,
                        "channel": p.start.channel,
                        "thread_key": p.start.thread,
                        "status": ConversationStatus.BOT.value,
                        "flow_state": p.state,
                        "priority": 0,
                        "created_at": queued,
                        "updated_at": queued,
                    }
                    for p in fresh
                ],
            )
            made = {(r.channel, r.thread_key): r.id for r in rows}
            for p in fresh:
                p.result.conversation_id = made[(p.start.channel, p.start.thread)]
        known = [p for p in plans if p not in fresh]
        if known:
            await s.execute(
                _SET_FLOW_STATE,
                [
                    {"b_id": p.result.conversation_id, "b_state": p.state, "b_now": queued}
                    for p in known
                ],
            )
        outbox = [
            {
                "channel": p.start.channel,
                "recipient_id": p.person.external_id,
                "thread_key": p.start.thread,
                "body": queries.scrub(
                    OutboundMessage(
                        channel=p.start.channel,
                        recipient_id=p.person.external_id,
                        thread_key=p.start.thread,
                        text=reply.text,
                        choices=tuple(_choice(b) for b in reply.buttons),
                        locale=p.locale,
                        campaign=p.start.campaign,
                        contact_id=p.person.contact_id if p.start.campaign else None,
                    ).to_json()
                ),
                "conversation_id": p.result.conversation_id,
                "identity_id": p.person.id,
                "status": OutboxStatus.PENDING.value,
                "attempts": 0,
                "next_attempt_at": queued,
                "created_at": queued,
            }
            for p in plans
            for reply in p.replies
        ]
        ids = iter(await _insert_outbox(s, outbox) if outbox else [])
        touchpoints: list[dict[str, Any]] = []
        for p in plans:
            common = {
                "contact_id": p.person.contact_id,
                "conversation_id": p.result.conversation_id,
                "channel": p.start.channel,
                "platform_message_id": None,
                "created_at": queued,
            }
            touchpoints.append(
                common
                | {
                    "direction": Direction.INTERNAL.value,
                    "kind": "flow_started",
                    "actor": "system",
                    "text": None,
                    "payload": queries.scrub({"flow": p.start.flow, **(p.start.extra or {})}),
                    "outbox_id": None,
                }
            )
            for reply in p.replies:
                outbox_id = next(ids)
                touchpoints.append(
                    common
                    | {
                        "direction": Direction.OUT.value,
                        "kind": "message",
                        "actor": "bot",
                        "text": queries.scrub(reply.text),
                        "payload": queries.scrub(
                            {
                                "key": reply.key,
                                "buttons": [asdict(b) for b in reply.buttons],
                                **dict(reply.meta),
                            }
                        ),
                        "outbox_id": outbox_id,
                    }
                )
                p.result.outbox_ids.append(outbox_id)
                p.result.replies.append(reply.text)
        await s.execute(_NEW_TOUCHPOINTS, touchpoints)
        return results

    async def remind(
        self,
        conversation_id: int,
        *,
        quiet_since: datetime,
        in_transaction: Callable[[AsyncSession, HandleResult], Awaitable[None]] | None = None,
    ) -> HandleResult | None:
        """Re-ask the open question of a flow the customer abandoned (flows.reminder).

        Returns None, and says nothing, unless the conversation is still the bot's, its
        flow still runs and was not reminded yet, it is no marketing flow, and the
        customer has not written since `quiet_since`. `in_transaction` as in start_flow.
        """
        async with self.sessions() as s:
            found = await s.get(Conversation, conversation_id)
            if found is None:
                return None
            channel, thread = found.channel, found.thread_key

        async def locate(s: AsyncSession) -> tuple[Identity, Contact, Conversation] | None:
            conv = await queries.open_conversation_locked(s, channel, thread)
            if conv is None or conv.id != conversation_id or conv.status != "bot":
                return None
            contact = await s.get(Contact, conv.contact_id)
            identity = await s.get(Identity, conv.identity_id)
            assert contact is not None and identity is not None
            if (conv.flow_state or {}).get(MARKETING_KEY) or (
                contact.last_contact_at is not None and contact.last_contact_at > quiet_since
            ):
                return None
            return identity, contact, conv

        def decide(
            state: Mapping[str, Any], ctx: Context
        ) -> tuple[Decision, Mapping[str, Any]] | None:
            decision = reminder.remind(state, ctx)
            if decision is None:
                return None
            return decision, {"flow": state.get("flow"), "step": state.get("step")}

        return await self._unprompted(
            channel, thread, locate, decide, "flow_reminded", in_transaction=in_transaction
        )

    async def record_event(self, event: ChannelEvent) -> bool:
        """Record a non-message event in the history; False if it was already recorded."""
        async with self._locks.hold((event.channel, "identity", event.sender_id)):
            for attempt in range(5):
                try:
                    async with self.sessions() as s, s.begin():
                        return await self._record_event(s, event)
                except IntegrityError:
                    if attempt == 4:
                        raise
        return False  # pragma: no cover

    async def _record_event(self, s: AsyncSession, event: ChannelEvent) -> bool:
        if event.platform_event_id and await queries.inbound_exists(
            s, event.channel, event.platform_event_id
        ):
            return False
        identity = await queries.get_identity(s, event.channel, event.sender_id)
        if identity is None:
            identity = await queries.create_contact_with_identity(
                s,
                event.channel,
                event.sender_id,
                name=event.sender_name,
                locale=normalize_locale(event.locale_hint, self.default_locale),
            )
        if event.reachable is not None:
            identity.reachable = event.reachable
            identity.unreachable_reason = None if event.reachable else event.reason
        queries.add_touchpoint(
            s,
            contact_id=identity.contact_id,
            conversation_id=None,
            channel=event.channel,
            direction=Direction.IN,
            kind=event.kind,
            actor="platform",
            payload={**event.payload, "reachable": event.reachable, "reason": event.reason},
            platform_message_id=event.platform_event_id,
        )
        await s.flush()
        return True

    async def _identity(
        self, s: AsyncSession, msg: InboundMessage, now: datetime, known: Identity | None = None
    ) -> tuple[Identity, Contact]:
        identity = known or await queries.get_identity(s, msg.channel, msg.sender_id)
        created = identity is None
        if identity is None:
            locale = normalize_locale(msg.locale_hint, self.default_locale)
            identity = await queries.create_contact_with_identity(
                s,
                msg.channel,
                msg.sender_id,
                name=msg.sender_name,
                locale=locale,
                source=msg.contact_updates.get("source"),
            )
        contact = await s.get(Contact, identity.contact_id)
        assert contact is not None
        seen = queries.deferred_seen(s)
        if seen is None:
            identity.last_seen_at = now
            contact.last_contact_at = now
        else:  # the inbox's group commit marks all its senders at once
            seen.append((identity.id, contact.id, now))
        if not identity.reachable or identity.unreachable_reason is not None:
            identity.reachable = True  # they just wrote to us
            identity.unreachable_reason = None
        if msg.sender_name and not identity.display_name:
            identity.display_name = queries.scrub(msg.sender_name)
        if not (msg.verified or created):
            return identity, contact  # an unvouched sender's word changes no profile
        for key in ("phone", "email"):
            if msg.contact_updates.get(key):
                setattr(contact, key, msg.contact_updates[key])
        if msg.contact_updates.get("source") and not contact.source:
            contact.source = msg.contact_updates["source"]
        return identity, contact

    def _context(
        self, contact: Contact, now: datetime, msg: InboundMessage | None = None
    ) -> Context:
        return self._context_of(
            contact.locale,
            contact.name,
            contact.value_segment,
            contact.lifecycle_phase,
            now,
            msg.channel if msg is not None else "",
            msg.verified if msg is not None else True,
        )

    def _context_of(
        self,
        locale: str | None,
        name: str | None,
        value_segment: str | None,
        lifecycle_phase: str,
        now: datetime,
        channel: str = "",
        verified: bool = True,
    ) -> Context:
        """A turn's context from the contact's facts (the channel's and the sender's
        of the message it answers)."""
        facts = ContactFacts(
            name=name, value_segment=value_segment, lifecycle_phase=lifecycle_phase
        )
        return Context(
            locale=locale or self.default_locale,
            options=self.options,
            catalog=self.catalog,
            contact=facts,
            now=now,
            matcher=self.matcher,
            channel=channel,
            verified=verified,
            hours=self.hours,
        )

    async def say(
        self,
        s: AsyncSession,
        identity: Identity,
        conv: Conversation,
        reply: Reply,
        locale: str,
        actor: str = "bot",
        campaign: str | None = None,
        sender_name: str | None = None,
    ) -> int:
        """Queue one reply in the outbox and record it in the history (same transaction);
        `sender_name`: the agent who speaks (a channel may show it)."""
        ids: list[int] = []
        await self._say_into(
            s, identity, conv, reply, locale, actor, campaign, sender_name, into=ids, later=False
        )
        return ids[0]

    async def _say_into(
        self,
        s: AsyncSession,
        identity: Identity,
        conv: Conversation,
        reply: Reply,
        locale: str,
        actor: str = "bot",
        campaign: str | None = None,
        sender_name: str | None = None,
        *,
        into: list[int],
        later: bool = True,
    ) -> None:
        """`say`, its row's id appended to `into` (see `_queue`)."""
        await self._queue(
            s,
            channel=conv.channel,
            thread_key=conv.thread_key,
            recipient_id=identity.external_id,
            identity_id=identity.id,
            contact_id=conv.contact_id,
            conversation_id=conv.id,
            reply=reply,
            locale=locale,
            actor=actor,
            campaign=campaign,
            sender_name=sender_name,
            into=into,
            later=later,
        )

    async def _queue(
        self,
        s: AsyncSession,
        *,
        channel: str,
        thread_key: str,
        recipient_id: str,
        identity_id: int,
        contact_id: int,
        conversation_id: int,
        reply: Reply,
        locale: str,
        actor: str = "bot",
        campaign: str | None = None,
        sender_name: str | None = None,
        into: list[int],
        later: bool = True,
    ) -> None:
        """`say` from the rows' values (the plain turn has no ORM objects); the row's id is
        appended to `into`: at once, or (`later`, inside the inbox's group commit:
        queries.defer_group) when the group's replies are written together."""
        out = OutboundMessage(
            channel=channel,
            recipient_id=recipient_id,
            thread_key=thread_key,
            text=reply.text,
            choices=tuple(_choice(b) for b in reply.buttons),
            locale=locale,
            campaign=campaign,
            contact_id=contact_id if campaign else None,
            sender_name=sender_name,
        )
        row: dict[str, Any] = {
            "channel": channel,
            "recipient_id": recipient_id,
            "thread_key": thread_key,
            "body": out.to_json(),
            "conversation_id": conversation_id,
            "identity_id": identity_id,
        }
        queued = None
        outbox_id = None
        if later and queries.outbox_deferred(s):
            queued = queries.enqueue_later(s, **row, ids=into)
        else:
            outbox_id = await queries.enqueue(s, **row)
            into.append(outbox_id)
        touchpoint = queries.add_touchpoint(
            s,
            contact_id=contact_id,
            conversation_id=conversation_id,
            channel=channel,
            direction=Direction.OUT,
            kind="message",
            actor=actor,
            text=reply.text,
            payload={
                "key": reply.key,
                "buttons": [asdict(b) for b in reply.buttons],
                **dict(reply.meta),
                **({"sender_name": sender_name} if sender_name else {}),
            },
            outbox_id=outbox_id,
        )
        if queued is not None:
            queued.touchpoint = touchpoint


def _campaign_mark(before: Mapping[str, Any], actions: tuple[object, ...]) -> str | None:
    """A reply inside a marketing flow (the flow ran when the customer wrote) carries the
    campaign's mark; the confirmation of an opt-out does not. The stop notice is not
    repeated: it came with the campaign's opening message, and the answers to a survey
    the customer chose to answer are no new advertising (issue 21)."""
    mark = before.get(MARKETING_KEY)
    opted_out = any(isinstance(a, SetConsent) and not a.granted for a in actions)
    if isinstance(mark, list) and len(mark) == 2 and not opted_out:
        return str(mark[0])
    return None


def _with_notice(replies: list[Reply], turn: Turn) -> list[Reply]:
    """The stop notice under the last opening message of a marketing campaign."""
    if turn.stop_notice is None or not replies:
        return replies
    last = replies[-1]
    text = f"{last.text}\n\n{turn.ctx.t(turn.stop_notice)}"
    return [*replies[:-1], Reply(last.key, text, last.buttons, last.meta)]


def _choice(b: Button) -> Choice:
    return Choice(b.payload, b.label)


def _inbound_touchpoint(
    s: AsyncSession,
    msg: InboundMessage,
    contact_id: int,
    conversation_id: int,
    text: str,
    payload: dict[str, Any],
) -> None:
    """The customer's message in the history (the ORM turn's and the plain turn's)."""
    queries.add_touchpoint(
        s,
        contact_id=contact_id,
        conversation_id=conversation_id,
        channel=msg.channel,
        direction=Direction.IN,
        kind=msg.kind,
        actor="customer",
        text=text,
        payload=payload,
        platform_message_id=msg.platform_message_id,
    )


def _inbound_payload(msg: InboundMessage) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if msg.payload is not None:
        data["button"] = msg.payload
    if msg.attachments:
        data["attachments"] = [asdict(a) for a in msg.attachments]
    if msg.locale_hint:
        data["locale_hint"] = msg.locale_hint
    if msg.raw is not None:
        data["raw"] = msg.raw
    if not msg.verified:  # agents see that the channel could not vouch for the sender
        data["sender_verified"] = False
    length = len(clean_text(msg.text)) if msg.text else 0
    if length > MAX_FLOW_TEXT:  # the flow read only the start
        data["truncated"] = {"length": length, "read": MAX_FLOW_TEXT}
    return data


def _is_retryable(exc: OperationalError) -> bool:
    text = str(exc.orig).lower() if exc.orig else str(exc).lower()
    return "locked" in text or "deadlock" in text or "serializ" in text


# ---- Engine.start_flows_in: Core statements, built once (their compilation is cached) ----

_IDENTITIES: Table = Identity.__table__  # type: ignore[assignment]
_CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
_CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]
_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[assignment]
_TOUCHPOINTS: Table = Touchpoint.__table__  # type: ignore[assignment]

_PEOPLE = (
    select(
        _IDENTITIES.c.id,
        _IDENTITIES.c.contact_id,
        _IDENTITIES.c.external_id,
        _CONTACTS.c.name,
        _CONTACTS.c.locale,
        _CONTACTS.c.value_segment,
        _CONTACTS.c.lifecycle_phase,
    )
    .join_from(_IDENTITIES, _CONTACTS, _CONTACTS.c.id == _IDENTITIES.c.contact_id)
    .where(
        _IDENTITIES.c.channel == bindparam("channel"),
        _IDENTITIES.c.external_id.in_(bindparam("externals", expanding=True)),
    )
)
_OPEN_LOCKED = (  # the open conversations of threads, row-locked (PostgreSQL), in id order
    select(
        _CONVERSATIONS.c.id,
        _CONVERSATIONS.c.thread_key,
        _CONVERSATIONS.c.status,
        _CONVERSATIONS.c.flow_state,
    )
    .where(
        _CONVERSATIONS.c.channel == bindparam("channel"),
        _CONVERSATIONS.c.thread_key.in_(bindparam("threads", expanding=True)),
        _CONVERSATIONS.c.status != queries.CLOSED,  # a literal: the partial index applies
    )
    .order_by(_CONVERSATIONS.c.id)
    .with_for_update()
)
_NEW_CONVERSATIONS = insert(_CONVERSATIONS).returning(
    _CONVERSATIONS.c.id, _CONVERSATIONS.c.channel, _CONVERSATIONS.c.thread_key
)
_SET_FLOW_STATE = (
    update(_CONVERSATIONS)
    .where(_CONVERSATIONS.c.id == bindparam("b_id"))
    .values(flow_state=bindparam("b_state"), updated_at=bindparam("b_now"))
)
# the ids in the order of the rows given: each touchpoint names its outbox row. PostgreSQL
# orders them in the statement; SQLite would go row by row for that, but numbers the rows
# of one INSERT in their order: there the ids are sorted per conversation
_NEW_OUTBOX_ORDERED = insert(_OUTBOX).returning(_OUTBOX.c.id, sort_by_parameter_order=True)
_NEW_OUTBOX = insert(_OUTBOX).returning(_OUTBOX.c.id, _OUTBOX.c.conversation_id)


async def _insert_outbox(s: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
    """Outbox rows in one multi-row INSERT; their ids in the order of `rows`."""
    if s.get_bind().dialect.name != "sqlite":
        return [int(i) for i in (await s.execute(_NEW_OUTBOX_ORDERED, rows)).scalars()]
    per_conversation: dict[int, list[int]] = {}
    for outbox_id, conversation_id in await s.execute(_NEW_OUTBOX, rows):
        per_conversation.setdefault(conversation_id, []).append(int(outbox_id))
    ordered = {c: iter(sorted(ids)) for c, ids in per_conversation.items()}
    return [next(ordered[row["conversation_id"]]) for row in rows]


_NEW_TOUCHPOINTS = insert(_TOUCHPOINTS)


@dataclass
class _Planned:
    """A start that goes ahead (Engine.start_flows_in)."""

    start: FlowStart
    person: Any  # a row of _PEOPLE
    state: dict[str, Any]
    replies: list[Reply]
    locale: str
    result: HandleResult
