"""Telegram updates (raw dicts from the inbox) → InboundMessage / ChannelEvent, through
aiogram's models: the model path.

`parse_update` runs in a worker process of the sandbox (bot/sandbox.py, through
channels/telegram_inbox.py), never on the event loop: this module imports nothing but
aiogram's types and the light modules it needs, so a worker starts quickly.

Private chats only: group, supergroup and channel updates, and update types we do not
handle, parse to [] (the inbox keeps them as "ignored").
"""

from __future__ import annotations

from typing import Any

from aiogram.types import (
    CallbackQuery,
    ChatMemberUpdated,
    InaccessibleMessage,
    Message,
    Update,
    User,
)
from aiogram.types.update import UpdateTypeLookupError

from bot.messages import Attachment, ChannelEvent, InboundMessage
from channels.telegram_raw import (
    CHANNEL,
    HASHED_PREFIX,
    PRIVATE,
    USER_CONTENT,
    Parsed,
    deep_link,
    normalize_phone,
)

# marks a stored update that was too deeply nested to store as JSON (kept as text, with
# its first levels under SHALLOW_KEY for the tolerant reader)
REJECTED_KEY = "_cicbot_rejected"
SHALLOW_KEY = "shallow"


def nesting_exceeds(value: Any, limit: int) -> bool:
    """True when dicts/lists nest deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def partition_key(update: dict[str, Any]) -> str:
    """The chat (private chat id == user id) an update belongs to, read without pydantic;
    the inbox processes one partition's updates in order."""
    for key, event in update.items():
        if key == "update_id" or not isinstance(event, dict):
            continue
        message = event.get("message")
        for chat in (event.get("chat"), message.get("chat") if isinstance(message, dict) else None):
            if isinstance(chat, dict) and isinstance(chat.get("id"), int | str):
                return str(chat["id"])
        for name in ("from", "user"):
            user = event.get(name)
            if isinstance(user, dict) and isinstance(user.get("id"), int | str):
                return str(user["id"])
    return "-"


def parse_update(payload: dict[str, Any]) -> Parsed:
    """The model path: aiogram's Update, then our items (raises what pydantic raises)."""
    update = Update.model_validate(payload)
    try:
        kind = update.event_type
    except UpdateTypeLookupError:
        return []  # a type this aiogram does not know: kept, not answered
    if kind == "message" and update.message is not None:
        return message_items(update.message, payload, edited=False)
    if kind == "edited_message" and update.edited_message is not None:
        return message_items(update.edited_message, payload, edited=True)
    if kind == "callback_query" and update.callback_query is not None:
        return callback_items(update.callback_query, payload)
    if kind == "my_chat_member" and update.my_chat_member is not None:
        return member_items(update.my_chat_member)
    return []  # channel posts, inline queries, polls, reactions, payments, ...


def validated(payload: dict[str, Any]) -> tuple[Parsed, str | None]:
    """`parse_update` in the sandbox's worker: errors come back as text (pydantic's
    ValidationError does not pickle)."""
    try:
        return parse_update(payload), None
    except Exception as exc:
        return [], f"{type(exc).__name__}: {exc}"[:4000]


def message_items(msg: Message, raw: dict[str, Any], *, edited: bool) -> Parsed:
    user = msg.from_user
    if msg.chat.type != PRIVATE or user is None or user.is_bot:
        return []
    chat_id = msg.chat.id
    mid = f"{chat_id}:{msg.message_id}"
    text = msg.text or msg.caption or ""
    attachments = attachments_of(msg)
    content = content_type(msg)
    if not text and not attachments and content not in USER_CONTENT:
        # a service message (auto-delete timer, write access allowed, payment, ...)
        return [
            ChannelEvent(
                CHANNEL,
                str(user.id),
                f"service:{content}",
                platform_event_id=mid,
                sender_name=full_name(user),
                locale_hint=user.language_code,
                payload={"content_type": content},
            )
        ]
    updates: dict[str, Any] = {}
    if msg.contact is not None and msg.contact.user_id == user.id:
        updates["phone"] = normalize_phone(msg.contact.phone_number)
    if not edited and (source := deep_link(text)):
        updates["source"] = source
    if edited:
        mid = f"{mid}:edit:{int(msg.edit_date or 0)}"
    return [
        InboundMessage(
            channel=CHANNEL,
            sender_id=str(user.id),
            platform_message_id=mid,
            thread_key=str(chat_id),
            text=text,
            attachments=attachments,
            sender_name=full_name(user),
            locale_hint=user.language_code,
            kind="edit" if edited else "message",
            raw=raw,
            received_at=msg.date,
            contact_updates=updates,
        )
    ]


