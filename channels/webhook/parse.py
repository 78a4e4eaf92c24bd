"""The webhook's wire format, pure: signatures, the inbound JSON, the outbound JSON.

Signature (both directions): headers `X-Cicbot-Timestamp: <unix seconds>` and
`X-Cicbot-Signature: sha256=<hex>`, the hex HMAC-SHA256 of `<timestamp>.<raw body>` with
the shared secret. A timestamp more than `max_skew_seconds` away is refused (a captured
request cannot be replayed later; within the window the message id dedupes it).

Inbound body (one customer message):
    {"id": "<sender's message id, unique>", "sender": {"id": "...", "name": "...",
     "email": "...", "locale": "de"}, "thread": "<optional, default the sender id>",
     "text": "...", "payload": "<optional: the payload of a pressed choice>"}
Outbound body (one reply):
    {"id": <outbox id>, "recipient": "...", "thread": "...", "text": "...",
     "choices": [{"payload": "...", "label": "..."}], "locale": "de", "reply_to": "..."}
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from bot.channel.inbound import ParseError
from bot.channel.messages import InboundMessage, OutboundMessage

CHANNEL = "webhook"
TIMESTAMP_HEADER = "X-Cicbot-Timestamp"
SIGNATURE_HEADER = "X-Cicbot-Signature"
MAX_ID = 200
MAX_TEXT = 100_000


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        "Content-Type": "application/json",
    }


def verified(
    secret: bytes,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float,
    max_skew: int,
) -> bool:
    if not timestamp or not signature or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > max_skew:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body).encode(), signature.encode())


def _text(data: dict[str, Any], key: str, limit: int, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"{key} is missing")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    if len(value) > limit:
        raise ValueError(f"{key} is longer than {limit} characters")
    return value


def read(body: bytes) -> dict[str, Any]:
    """The inbound body checked and reduced to what is kept; ValueError says what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (or UTF-8), or nested too deeply
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    sender = data.get("sender")
    if not isinstance(sender, dict):
        raise ValueError("sender must be an object with an id")
    kept = {
        "id": _text(data, "id", MAX_ID, required=True),
        "sender": {
            "id": _text(sender, "id", MAX_ID, required=True),
            "name": _text(sender, "name", 200),
            "email": _text(sender, "email", 320),
            "locale": _text(sender, "locale", 20),
        },
        "thread": _text(data, "thread", MAX_ID),
        "text": _text(data, "text", MAX_TEXT) or "",
        "payload": _text(data, "payload", 200),
    }
    if not kept["text"] and not kept["payload"]:
        raise ValueError("text or payload is needed")
    return kept


def to_inbound(kept: dict[str, Any]) -> InboundMessage:
    """An inbox row (what `read` kept) as the core's message."""
    try:
        sender = kept["sender"]
        email = sender.get("email")
        return InboundMessage(
            channel=CHANNEL,
            sender_id=sender["id"],
            platform_message_id=kept["id"],
            thread_key=kept.get("thread") or sender["id"],
            text=kept.get("text") or "",
            payload=kept.get("payload"),
            sender_name=sender.get("name"),
            locale_hint=sender.get("locale"),
            kind="button" if kept.get("payload") else "message",
            contact_updates={"email": email} if email else {},
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ParseError(f"not a webhook message: {type(exc).__name__}") from None


def outbound_body(message: OutboundMessage) -> bytes:
    return json.dumps(
        {
            "id": message.outbox_id,
            "recipient": message.recipient_id,
            "thread": message.thread_key,
            "text": message.text,
            "choices": [{"payload": c.payload, "label": c.label} for c in message.choices],
            "locale": message.locale,
            "reply_to": message.reply_to,
        },
        ensure_ascii=False,
    ).encode()
