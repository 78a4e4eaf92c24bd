"""Telegram updates read without aiogram's models: the bounds checked before validating,
and the tolerant reader used where the models cannot be used.

* `over_bounds` says why an update is more work than validating may cost: too many nodes,
  too deep, or a `rich_message` (Bot API 10) nested or sprawling beyond what pydantic can
  validate quickly. aiogram's RichText and RichBlock are recursive unions of some twenty
  models without a discriminator: pydantic validates every member at every level (it keeps
  going after the first error to collect them all), so the cost grows about twentyfold
  per nested level, 0.4 s at four levels of formatting and minutes at six.
* `read_raw` reads what the bot needs (chat, sender, text, caption, attachments' metadata,
  callback data, a member status) straight from the JSON, giving the same items the model
  path gives. Used for updates over the bounds or the time budget (kept as dead, the
  customer still answered) and for updates aiogram's models reject although the Bot API
  sends them (e.g. a `chat_member` administrator without `can_send_welcome_messages`).
  None when the update is not shaped like Telegram's at all.

Pure functions of the dict; nothing here recurses on the payload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.channel.messages import Attachment, ChannelEvent, InboundMessage

CHANNEL = "telegram"
PRIVATE = "private"
# callback_data of a button whose payload is longer than Telegram's 64 bytes (see send)
HASHED_PREFIX = "h:"
DEEP_LINK_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
START_RE = re.compile(r"^/start(?:@\w+)?(?:\s+(\S+))?\s*$")
# message content a customer sends; any other content type is a service message
USER_CONTENT = frozenset(
    "text photo document voice audio video video_note animation sticker location venue "
    "contact poll dice game story paid_media live_photo checklist invoice".split()
)
Parsed = list[InboundMessage | ChannelEvent]
RICH_KEY = "rich_message"
RICH_TEXT_FIELDS = frozenset({"text", "credit", "summary"})  # RichText-valued in blocks
RICH_FANOUT = 20  # measured: each nested level of RichText costs about twenty times more
# the order in which aiogram 3.31 names a message's content type (Message.content_type):
# the first of these present and truthy; "unknown" when none is
CONTENT_ORDER = tuple(
    """text audio animation document game live_photo photo sticker video video_note voice
    checklist contact venue location new_chat_members left_chat_member chat_owner_left
    chat_owner_changed invoice successful_payment users_shared connected_website
    migrate_from_chat_id migrate_to_chat_id pinned_message new_chat_title new_chat_photo
    delete_chat_photo group_chat_created supergroup_chat_created channel_chat_created
    paid_media passport_data proximity_alert_triggered poll dice
    message_auto_delete_timer_changed forum_topic_created forum_topic_edited
    forum_topic_closed forum_topic_reopened general_forum_topic_hidden
    general_forum_topic_unhidden giveaway_created giveaway giveaway_completed
    giveaway_winners video_chat_scheduled video_chat_started video_chat_ended
    video_chat_participants_invited web_app_data user_shared chat_shared story
    write_access_allowed chat_background_set boost_added checklist_tasks_done
    checklist_tasks_added direct_message_price_changed refunded_payment gift unique_gift
    gift_upgrade_sent paid_message_price_changed suggested_post_approved
    suggested_post_approval_failed suggested_post_declined suggested_post_paid
    suggested_post_refunded managed_bot_created poll_option_added poll_option_deleted
    rich_message community_chat_added community_chat_removed community_chat_joined
    is_topic_message""".split()
)


@dataclass(frozen=True)
class Bounds:
    max_depth: int = 32
    max_nodes: int = 5000
    max_rich_text_cost: int = 5000  # see rich_text_cost; 5000 is about 0.2 s of validation


def over_bounds(update: dict[str, Any], bounds: Bounds) -> str | None:
    """Why the update is too much to validate, or None. Every dict and list counts as a
    node; each rich_message's text is weighed by `rich_text_cost`."""
    stack: list[tuple[Any, int]] = [(update, 1)]
    nodes = 0
    rich: list[Any] = []
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
            if isinstance(node.get(RICH_KEY), dict | list):
                rich.append(node[RICH_KEY])
        elif isinstance(node, list):
            children = node
        else:
            continue
        nodes += 1
        if depth > bounds.max_depth:
            return f"update nested deeper than {bounds.max_depth} levels"
        if nodes > bounds.max_nodes:
            return f"update has more than {bounds.max_nodes} objects and arrays"
        stack.extend((child, depth + 1) for child in children)
    cost = sum(rich_text_cost(r, bounds.max_rich_text_cost) for r in rich)
    if cost > bounds.max_rich_text_cost:
        limit = bounds.max_rich_text_cost
        return f"rich text too deeply formatted to validate (cost {cost}, at most {limit})"
    return None


