"""Channel-neutral messages: what adapters hand to the engine and get back from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Attachment:
    """Metadata of a file the customer sent; the bytes stay on the platform."""

    kind: str  # photo, document, voice, sticker, location, contact, ...
    name: str | None = None
    mime_type: str | None = None
    size: int | None = None
    platform_file_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InboundMessage:
    """One normalized customer event.

    `platform_message_id` is unique per channel (dedupe key); `thread_key` picks
    the conversation; `payload` carries a pressed button's value.
    """

    channel: str
    sender_id: str
    platform_message_id: str
    thread_key: str
    text: str = ""
    payload: str | None = None
    attachments: tuple[Attachment, ...] = ()
    sender_name: str | None = None
    locale_hint: str | None = None
    kind: str = "message"  # message, button, edit, event
    raw: dict[str, Any] | None = None
    received_at: datetime | None = None
    # facts an adapter learnt about the sender (phone shared, deep-link source, ...)
    contact_updates: dict[str, Any] = field(default_factory=dict)
    # the channel vouches for who sent it (flows/trust.py): platforms authenticate their
    # users; email sets it from the receiving server's DMARC result
    verified: bool = True


@dataclass(frozen=True)
class Choice:
    """One option of a question; `payload` comes back as InboundMessage.payload."""

    payload: str
    label: str


@dataclass(frozen=True)
class OutboundMessage:
    """A reply ready to render: text plus optional choices.

    Adapters render choices natively (inline keyboard, Block Kit, numbered list).
    """

    channel: str
    recipient_id: str
    thread_key: str
    text: str
    choices: tuple[Choice, ...] = ()
    locale: str = "en"
    outbox_id: int | None = None
    conversation_id: int | None = None
    reply_to: str | None = None  # platform id of the message this answers, if any
    # set on a campaign's messages: email adds List-Unsubscribe for the contact
    campaign: str | None = None
    contact_id: int | None = None
    # who speaks: an agent's name (a channel may show it, as the web chat does); None: the bot
    sender_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "text": self.text,
            "choices": [{"payload": c.payload, "label": c.label} for c in self.choices],
            "locale": self.locale,
            "reply_to": self.reply_to,
        }
        if self.campaign is not None:
            data["campaign"] = self.campaign
            data["contact_id"] = self.contact_id
        if self.sender_name is not None:
            data["sender_name"] = self.sender_name
        return data

    @classmethod
    def from_row(
        cls,
        *,
        channel: str,
        recipient_id: str,
        thread_key: str,
        body: dict[str, Any],
        outbox_id: int | None = None,
        conversation_id: int | None = None,
    ) -> OutboundMessage:
        return cls(
            channel=channel,
            recipient_id=recipient_id,
            thread_key=thread_key,
            text=str(body.get("text", "")),
            choices=tuple(Choice(c["payload"], c["label"]) for c in body.get("choices", [])),
            locale=str(body.get("locale", "en")),
            outbox_id=outbox_id,
            conversation_id=conversation_id,
            reply_to=body.get("reply_to"),
            campaign=body.get("campaign"),
            contact_id=body.get("contact_id"),
            sender_name=body.get("sender_name"),
        )


@dataclass(frozen=True)
class ChannelEvent:
    """Something a platform told us that is not a customer message: the customer blocked
    or unblocked the bot, an address bounced, ... Recorded in the history; `reachable`
    (when not None) updates the identity."""

    channel: str
    sender_id: str
    kind: str
    platform_event_id: str | None = None
    reachable: bool | None = None
    reason: str | None = None
    sender_name: str | None = None
    locale_hint: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


# Outbox rows for an agent-facing channel (channels/slack/desk.py) have the thread key
# desk:{conversation id}:{kind}; ERASE_CARDS asks it to take the customer out of the
# conversation's cards and their threads (bot/crm/gdpr.py), `erase-{card id}` out of one card
# (bot/crm/retention.py).
ERASE_CARDS = "erase"


def desk_key(conversation_id: int, kind: str) -> str:
    return f"desk:{conversation_id}:{kind}"


def erase_kind(card_id: int | None) -> str:
    return ERASE_CARDS if card_id is None else f"{ERASE_CARDS}-{card_id}"


def parse_erase_kind(kind: str) -> tuple[bool, int | None]:
    """(is an erase row, the one card it is about or None for all)."""
    head, _, card = kind.partition("-")
    if head != ERASE_CARDS or (card and not card.isdigit()):
        return False, None
    return True, int(card) if card else None