def callback_items(query: CallbackQuery, raw: dict[str, Any]) -> Parsed:
    msg = query.message
    if msg is not None and msg.chat.type != PRIVATE:
        return []
    if query.data is None:  # a game button: nothing we offered
        return []
    chat_id = msg.chat.id if msg is not None else query.from_user.id
    # the pressed button's label is what the customer "said"
    label = pressed_label(msg, query.data) if isinstance(msg, Message) else None
    hashed = query.data.startswith(HASHED_PREFIX)
    return [
        InboundMessage(
            channel=CHANNEL,
            sender_id=str(query.from_user.id),
            platform_message_id=f"cb:{query.id}",
            thread_key=str(chat_id),
            text=label or "",
            # a payload too long for callback_data was hashed: the label stands for it
            payload=None if hashed else query.data,
            sender_name=full_name(query.from_user),
            locale_hint=query.from_user.language_code,
            kind="button",
            raw=raw,
        )
    ]


def member_items(event: ChatMemberUpdated) -> Parsed:
    if event.chat.type != PRIVATE:
        return []  # added to / removed from a group: not a customer channel
    status = str(event.new_chat_member.status)
    user = event.from_user
    event_id = f"mcm:{event.chat.id}:{int(event.date.timestamp())}:{status}"
    if status in ("kicked", "left"):
        return [
            ChannelEvent(
                CHANNEL,
                str(user.id),
                "blocked",
                event_id,
                reachable=False,
                reason="blocked the bot",
                sender_name=full_name(user),
                locale_hint=user.language_code,
            )
        ]
    return [
        ChannelEvent(
            CHANNEL,
            str(user.id),
            "unblocked",
            event_id,
            reachable=True,
            sender_name=full_name(user),
            locale_hint=user.language_code,
        )
    ]


def content_type(msg: Message) -> str:
    value = msg.content_type  # a str Enum: str() would give "ContentType.TEXT"
    return str(getattr(value, "value", value))


def pressed_label(msg: Message | InaccessibleMessage, data: str) -> str | None:
    markup = msg.reply_markup if isinstance(msg, Message) else None
    if markup is None:
        return None
    for row in markup.inline_keyboard:
        for button in row:
            if button.callback_data == data:
                return button.text
    return None


def full_name(user: User) -> str:
    return " ".join(p for p in (user.first_name, user.last_name) if p)[:200]


def attachments_of(msg: Message) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    if msg.photo:
        p = msg.photo[-1]  # the largest size
        found.append(
            Attachment(
                "photo",
                mime_type="image/jpeg",
                size=p.file_size,
                platform_file_id=p.file_id,
                extra={"width": p.width, "height": p.height},
            )
        )
    if msg.document:
        d = msg.document
        found.append(Attachment("document", d.file_name, d.mime_type, d.file_size, d.file_id))
    if msg.voice:
        v = msg.voice
        found.append(
            Attachment("voice", None, v.mime_type, v.file_size, v.file_id, {"duration": v.duration})
        )
    if msg.audio:
        a = msg.audio
        found.append(
            Attachment(
                "audio",
                a.file_name or a.title,
                a.mime_type,
                a.file_size,
                a.file_id,
                {"duration": a.duration, "performer": a.performer},
            )
        )
    if msg.video:
        v2 = msg.video
        found.append(
            Attachment(
                "video",
                v2.file_name,
                v2.mime_type,
                v2.file_size,
                v2.file_id,
                {"duration": v2.duration, "width": v2.width, "height": v2.height},
            )
        )
    if msg.video_note:
        n = msg.video_note
        found.append(
            Attachment("video_note", None, None, n.file_size, n.file_id, {"duration": n.duration})
        )
    if msg.animation and not msg.document:  # Telegram also sets document for animations
        g = msg.animation
        found.append(Attachment("animation", g.file_name, g.mime_type, g.file_size, g.file_id))
    if msg.sticker:
        s = msg.sticker
        found.append(
            Attachment(
                "sticker",
                None,
                None,
                s.file_size,
                s.file_id,
                {
                    "emoji": s.emoji,
                    "set_name": s.set_name,
                    "is_animated": s.is_animated,
                    "is_video": s.is_video,
                },
            )
        )
    if msg.venue:
        found.append(
            Attachment(
                "venue",
                msg.venue.title,
                extra={
                    "address": msg.venue.address,
                    "latitude": msg.venue.location.latitude,
                    "longitude": msg.venue.location.longitude,
                },
            )
        )
    elif msg.location:
        loc = msg.location
        found.append(
            Attachment(
                "location",
                extra={
                    "latitude": loc.latitude,
                    "longitude": loc.longitude,
                    "horizontal_accuracy": loc.horizontal_accuracy,
                    "live_period": loc.live_period,
                },
            )
        )
    if msg.contact:
        c = msg.contact
        found.append(
            Attachment(
                "contact",
                " ".join(p for p in (c.first_name, c.last_name) if p),
                extra={
                    "phone_number": c.phone_number,
                    "user_id": c.user_id,
                    "own": bool(msg.from_user and c.user_id == msg.from_user.id),
                },
            )
        )
    if not found:
        content = content_type(msg)
        if content in USER_CONTENT and content != "text":
            # a poll, dice, game, story, ...: recorded by its type
            found.append(Attachment(content))
    return tuple(found)
