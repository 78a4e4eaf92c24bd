"""The webhook's wire format without a server: signatures, the inbound JSON's checks."""

from __future__ import annotations

import json

import pytest

from bot.channel.inbound import ParseError
from bot.channel.messages import Choice, OutboundMessage
from channels.webhook.parse import outbound_body, read, sign, to_inbound, verified

SECRET = b"s" * 40
NOW = 1_800_000_000


def body(**fields: object) -> bytes:
    data: dict[str, object] = {"id": "m-1", "sender": {"id": "c-42"}, "text": "hallo"}
    data.update(fields)
    return json.dumps(data).encode()


def test_signature_round_trip_and_its_refusals() -> None:
    raw = body()
    good = sign(SECRET, NOW, raw)
    assert good.startswith("sha256=") and len(good) == 7 + 64
    assert verified(SECRET, raw, str(NOW), good, NOW + 10, 300)
    assert not verified(SECRET, raw + b" ", str(NOW), good, NOW, 300)  # body changed
    assert not verified(b"o" * 40, raw, str(NOW), good, NOW, 300)  # another secret
    assert not verified(SECRET, raw, str(NOW + 1), good, NOW, 300)  # timestamp changed
    assert not verified(SECRET, raw, str(NOW), good, NOW + 301, 300)  # too old: a replay
    assert not verified(SECRET, raw, str(NOW), good, NOW - 301, 300)  # from the future
    assert not verified(SECRET, raw, None, good, NOW, 300)
    assert not verified(SECRET, raw, str(NOW), None, NOW, 300)
    assert not verified(SECRET, raw, "-1", good, NOW, 300)
    assert not verified(SECRET, raw, "9" * 40, good, NOW, 300)


def test_a_message_in_and_the_row_back_as_the_core_reads_it() -> None:
    kept = read(
        body(
            sender={"id": "c-42", "name": "Anna", "email": "anna@example.org", "locale": "de"},
            thread="order-1001",
            extra={"ignored": True},
        )
    )
    msg = to_inbound(kept)
    assert (msg.channel, msg.sender_id, msg.platform_message_id) == ("webhook", "c-42", "m-1")
    assert (msg.thread_key, msg.text, msg.kind) == ("order-1001", "hallo", "message")
    assert (msg.sender_name, msg.locale_hint) == ("Anna", "de")
    assert msg.contact_updates == {"email": "anna@example.org"}
    button = to_inbound(read(body(text="", payload="menu:complaint")))
    assert (button.thread_key, button.payload, button.kind) == ("c-42", "menu:complaint", "button")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"hallo", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (body(id=None), "id is missing"),
        (body(id=42), "id must be a string"),
        (body(id="x" * 201), "longer than 200"),
        (body(sender="c-42"), "sender must be an object"),
        (body(sender={"name": "Anna"}), "id is missing"),
        (body(text=["a"]), "text must be a string"),
        (body(text=""), "text or payload"),
        (body(text="x" * 100_001), "longer than 100000"),
    ],
)
def test_bad_bodies_say_what_is_wrong(raw: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        read(raw)


def test_a_row_that_is_no_message_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        to_inbound({"id": "m-1"})


def test_the_reply_as_json() -> None:
    reply = OutboundMessage(
        channel="webhook",
        recipient_id="c-42",
        thread_key="order-1001",
        text="Wie kann ich helfen?",
        choices=(Choice("menu:complaint", "Beschwerde"),),
        locale="de",
        outbox_id=7,
    )
    assert json.loads(outbound_body(reply)) == {
        "id": 7,
        "recipient": "c-42",
        "thread": "order-1001",
        "text": "Wie kann ich helfen?",
        "choices": [{"payload": "menu:complaint", "label": "Beschwerde"}],
        "locale": "de",
        "reply_to": None,
    }
