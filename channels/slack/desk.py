"""The agent desk in Slack: escalation cards in `slack.agent_channel`, worked in threads.

Durable by construction: the core (`host.agent_desk.watch`, bot/desk/cards.py) writes an
outbox row inside the very transaction that escalates a conversation, takes in a customer's
message or changes its owner (channel "slack", recipient the agent channel,
thread key `desk:{conversation id}:{card|update|mirror}`). The dispatcher sends these in
order per agent channel, so a card is posted before its thread is used. The card's `ts`
comes back from chat.postMessage and is kept by the core (`agent_cards`); updates re-render
the card from what the core reads now (chat.update), mirrors go into its thread.

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
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.channel import PermanentSendError, SendResult
from bot.channel.desk import CARD, UPDATE, AgentDesk, AgentRef, CardRef, DeskRefused
from bot.channel.messages import OutboundMessage, parse_erase_kind
from channels.slack.card import mirror_text, render_card
from channels.slack.parse import CHANNEL
from channels.slack.send import SEND_ERRORS, Sender, to_send_error
from channels.slack.settings import SlackSettings
from channels.slack.users import UserDirectory

log = logging.getLogger(__name__)
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
        self, desk: AgentDesk, settings: SlackSettings, sender: Sender, users: UserDirectory
    ) -> None:
        assert settings.agent_channel
        self.desk = desk
        self.channel = settings.agent_channel
        self.card_messages = settings.card_messages
        self.sender = sender
        self.users = users
        # the core writes this channel's desk rows in the transactions that change a case
        desk.watch(CHANNEL, self.channel, mirror_text)

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
                if not await self.desk.add_card_message(card.id, ts):
                    await self._delete(self.channel, ts)  # the card was erased meanwhile
                    return SendResult()
                await self._erased_meanwhile(conv_id)
        except SEND_ERRORS as exc:
            raise to_send_error(exc) from None
        return SendResult(platform_message_id=f"{self.channel}:{ts}")

    async def post_card(self, conv_id: int) -> CardRef:
        text, blocks = await self._render(conv_id)
        ts = await self.sender.post_message(self.channel, text, blocks=blocks)
        return await self.desk.save_card(CHANNEL, self.channel, conv_id, ts)

    async def _erased_meanwhile(self, conv_id: int) -> None:
        """A post rendered before an erasure committed and recorded after it: the erasure
        did not see it, so take it down now."""
        if await self.desk.erased(conv_id):
            await self.erase(conv_id, self.channel)

    async def erase(self, conv_id: int, container: str, card_id: int | None = None) -> None:
        """Delete the bot's messages in the conversation's card threads (or one card's)
        and replace each card by a notice without personal data; forget them. Each done
        call is recorded at once, so a retry after an error goes on with the rest."""
        cards = await self.desk.cards(CHANNEL, container, conv_id, card_id)
        for card in cards:
            for reply in await self.desk.card_messages(card.id):
                await self._delete(container, reply.message_ref)
                await self.desk.forget_card_message(reply.id)
            await self._blank(container, card.message_ref, conv_id)
            await self.desk.forget_card(card.id)
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
        card = await self.desk.card(conv_id, self.card_messages)
        if card is None:
            raise PermanentSendError(f"conversation {conv_id} not found")
        return render_card(card)

    async def card_of(self, conv_id: int) -> CardRef | None:
        """The conversation's newest card in this agent channel."""
        return await self.desk.newest_card(CHANNEL, self.channel, conv_id)

    async def conversation_of(self, card_ts: str) -> int | None:
        return await self.desk.card_conversation(CHANNEL, self.channel, card_ts)

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
                await self.desk.act(agent.id, conv_id, "note", body[5:].strip())
            else:
                await self.desk.act(agent.id, conv_id, "reply", body)
        except DeskRefused as exc:
            why = _explain(exc)
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
        act = {"desk_claim": "claim", "desk_resolve": "resolve"}.get(action, "hand_back")
        try:
            await self.desk.act(agent.id, conv_id, act)
        except DeskRefused as exc:
            if action == "desk_claim" and await self.desk.assigned_to(conv_id, agent.id):
                return  # a redelivered claim of our own
            await self.ephemeral(user, card_ts, f":warning: {_explain(exc)}")

    async def agent_for(self, user: str, *, create: bool) -> AgentRef | None:
        """The agent with this Slack user id; created (role agent) when asked to."""
        agent = await self.desk.agent(CHANNEL, user)
        if agent is not None or not create:
            return agent
        profile = await self.users.get(user)
        name = profile.name if profile and profile.name else user
        return await self.desk.add_agent(CHANNEL, user, name, profile.email if profile else None)

    async def ephemeral(self, user: str, thread_ts: str, text: str) -> None:
        await self.sender.best_effort(
            "chat.postEphemeral",
            lambda: self.sender.client.chat_postEphemeral(
                channel=self.channel, user=user, text=text, thread_ts=thread_ts
            ),
        )


def _explain(exc: DeskRefused) -> str:
    """The desk's refusal in words for the agent who was refused."""
    if exc.status is None or not exc.conflict:
        return str(exc)
    if exc.status == "agent":
        return f"{exc.owner or 'another agent'} has this conversation."
    if exc.status == "closed":
        return "the conversation is closed."
    if exc.status == "queued":
        return "press *Claim* on the card first."
    return "the conversation is back with the bot."


def _error(exc: SlackApiError) -> str:
    data = exc.response.data if exc.response is not None else None
    return str(data.get("error", "")) if isinstance(data, dict) else ""