def rich_text_cost(rich: Any, limit: int) -> int:
    """What validating a rich_message's text costs, in units of one plain formatting node:
    a RichText object with k levels of RichText objects below it weighs RICH_FANOUT**k,
    as pydantic validates it against every member of the union at each level. Blocks (a
    discriminated union) and lists add nothing. Stops counting past `limit`."""
    heights: dict[int, int] = {}
    cost = 0
    # node, inside rich text, children done
    stack: list[tuple[Any, bool, bool]] = [(rich, False, False)]
    while stack:
        node, in_text, done = stack.pop()
        if isinstance(node, dict):
            kids = [(v, in_text or k in RICH_TEXT_FIELDS) for k, v in node.items()]
        elif isinstance(node, list):
            kids = [(v, in_text) for v in node]
        else:
            continue
        if not done:
            stack.append((node, in_text, True))
            stack.extend((v, t, False) for v, t in kids)
            continue
        below = max((heights.pop(id(v), 0) for v, _ in kids), default=0)
        is_text = in_text and isinstance(node, dict)
        heights[id(node)] = below + is_text
        if is_text:
            cost += int(RICH_FANOUT**below)
            if cost > limit:
                return cost
    return cost


def prune(value: Any, depth: int) -> Any:
    """A copy of value with everything nested deeper than `depth` levels dropped (None):
    the part of an over-deep update the tolerant reader needs (recursion bounded by depth)."""
    if isinstance(value, dict):
        return None if depth <= 0 else {k: prune(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return None if depth <= 0 else [prune(v, depth - 1) for v in value]
    return value


def deep_link(text: str) -> str | None:
    """The payload of `/start PAYLOAD` (t.me/bot?start=PAYLOAD), if well formed."""
    m = START_RE.match(text.strip())
    if m and m.group(1) and DEEP_LINK_RE.match(m.group(1)):
        return m.group(1)
    return None


def normalize_phone(number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit())
    return f"+{digits}"[:40] if digits else number[:40]


# ---- the tolerant reader ----------------------------------------------------------------


def _truthy(value: Any) -> bool:
    """As aiogram tests a field: an object is a model instance, true even when empty
    (`video_chat_started: {}`); lists, strings and numbers by their value."""
    return isinstance(value, dict) or bool(value)


def read_raw(update: Any) -> Parsed | None:
    if not isinstance(update, dict):
        return None
    kind, event = next(
        ((k, v) for k, v in update.items() if k != "update_id" and isinstance(v, dict)),
        (None, None),
    )
    if kind is None or event is None:
        return None
    if kind in ("message", "edited_message"):
        return _message(event, update, edited=kind == "edited_message")
    if kind == "callback_query":
        return _callback(event, update)
    if kind in ("my_chat_member", "chat_member"):
        return _member(event, mine=kind == "my_chat_member")
    return []  # the kinds the model path does not handle either


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _chat(event: dict[str, Any]) -> tuple[int, str] | None:
    chat = _dict(event.get("chat"))
    chat_id, kind = _int(chat.get("id")), _str(chat.get("type"))
    return None if chat_id is None or kind is None else (chat_id, kind)


def _user(value: Any) -> tuple[int, dict[str, Any]] | None:
    user = _dict(value)
    user_id = _int(user.get("id"))
    return None if user_id is None else (user_id, user)


def _name(user: dict[str, Any]) -> str:
    parts = (_str(user.get("first_name")), _str(user.get("last_name")))
    return " ".join(p for p in parts if p)[:200]


def _message(msg: dict[str, Any], raw: dict[str, Any], *, edited: bool) -> Parsed | None:
    chat, message_id = _chat(msg), _int(msg.get("message_id"))
    if chat is None or message_id is None:
        return None
    sender = _user(msg.get("from"))
    chat_id, chat_type = chat
    if chat_type != PRIVATE or sender is None or sender[1].get("is_bot") is not False:
        return []
    user_id, user = sender
    mid = f"{chat_id}:{message_id}"
    text = _str(msg.get("text")) or _str(msg.get("caption")) or ""
    content = next((k for k in CONTENT_ORDER if _truthy(msg.get(k))), "unknown")
    attachments = _attachments(msg, user_id, content)
    if not text and not attachments and content not in USER_CONTENT:
        return [
            ChannelEvent(
                CHANNEL,
                str(user_id),
                f"service:{content}",
                platform_event_id=mid,
                sender_name=_name(user),
                locale_hint=_str(user.get("language_code")),
                payload={"content_type": content},
            )
        ]
    updates: dict[str, Any] = {}
    contact = _dict(msg.get("contact"))
    phone = _str(contact.get("phone_number"))
    if phone and _int(contact.get("user_id")) == user_id:
        updates["phone"] = normalize_phone(phone)
    if not edited and (source := deep_link(text)):
        updates["source"] = source
    if edited:
        mid = f"{mid}:edit:{_int(msg.get('edit_date')) or 0}"
    date = _int(msg.get("date"))
    return [
        InboundMessage(
            channel=CHANNEL,
            sender_id=str(user_id),
            platform_message_id=mid,
            thread_key=str(chat_id),
            text=text,
            attachments=attachments,
            sender_name=_name(user),
            locale_hint=_str(user.get("language_code")),
            kind="edit" if edited else "message",
            raw=raw,
            received_at=datetime.fromtimestamp(date, UTC) if date is not None else None,
            contact_updates=updates,
        )
    ]


def _file(kind: str, item: Any, **extra: Any) -> Attachment:
    d = _dict(item)
    return Attachment(
        kind,
        _str(d.get("file_name")),
        _str(d.get("mime_type")),
        _int(d.get("file_size")),
        _str(d.get("file_id")),
        {k: v for k, v in extra.items() if v is not None},
    )


def _attachments(msg: dict[str, Any], user_id: int, content: str) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    photos = msg.get("photo")
    if isinstance(photos, list) and photos:
        largest = _dict(photos[-1])
        found.append(
            _file(
                "photo",
                {**largest, "mime_type": "image/jpeg"},
                width=_int(largest.get("width")),
                height=_int(largest.get("height")),
            )
        )
    for kind in ("document", "voice", "audio", "video", "video_note", "animation", "sticker"):
        if isinstance(msg.get(kind), dict) and not (kind == "animation" and "document" in msg):
            item = _dict(msg[kind])
            found.append(_file(kind, item, duration=_int(item.get("duration"))))
    where = _dict(msg.get("venue")) or {}
    location = _dict(where.get("location")) if where else _dict(msg.get("location"))
    if where or location:
        found.append(
            Attachment(
                "venue" if where else "location",
                _str(where.get("title")),
                extra={
                    "latitude": location.get("latitude"),
                    "longitude": location.get("longitude"),
                },
            )
        )
    contact = _dict(msg.get("contact"))
    if contact:
        names = (_str(contact.get("first_name")), _str(contact.get("last_name")))
        found.append(
            Attachment(
                "contact",
                " ".join(n for n in names if n),
                extra={
                    "phone_number": _str(contact.get("phone_number")),
                    "user_id": _int(contact.get("user_id")),
                    "own": _int(contact.get("user_id")) == user_id,
                },
            )
        )
    if not found and content in USER_CONTENT and content != "text":
        found.append(Attachment(content))  # a poll, dice, game, story, ...
    return tuple(found)


def _callback(query: dict[str, Any], raw: dict[str, Any]) -> Parsed | None:
    query_id, sender = _str(query.get("id")), _user(query.get("from"))
    if query_id is None or sender is None:
        return None
    user_id, user = sender
    msg = _dict(query.get("message"))
    chat = _chat(msg) if msg else None
    if chat is not None and chat[1] != PRIVATE:
        return []
    data = _str(query.get("data"))
    if data is None:
        return []  # a game button
    label = _pressed_label(msg, data)
    return [
        InboundMessage(
            channel=CHANNEL,
            sender_id=str(user_id),
            platform_message_id=f"cb:{query_id}",
            thread_key=str(chat[0] if chat is not None else user_id),
            text=label or "",
            payload=None if data.startswith(HASHED_PREFIX) else data,
            sender_name=_name(user),
            locale_hint=_str(user.get("language_code")),
            kind="button",
            raw=raw,
        )
    ]


def _pressed_label(msg: dict[str, Any], data: str) -> str | None:
    rows = _dict(msg.get("reply_markup")).get("inline_keyboard")
    for row in rows if isinstance(rows, list) else []:
        for button in row if isinstance(row, list) else []:
            if isinstance(button, dict) and button.get("callback_data") == data:
                return _str(button.get("text"))
    return None


def _member(event: dict[str, Any], *, mine: bool) -> Parsed | None:
    chat, sender = _chat(event), _user(event.get("from"))
    status = _str(_dict(event.get("new_chat_member")).get("status"))
    date = _int(event.get("date"))
    if chat is None or sender is None or status is None or date is None:
        return None
    if not mine or chat[1] != PRIVATE:
        return []  # someone's membership in a group, or the bot's: not a customer channel
    user_id, user = sender
    event_id = f"mcm:{chat[0]}:{date}:{status}"
    blocked = status in ("kicked", "left")
    return [
        ChannelEvent(
            CHANNEL,
            str(user_id),
            "blocked" if blocked else "unblocked",
            event_id,
            reachable=not blocked,
            reason="blocked the bot" if blocked else None,
            sender_name=_name(user),
            locale_hint=_str(user.get("language_code")),
        )
    ]
