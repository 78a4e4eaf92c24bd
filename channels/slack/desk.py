"""The agent desk in Slack: escalation cards in `slack.agent_channel`, worked in threads.

Durable by construction: the engine and the desk core call `observe` inside the very
transaction that escalates a conversation, takes in a customer's message or changes its
owner, and `observe` writes an outbox row (channel "slack", recipient the agent channel,
thread key `desk:{conversation id}:{card|update|mirror}`). The dispatcher sends these in
order per agent channel, so a card is posted before its thread is used. The card's `ts`
comes back from chat.postMessage and is kept in `agent_cards`; updates re-render the card
from the database (chat.update), mirrors go into its thread.

Erasure (bot/crm/gdpr.py) queues a row `desk:{id}:erase`, the retention period
(bot/crm/retention.py) `desk:{id}:erase-{card id}` for a card quiet since: the messages mirrored
into the card's thread (kept in `agent_card_messages`) are deleted and the card is replaced
by a notice without personal data, one Slack call at a time, each done call recorded, so
a retry goes on where it stopped.

Agents act with the card's buttons (Claim, Resolve, Back to bot) and by replying in the
thread: a reply goes to the customer on the customer's channel (desk.reply), one starting
with `note:` stays internal (desk.note). Slack users map to agents by Slack user id; an
agent is created (role agent) on the first claim. What cannot be done is explained to the
agent with an ephemeral message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from slack_sdk.errors import SlackApiError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.channel import PermanentSendError, SendResult
from bot.channel.messages import OutboundMessage, desk_key, parse_erase_kind
from bot.config import SlackSettings
from bot.desk.auth import create_agent
from bot.desk.service import Conflict, DeskError, Forbidden
from bot.runtime import Runtime
from channels.slack.card import customer_name, render_card
from channels.slack.parse import CHANNEL
from channels.slack.send import SEND_ERRORS, Sender, escape, to_send_error
from channels.slack.users import UserDirectory
from storage import queries
from storage.models import (
    Agent,
    AgentCard,
    AgentCardMessage,
    AgentRole,
    Contact,
    Conversation,
    ConversationStatus,
)

log = logging.getLogger(__name__)
CARD, UPDATE, MIRROR = "card", "update", "mirror"
ROW_KINDS = {
    "escalated": CARD,
    "customer_message": MIRROR,
    "claimed": UPDATE,
    "resolved": UPDATE,
    "handed_back": UPDATE,
    "transferred": UPDATE,
    "left_queue": UPDATE,
}
MAX_MIRROR = 12_000
# Slack's answers that mean the message is gone already, or cannot be edited (then deleted)
ALREADY_GONE = frozenset(("message_not_found", "thread_not_found"))
NOT_EDITABLE = frozenset(("cant_update_message", "edit_window_closed"))
ERASED_TEXT = "Conversation #{id}: the customer's data was removed (erasure or retention)."
ERASED_NOTICE = (
    ":wastebasket: *Customer data removed* · conversation #{id}\n"
    "The customer's details on this card and their messages in its thread were deleted "
    "(an erasure request or the retention period). Replies agents wrote in the thread are "
    "their own Slack messages: delete them too if they name the customer."
)
NOT_AN_AGENT = (
    "Press *Claim* on the card first: once the conversation is yours, your replies in "
    "this thread go to the customer. Start a reply with `note:` for an internal note."
)


def parse_desk_key(thread_key: str) -> tuple[int, str] | None:
    parts = thread_key.split(":")
    if len(parts) != 3 or parts[0] != "desk" or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[2]


class SlackDesk:
    def __init__(
        self, runtime: Runtime, settings: SlackSettings, sender: Sender, users: UserDirectory
    ) -> None:
        assert settings.agent_channel
        self.runtime = runtime
        self.sessions = runtime.sessions
        self.channel = settings.agent_channel
        self.card_messages = settings.card_messages
        self.sender = sender
        self.users = users

    # ---- inside the engine's / desk's transaction --------------------------------------

    async def observe(
        self, s: AsyncSession, conv: Conversation, kind: str, detail: Mapping[str, Any]
    ) -> None:
        row = ROW_KINDS.get(kind)
        if row is None:
            return
        text = ""
        if row == MIRROR:
            who = await customer_name(s, conv)
            said = str(detail.get("text") or "")
            if len(said) > MAX_MIRROR:
                said = said[:MAX_MIRROR] + " … (cut; the whole text is in the history)"
            files = int(detail.get("attachments") or 0)
            extra = f" :paperclip: {files} attachment(s)" if files else ""
            text = f"*{escape(who)}* ({escape(conv.channel)}): {escape(said)}{extra}"
        await queries.enqueue(
            s,
            channel=CHANNEL,
            recipient_id=self.channel,
            thread_key=desk_key(conv.id, row),
            body={"text": text, "choices": [], "locale": "en", "reply_to": None},
            conversation_id=conv.id,
            identity_id=None,  # a failure here never marks the customer unreachable
        )

    # ---- outbound: the dispatcher hands the rows back ----------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        parsed = parse_desk_key(message.thread_key)
        if parsed is None:
            raise PermanentSendError(f"not a desk row: {message.thread_key[:60]!r}")
        conv_id, kind = parsed
        erasing, card_id = parse_erase_kind(kind)
        try:
            if erasing:
                await self.erase(conv_id, message.recipient_id, card_id)
                return SendResult()
            if kind == CARD:
                ts = (await self.post_card(conv_id)).message_ref
                await self._erased_meanwhile(conv_id)
            elif kind == UPDATE:
                card = await self.card_of(conv_id)
                if card is None:
                    return SendResult()  # never had a card here: nothing to update
                ts = card.message_ref
                await self.update_card(conv_id, ts)
            else:
                card = await self.card_of(conv_id) or await self.post_card(conv_id)
                ts = await self.sender.post_message(
                    self.channel, message.text, thread_ts=card.message_ref
                )
                try:
                    async with self.sessions() as s, s.begin():
                        s.add(AgentCardMessage(card_id=card.id, message_ref=ts))
                except IntegrityError:  # the card was erased while this was being posted
                    await self._delete(self.channel, ts)
                    return SendResult()
                await self._erased_meanwhile(conv_id)
        except SEND_ERRORS as exc:
            raise to_send_error(exc) from None
        return SendResult(platform_message_id=f"{self.channel}:{ts}")

    async def post_card(self, conv_id: int) -> AgentCard:
        text, blocks = await self._render(conv_id)
        ts = await self.sender.post_message(self.channel, text, blocks=blocks)
        card = AgentCard(
            conversation_id=conv_id, channel=CHANNEL, container=self.channel, message_ref=ts
        )
        async with self.sessions() as s, s.begin():
            s.add(card)
        return card

    async def _erased_meanwhile(self, conv_id: int) -> None:
        """A post rendered before an erasure committed and recorded after it: the erasure
        did not see it, so take it down now."""
        async with self.sessions() as s:
            q = (
                select(Contact.attributes)
                .join(Conversation, Conversation.contact_id == Contact.id)
                .where(Conversation.id == conv_id)
            )
            attributes = await s.scalar(q)
        if attributes and attributes.get("erased"):
            await self.erase(conv_id, self.channel)

    async def erase(self, conv_id: int, container: str, card_id: int | None = None) -> None:
        """Delete the bot's messages in the conversation's card threads (or one card's)
        and replace each card by a notice without personal data; forget them. Each done
        call is recorded at once, so a retry after an error goes on with the rest."""
        async with self.sessions() as s:
            q = select(AgentCard).where(
                AgentCard.conversation_id == conv_id,
                AgentCard.channel == CHANNEL,
                AgentCard.container == container,
            )
            if card_id is not None:
                q = q.where(AgentCard.id == card_id)
            cards = list((await s.execute(q.order_by(AgentCard.id))).scalars())
        for card in cards:
            async with self.sessions() as s:
                q2 = select(AgentCardMessage).where(AgentCardMessage.card_id == card.id)
                replies = list((await s.execute(q2.order_by(AgentCardMessage.id))).scalars())
            for reply in replies:
                await self._delete(container, reply.message_ref)
                async with self.sessions() as s, s.begin():
                    await s.execute(delete(AgentCardMessage).where(AgentCardMessage.id == reply.id))
            await self._blank(container, card.message_ref, conv_id)
            async with self.sessions() as s, s.begin():
                await s.execute(delete(AgentCard).where(AgentCard.id == card.id))
        log.info("desk: conversation %s taken out of %d card(s)", conv_id, len(cards))

    async def _delete(self, container: str, ts: str) -> None:
        try:
            await self.sender.post(
                container, lambda: self.sender.client.chat_delete(channel=container, ts=ts)
            )
        except SlackApiError as exc:
            if _error(exc) not in ALREADY_GONE:
                raise

    async def _blank(self, container: str, ts: str, conv_id: int) -> None:
        blocks = [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": ERASED_NOTICE.format(id=conv_id)},
            }
        ]
        try:
            await self.sender.post(
                container,
                lambda: self.sender.client.chat_update(
                    channel=container, ts=ts, text=ERASED_TEXT.format(id=conv_id), blocks=blocks
                ),
            )
        except SlackApiError as exc:
            if _error(exc) in NOT_EDITABLE:
                await self._delete(container, ts)
            elif _error(exc) not in ALREADY_GONE:
                raise

    async def update_card(self, conv_id: int, ts: str) -> None:
        text, blocks = await self._render(conv_id)
        await self.sender.client.chat_update(channel=self.channel, ts=ts, text=text, blocks=blocks)

    async def _render(self, conv_id: int) -> tuple[str, list[dict[str, Any]]]:
        async with self.sessions() as s:
            found = await render_card(s, conv_id, self.card_messages)
        if found is None:
            raise PermanentSendError(f"conversation {conv_id} not found")
        return found

    async def card_of(self, conv_id: int) -> AgentCard | None:
        """The conversation's newest card in this agent channel."""
        async with self.sessions() as s:
            q = (
                select(AgentCard)
                .where(
                    AgentCard.conversation_id == conv_id,
                    AgentCard.channel == CHANNEL,
                    AgentCard.container == self.channel,
                )
                .order_by(AgentCard.id.desc())
                .limit(1)
            )
            return (await s.execute(q)).scalar_one_or_none()

    async def conversation_of(self, card_ts: str) -> int | None:
        async with self.sessions() as s:
            q = select(AgentCard.conversation_id).where(
                AgentCard.channel == CHANNEL,
                AgentCard.container == self.channel,
                AgentCard.message_ref == card_ts,
            )
            return (await s.execute(q)).scalar_one_or_none()

    # ---- agents acting in Slack (deferred work from the inbox worker) ------------------

    async def agent_message(self, user: str, thread_ts: str, text: str) -> None:
        """A person's reply in a card's thread: to the customer, or an internal note."""
        conv_id = await self.conversation_of(thread_ts)
        if conv_id is None:
            return  # a thread that is not a card's
        agent = await self.agent_for(user, create=False)
        if agent is None or not agent.active:
            await self.ephemeral(user, thread_ts, NOT_AN_AGENT)
            return
        body = text.strip()
        try:
            if body[:5].lower() == "note:":
                await self.runtime.desk.note(agent, conv_id, body[5:].strip())
            else:
                await self.runtime.desk.reply(agent, conv_id, body)
        except DeskError as exc:
            why = await self._explain(conv_id, exc)
            await self.ephemeral(user, thread_ts, f":warning: Not sent to the customer: {why}")

    async def desk_action(self, action: str, value: str, user: str, card_ts: str) -> None:
        conv_id = int(value) if value.isdigit() else await self.conversation_of(card_ts)
        if conv_id is None:
            return
        agent = await self.agent_for(user, create=action == "desk_claim")
        if agent is None or not agent.active:
            reason = "your agent account is deactivated" if agent else "claim it first"
            await self.ephemeral(user, card_ts, f":warning: Not done: {reason}.")
            return
        desk = self.runtime.desk
        try:
            if action == "desk_claim":
                await desk.claim(agent, conv_id)
            elif action == "desk_resolve":
                await desk.resolve(agent, conv_id)
            else:
                await desk.hand_back(agent, conv_id)
        except DeskError as exc:
            if action == "desk_claim" and await self._assigned_to(conv_id, agent):
                return  # a redelivered claim of our own
            await self.ephemeral(user, card_ts, f":warning: {await self._explain(conv_id, exc)}")

    async def _assigned_to(self, conv_id: int, agent: Agent) -> bool:
        async with self.sessions() as s:
            conv = await s.get(Conversation, conv_id)
            return (  # a closed conversation keeps its resolver as assignee
                conv is not None
                and conv.status == ConversationStatus.AGENT
                and conv.assignee == str(agent.id)
            )

    async def _explain(self, conv_id: int, exc: DeskError) -> str:
        """The desk's refusal in words for the agent who was refused."""
        async with self.sessions() as s:
            conv = await s.get(Conversation, conv_id)
            owner = None
            if conv is not None and conv.assignee and conv.assignee.isdigit():
                owner = await s.get(Agent, int(conv.assignee))
        if conv is None or not isinstance(exc, Conflict | Forbidden):
            return str(exc)
        if conv.status == ConversationStatus.AGENT:
            return f"{owner.name if owner else 'another agent'} has this conversation."
        if conv.status == ConversationStatus.CLOSED:
            return "the conversation is closed."
        if conv.status == ConversationStatus.QUEUED:
            return "press *Claim* on the card first."
        return "the conversation is back with the bot."

    async def agent_for(self, user: str, *, create: bool) -> Agent | None:
        """The agent with this Slack user id; created (role agent) when asked to."""
        q = select(Agent).where(Agent.slack_user_id == user)
        async with self.sessions() as s:
            agent = (await s.execute(q)).scalar_one_or_none()
        if agent is not None or not create:
            return agent
        profile = await self.users.get(user)
        name = profile.name if profile and profile.name else user
        try:
            async with self.sessions() as s, s.begin():
                agent, _ = await create_agent(
                    s,
                    name,
                    AgentRole.AGENT,
                    email=profile.email if profile else None,
                    slack_user_id=user,
                )
            log.info("slack user %s is now agent %s", user, agent.id)  # no name: personal data
            return agent
        except IntegrityError:  # created at the same moment by another press
            async with self.sessions() as s:
                return (await s.execute(q)).scalar_one_or_none()

    async def ephemeral(self, user: str, thread_ts: str, text: str) -> None:
        await self.sender.best_effort(
            "chat.postEphemeral",
            lambda: self.sender.client.chat_postEphemeral(
                channel=self.channel, user=user, text=text, thread_ts=thread_ts
            ),
        )


def _error(exc: SlackApiError) -> str:
    data = exc.response.data if exc.response is not None else None
    return str(data.get("error", "")) if isinstance(data, dict) else ""
